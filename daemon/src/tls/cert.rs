//! The daemon's own certificate, and certificate fingerprints.
//!
//! The server certificate is what clients pin: `incus remote add` stores it and
//! a trust token carries its SHA-256 fingerprint. It is generated once, at the
//! first start, and kept in the state directory as `server.crt` / `server.key`
//! (PEM, key mode 0600) so the fingerprint survives restarts.
//!
//! Like Incus: ECDSA, self-signed, not a CA, valid ten years, usable for server
//! authentication, but on P-256 where Incus uses P-384: the same strength for what a
//! certificate protects here (128 bits), and with ring about 25 times less CPU for
//! each key generation, key load and TLS handshake signature (P-384 has no optimized
//! code path there) — on an appliance under emulation, the difference between 0.25 s and
//! 10 ms at the first boot, and on every new connection. Certificates on P-384 (made by
//! Incus, or by an older cairnd) load and work as before.
//!
//! The Go client pins the certificate by putting it in its root pool and verifying
//! against the certificate's first DNS name, so
//! the certificate must carry a DNS SAN: the host name first (as Incus), then
//! `localhost`, plus the loopback addresses.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{Datelike, Utc};
use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::TlsError;

/// File name of the server certificate in the state directory.
pub const CERT_FILE: &str = "server.crt";
/// File name of the server private key in the state directory.
pub const KEY_FILE: &str = "server.key";

/// Organization written into certificates this daemon generates.
const ORGANIZATION: &str = "Cairn";
const VALID_YEARS: i32 = 10;

/// The daemon's certificate and key.
pub struct ServerCert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pem: String,
    fingerprint: String,
}

// The key must never reach a log line.
impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Loads `server.crt` / `server.key` from `dir`, or generates them for
    /// `hostname` when neither exists. One without the other is an error
    /// rather than a silent new identity: clients pin the old certificate.
    pub fn load_or_generate(dir: &Path, hostname: &str) -> Result<ServerCert, TlsError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                let cert = Self::generate(hostname)?;
                cert.save(dir, &cert_path, &key_path)?;
                Ok(cert)
            }
            (true, false) => Err(TlsError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(TlsError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// Generates a new certificate in memory (nothing is written).
    pub fn generate(hostname: &str) -> Result<ServerCert, TlsError> {
        let (pem, key_pem) = generate_cert(
            &format!("root@{hostname}"),
            &server_dns_names(hostname),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Self::from_pem(&pem, &key_pem, "generated server certificate")
    }

    /// Reads and checks a certificate and its key from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerCert, TlsError> {
        let pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem(&pem, &key_pem, &cert_path.display().to_string())
    }

    /// Builds from PEM text, checking that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<ServerCert, TlsError> {
        let der = parse_cert_pem(cert_pem, what)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|err| TlsError::Parse {
                what: format!("private key of {what}"),
                reason: err.to_string(),
            })?
            .ok_or_else(|| TlsError::Parse {
                what: format!("private key of {what}"),
                reason: "no PRIVATE KEY block".to_string(),
            })?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(vec![der.clone()], key.clone_key(), &provider)
            .map_err(|source| TlsError::KeyMismatch {
                what: what.to_string(),
                source,
            })?;
        let fingerprint = cert_fingerprint(&der);
        Ok(ServerCert {
            pem: pem_encode_cert(&der),
            der,
            key,
            fingerprint,
        })
    }

    /// Lowercase hex SHA-256 of the DER certificate, as Incus shows it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate as PEM, for `/1.0`'s `environment.certificate`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The certificate in DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// A copy of the private key, for building a TLS configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The private key as PEM: only ever sent to a member joining the cluster, over TLS
    /// pinned to the cluster certificate.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.key.secret_der())
    }

    /// Checks `cert_pem`/`key_pem` and makes them this daemon's `server.crt`/`server.key`
    /// (joining a cluster: the cluster's certificate replaces the member's own).
    pub fn install(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<ServerCert, TlsError> {
        let cert = Self::from_pem(cert_pem, key_pem, "cluster certificate")?;
        cert.save(dir, &dir.join(CERT_FILE), &dir.join(KEY_FILE))?;
        Ok(cert)
    }

    /// Writes the key (before the certificate so a crash in between
    /// leaves "key without certificate", which load refuses loudly) and the
    /// certificate, each through a temporary file renamed into place.
    fn save(&self, dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let key_pem = pem_encode("PRIVATE KEY", self.key.secret_der());
        write_atomic(key_path, key_pem.as_bytes(), 0o600)?;
        // Owner-only too, as everything in the state directory: only cairnd reads it, and
        // clients get it from the handshake.
        write_atomic(cert_path, self.pem.as_bytes(), 0o600)
    }
}

