//! Client-certificate verification the Incus way.
//!
//! Incus clients authenticate with self-signed certificates that no CA ever
//! signed; the server trusts a client when the SHA-256 fingerprint of its
//! certificate is in the trust store. So the TLS layer only has to (1) ask
//! for a certificate without requiring one (untrusted clients may still call
//! `GET /1.0` and `POST /1.0/certificates` with a trust token), (2) accept any
//! well-formed X.509 certificate, and (3) check that the client owns the key,
//! i.e. verify the handshake signature. Trust itself is decided per request by
//! the daemon from [`super::peer_fingerprint`].

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// Accepts any syntactically valid client certificate, optionally.
#[derive(Debug)]
pub struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    /// Uses the signature algorithms of the ring provider, the provider the
    /// server configuration is built with.
    pub fn new() -> Self {
        AnyClientCert {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl Default for AnyClientCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No CA hints: with an empty list the client sends whatever certificate
    /// it has, which is what self-signed client certificates need.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// No chain, expiry or usage check (Incus requests client certificates
    /// without verifying them either); only that it parses as X.509, so a
    /// fingerprint names a real certificate. The validity period is checked per
    /// request by the daemon (`api/auth.rs`, [`super::validity`]), so that an
    /// out-of-date client is told why it is refused instead of failing the
    /// handshake.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        ParsedCertificate::try_from(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_auth_is_offered_but_optional_without_hints() {
        let verifier = AnyClientCert::new();
        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert!(verifier.root_hint_subjects().is_empty());
        let schemes = verifier.supported_verify_schemes();
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP384_SHA384));
        assert!(schemes.contains(&SignatureScheme::RSA_PSS_SHA256));
        assert!(schemes.contains(&SignatureScheme::ED25519));
    }

    #[test]
    fn any_self_signed_certificate_is_accepted() {
        let (pem, _) = super::super::generate_client_cert("someone").unwrap();
        let der = super::super::cert::parse_cert_pem(&pem, "test").unwrap();
        AnyClientCert::new()
            .verify_client_cert(&der, &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let verifier = AnyClientCert::new();
        for bytes in [&b""[..], b"\x30\x03\x01\x02\x03", b"not der at all"] {
            let der = CertificateDer::from(bytes.to_vec());
            assert!(verifier
                .verify_client_cert(&der, &[], UnixTime::now())
                .is_err());
        }
    }
}
