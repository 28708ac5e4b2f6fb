//! TLS for the HTTPS API: the server certificate, client-certificate
//! verification and Incus trust tokens.
//!
//! Clients are identified by the SHA-256 fingerprint of the certificate they
//! present ([`peer_fingerprint`]); whether that fingerprint is trusted is the
//! daemon's decision, not the TLS layer's, so an untrusted client still gets a
//! connection and sees what Incus shows untrusted clients.

pub mod cert;
pub mod token;
pub mod validity;
pub mod verifier;

use std::path::PathBuf;
use std::sync::Arc;

pub use cert::{
    cert_fingerprint, cert_fingerprint_from_pem, generate_client_cert, parse_cert_pem, ServerCert,
};
pub use token::{new_secret, secrets_equal, TrustToken};
pub use validity::{Validity, ValidityError};
pub use verifier::AnyClientCert;

/// Why a TLS setup step failed, naming the step and the file or value.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("loading the server certificate: {} exists but {} is missing", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("loading {what}: the private key does not belong to the certificate: {source}")]
    KeyMismatch {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS server configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("decoding trust token: {0}")]
    Token(String),
}

/// The rustls configuration of the HTTPS listener: TLS 1.3 only, as Incus offers by
/// default, the ring provider, client certificates requested but optional, HTTP/1.1.
pub fn server_config(cert: &ServerCert) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config_with(cert, false)
}

/// [`server_config`], also offering TLS 1.2 when `allow_tls12` (`core.https_tls12`) is set,
/// for old clients that cannot speak 1.3.
pub fn server_config_with(
    cert: &ServerCert,
    allow_tls12: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(AnyClientCert::new()))
        .with_single_cert(vec![cert.der().clone()], cert.key())
        .map_err(TlsError::Config)?;
    // The API is served by an HTTP/1.1 server (websocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Fingerprint of the certificate the client presented, if any: the identity
/// the daemon checks against its trust store.
pub fn peer_fingerprint(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| cert_fingerprint(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
    use std::io::{Read, Write};

    fn ring() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A client that pins the server certificate as its only root, as the Go
    /// client does, optionally presenting a client certificate.
    fn client_config(
        server: &ServerCert,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client: Option<(&str, &str)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(server.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(ring())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some((cert_pem, key_pem)) => {
                let der = parse_cert_pem(cert_pem, "client").unwrap();
                let key: PrivateKeyDer<'static> =
                    rustls_pemfile::private_key(&mut key_pem.as_bytes())
                        .unwrap()
                        .unwrap();
                builder.with_client_auth_cert(vec![der], key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Moves TLS records both ways in memory until both sides are done.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking()
                && !server.is_handshaking()
                && !client.wants_write()
                && !server.wants_write()
            {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn connect(
        server_cert: &ServerCert,
        name: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client: Option<(&str, &str)>,
        allow_tls12: bool,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let server_config = server_config_with(server_cert, allow_tls12).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = ClientConnection::new(client_config(server_cert, versions, client), name)?;
        let mut server = ServerConnection::new(server_config)?;
        handshake(&mut client, &mut server)?;
        Ok((client, server))
    }

    #[test]
    fn a_pinning_client_connects_by_every_san_without_a_client_cert() {
        let cert = ServerCert::generate("node1").unwrap();
        for name in ["localhost", "node1", "127.0.0.1", "::1"] {
            let (client, server) = connect(&cert, name, &[&rustls::version::TLS13], None, false)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(peer_fingerprint(&server), None);
            assert_eq!(
                client.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_3)
            );
            assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
            let server_seen = client.peer_certificates().unwrap()[0].clone();
            assert_eq!(cert_fingerprint(&server_seen), cert.fingerprint());
        }
    }

    #[test]
    fn a_name_not_in_the_certificate_is_refused_by_the_client() {
        let cert = ServerCert::generate("node1").unwrap();
        let err = connect(
            &cert,
            "elsewhere.example",
            &[&rustls::version::TLS13],
            None,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn tls12_is_refused_unless_allowed() {
        let cert = ServerCert::generate("node1").unwrap();
        let tls12 = &[&rustls::version::TLS12];
        assert!(connect(&cert, "localhost", tls12, None, false).is_err());
        let (client, _) = connect(&cert, "localhost", tls12, None, true).unwrap();
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    #[test]
    fn the_client_certificate_fingerprint_is_seen_over_tls13_and_tls12() {
        let cert = ServerCert::generate("node1").unwrap();
        let (client_pem, client_key) = generate_client_cert("alice@laptop").unwrap();
        let expected = cert_fingerprint_from_pem(&client_pem).unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut client, mut server) = connect(
                &cert,
                "localhost",
                &[version],
                Some((&client_pem, &client_key)),
                true,
            )
            .unwrap();
            assert_eq!(
                peer_fingerprint(&server).as_deref(),
                Some(expected.as_str())
            );

            // And application data flows.
            client
                .writer()
                .write_all(b"GET /1.0 HTTP/1.1\r\n\r\n")
                .unwrap();
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut got = [0u8; 9];
            server.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"GET /1.0 ");
        }
    }

    #[test]
    fn a_resumed_session_still_names_the_client() {
        let cert = ServerCert::generate("node1").unwrap();
        let (client_pem, client_key) = generate_client_cert("bob").unwrap();
        let expected = cert_fingerprint_from_pem(&client_pem).unwrap();
        let server_config = server_config(&cert).unwrap();
        let client_config = client_config(
            &cert,
            &[&rustls::version::TLS13],
            Some((&client_pem, &client_key)),
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            handshake(&mut client, &mut server).unwrap();
            assert_eq!(
                peer_fingerprint(&server).as_deref(),
                Some(expected.as_str())
            );
            kinds.push(server.handshake_kind());
        }
        assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
    }
}