/// Lowercase hex SHA-256 of a DER certificate: the identity of a client in the
/// trust store and of the server in a trust token.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM text.
pub fn cert_fingerprint_from_pem(pem: &str) -> Result<String, TlsError> {
    Ok(cert_fingerprint(&parse_cert_pem(pem, "certificate PEM")?))
}

/// Parses the first `CERTIFICATE` block of a PEM text and checks it is a
/// well-formed X.509 certificate.
pub fn parse_cert_pem(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    let parse_err = |reason: String| TlsError::Parse {
        what: what.to_string(),
        reason,
    };
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| parse_err("no CERTIFICATE block".to_string()))?
        .map_err(|err| parse_err(err.to_string()))?;
    rustls::server::ParsedCertificate::try_from(&der)
        .map_err(|err| parse_err(format!("not a valid X.509 certificate: {err}")))?;
    Ok(der)
}

/// Generates a self-signed client certificate for `common_name`, like the one
/// `incus remote add` creates: returns (certificate PEM, key PEM).
pub fn generate_client_cert(common_name: &str) -> Result<(String, String), TlsError> {
    generate_cert(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
}

/// DNS names for the server certificate: the host name when it is a valid DNS
/// name (Go sends the first DNS SAN as SNI and checks against it), then
/// `localhost`.
fn server_dns_names(hostname: &str) -> Vec<String> {
    let mut names = Vec::new();
    let valid = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid && hostname != "localhost" {
        names.push(hostname.to_string());
    }
    names.push("localhost".to_string());
    names
}

fn generate_cert(
    common_name: &str,
    dns_names: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), TlsError> {
    let gen_err = |source| TlsError::Generate {
        what: format!("certificate for {common_name}"),
        source,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    let mut sans = Vec::new();
    for dns in dns_names {
        let ia5 = dns.as_str().try_into().map_err(gen_err)?;
        sans.push(SanType::DnsName(ia5));
    }
    if !dns_names.is_empty() {
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    // 128 random bits, top bit clear so the DER integer stays positive.
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let today = Utc::now().date_naive();
    // Day 28 at most: the same date ten years on must exist (29 February).
    let day = (today.day() as u8).min(28);
    let month = today.month() as u8;
    params.not_before = rcgen::date_time_ymd(today.year(), month, day);
    params.not_after = rcgen::date_time_ymd(today.year() + VALID_YEARS, month, day);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn pem_encode_cert(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting at any byte offset is safe.
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let write_err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    // A left-over temporary file from a crash is replaced, never appended to.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(write_err(err)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_certificate_is_kept_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerCert::load_or_generate(dir.path(), "node1").unwrap();
        assert_eq!(first.fingerprint().len(), 64);
        assert!(first
            .fingerprint()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let key_mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert!(first.pem().starts_with("-----BEGIN CERTIFICATE-----\n"));

        let again = ServerCert::load_or_generate(dir.path(), "other-name").unwrap();
        assert_eq!(again.fingerprint(), first.fingerprint());
        assert_eq!(again.pem(), first.pem());
        assert_eq!(
            cert_fingerprint_from_pem(first.pem()).unwrap(),
            first.fingerprint()
        );
        let on_disk = fs::read_to_string(dir.path().join(CERT_FILE)).unwrap();
        assert_eq!(
            cert_fingerprint_from_pem(&on_disk).unwrap(),
            first.fingerprint()
        );
    }

    #[test]
    fn two_generations_differ() {
        let a = ServerCert::generate("node1").unwrap();
        let b = ServerCert::generate("node1").unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn half_a_certificate_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let cert = ServerCert::load_or_generate(dir.path(), "node1").unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = ServerCert::load_or_generate(dir.path(), "node1").unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("server.key"), "{err}");
        // The pinned certificate is untouched.
        let on_disk = fs::read_to_string(dir.path().join(CERT_FILE)).unwrap();
        assert_eq!(
            cert_fingerprint_from_pem(&on_disk).unwrap(),
            cert.fingerprint()
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ServerCert::load_or_generate(dir.path(), "node1").unwrap();
        let (_, other_key) = generate_client_cert("intruder").unwrap();
        fs::write(dir.path().join(KEY_FILE), other_key).unwrap();
        let err = ServerCert::load_or_generate(dir.path(), "node1").unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_pem_is_refused_with_context() {
        let err = cert_fingerprint_from_pem("hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "parsing certificate PEM: no CERTIFICATE block"
        );
        let bogus = pem_encode("CERTIFICATE", b"\x30\x03\x01\x02\x03");
        let err = cert_fingerprint_from_pem(&bogus).unwrap_err();
        assert!(
            err.to_string().contains("not a valid X.509 certificate"),
            "{err}"
        );
    }

    #[test]
    fn incus_certificate_fingerprint_matches_what_incus_reports() {
        // From the Incus 6.0.4 trace (trust-add.txt): its `certificate` and
        // `certificate_fingerprint` fields.
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB8zCCAXigAwIBAgIRAO548F1g6W2PZWA7GLVgcrcwCgYIKoZIzj0EAwMwLTEZ\nMBcGA1UEChMQTGludXggQ29udGFpbmVyczEQMA4GA1UEAwwHcm9vdEB2bTAeFw0y\nNjExMjUwODM4MDFaFw0zNjExMjIwODM4MDFaMC0xGTAXBgNVBAoTEExpbnV4IENv\nbnRhaW5lcnMxEDAOBgNVBAMMB3Jvb3RAdm0wdjAQBgcqhkjOPQIBBgUrgQQAIgNi\nAARTfsHDsucZQvYIbhPFz3fw7tzMH6A9qWVH+bkXOjQRxd1VuN3GFVbL+LgYFLCE\nQ0f3UusT3/NVqg0bA11y3E+yKT8T5f+mseD9FVFQsntG9Ht1FDQMwCuqao+1Sg1N\nqiCjXDBaMA4GA1UdDwEB/wQEAwIFoDATBgNVHSUEDDAKBggrBgEFBQcDATAMBgNV\nHRMBAf8EAjAAMCUGA1UdEQQeMByCAnZthwR/AAABhxAAAAAAAAAAAAAAAAAAAAAB\nMAoGCCqGSM49BAMDA2kAMGYCMQCSPaODTVBCJUJGk8BZQxj9MrchhN7DNjotLeJi\nPrgzyTE8PzOmwMvNpNWDF8riev8CMQDijsSNFUvgSIH9mrG/VpNaYrY669t7Qh5H\n2WtVlTsLVrlwAkfyEPxwz4ujawHdyGY=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            cert_fingerprint_from_pem(pem).unwrap(),
            "8497dd2445e43efabf664fac87f0d592b1b923e6b0f0c8d539a8097d8b8c9204"
        );
    }

    #[test]
    fn dns_names_put_a_valid_hostname_first() {
        assert_eq!(server_dns_names("node1"), ["node1", "localhost"]);
        assert_eq!(
            server_dns_names("node1.lab.example"),
            ["node1.lab.example", "localhost"]
        );
        assert_eq!(server_dns_names("localhost"), ["localhost"]);
        assert_eq!(server_dns_names(""), ["localhost"]);
        assert_eq!(server_dns_names("bad_name"), ["localhost"]);
        assert_eq!(server_dns_names("ünïcode"), ["localhost"]);
    }

    #[test]
    fn client_certificates_parse_and_differ() {
        let (cert_a, key_a) = generate_client_cert("alice@laptop").unwrap();
        let (cert_b, _) = generate_client_cert("alice@laptop").unwrap();
        assert!(key_a.contains("PRIVATE KEY"));
        assert_ne!(
            cert_fingerprint_from_pem(&cert_a).unwrap(),
            cert_fingerprint_from_pem(&cert_b).unwrap()
        );
        ServerCert::from_pem(&cert_a, &key_a, "client certificate").unwrap();
    }

    #[test]
    fn debug_output_does_not_show_the_key() {
        let cert = ServerCert::generate("node1").unwrap();
        let shown = format!("{cert:?}");
        assert!(shown.contains(cert.fingerprint()));
        assert!(!shown.contains("PRIVATE"));
    }
}
