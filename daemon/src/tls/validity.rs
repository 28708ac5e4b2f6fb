//! A client certificate's validity period (X.509 `notBefore`/`notAfter`) and the size of
//! its RSA key, if it has one.
//!
//! The TLS layer accepts any well-formed client certificate (see [`super::verifier`]), so
//! that a client whose certificate is out of date still connects and is told why it is
//! refused; the daemon checks the period per request, as Incus's `CheckTrustState` does,
//! and both when a certificate is added to the trust store (Incus's `certificateValidate`).

use chrono::{DateTime, Utc};
use yasna::models::ObjectIdentifier;
use yasna::tags::{TAG_GENERALIZEDTIME, TAG_UTCTIME};
use yasna::{ASN1Error, ASN1ErrorKind, BERReader, Tag};

/// `rsaEncryption` (RFC 8017), the SubjectPublicKeyInfo algorithm of RSA keys.
const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];

/// What is read from a certificate.
struct Facts {
    validity: Validity,
    /// Bits of the RSA modulus; `None` for other key types.
    rsa_bits: Option<usize>,
}

/// When a certificate may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// Why a certificate is not usable now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidityError {
    #[error("Certificate is expired (it was valid until {})", .0.to_rfc3339())]
    Expired(DateTime<Utc>),
    #[error("Certificate is not valid yet (it is valid from {})", .0.to_rfc3339())]
    NotYetValid(DateTime<Utc>),
    #[error("Certificate validity period is unreadable: {0}")]
    Unreadable(String),
}

/// How far ahead of this server's clock a certificate's start may be.
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

impl Validity {
    /// Reads the validity period from a DER certificate.
    pub fn of(der: &[u8]) -> Result<Validity, ValidityError> {
        Ok(read_facts(der)?.validity)
    }

    /// Whether the certificate may be used at `now` (both ends inclusive, as Go's checks).
    /// A start up to [`CLOCK_SKEW`] ahead is accepted: clients such as the incus CLI make
    /// their certificate valid from the second they make it, and a server's clock may run
    /// a little behind theirs (a freshly booted node, a VM under emulation).
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), ValidityError> {
        if now + CLOCK_SKEW < self.not_before {
            return Err(ValidityError::NotYetValid(self.not_before));
        }
        if now > self.not_after {
            return Err(ValidityError::Expired(self.not_after));
        }
        Ok(())
    }
}

/// Checks a DER certificate's validity period against the current time.
pub fn check_now(der: &[u8]) -> Result<(), ValidityError> {
    Validity::of(der)?.check(Utc::now())
}

/// The size in bits of a DER certificate's RSA key; `None` when it is not an RSA key.
pub fn rsa_key_bits(der: &[u8]) -> Result<Option<usize>, ValidityError> {
    Ok(read_facts(der)?.rsa_bits)
}

fn read_facts(der: &[u8]) -> Result<Facts, ValidityError> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|cert| {
            let facts = cert.next().read_sequence(|tbs| {
                // version [0] EXPLICIT, optional (absent in v1 certificates).
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature AlgorithmIdentifier
                tbs.next().read_der()?; // issuer
                let validity = tbs.next().read_sequence(|v| {
                    let not_before = read_time(v.next())?;
                    let not_after = read_time(v.next())?;
                    Ok(Validity {
                        not_before,
                        not_after,
                    })
                })?;
                tbs.next().read_der()?; // subject
                let rsa_bits = tbs.next().read_sequence(read_rsa_bits)?;
                skip_rest(tbs)?;
                Ok(Facts { validity, rsa_bits })
            })?;
            skip_rest(cert)?;
            Ok(facts)
        })
    })
    .map_err(|e| ValidityError::Unreadable(e.to_string()))
}

/// `SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey
/// BIT STRING }`; for RSA the bit string holds `RSAPublicKey ::= SEQUENCE { modulus
/// INTEGER, publicExponent INTEGER }`.
fn read_rsa_bits(spki: &mut yasna::BERReaderSeq<'_, '_>) -> Result<Option<usize>, ASN1Error> {
    let oid = spki.next().read_sequence(|alg| {
        let oid = alg.next().read_oid()?;
        skip_rest(alg)?;
        Ok(oid)
    })?;
    let (key, _) = spki.next().read_bitvec_bytes()?;
    if oid != ObjectIdentifier::from_slice(RSA_ENCRYPTION) {
        return Ok(None);
    }
    let modulus = yasna::parse_der(&key, |r| {
        r.read_sequence(|k| {
            let (modulus, _) = k.next().read_bigint_bytes()?;
            skip_rest(k)?;
            Ok(modulus)
        })
    })?;
    let significant: Vec<u8> = modulus.into_iter().skip_while(|b| *b == 0).collect();
    Ok(Some(match significant.first() {
        None => 0,
        Some(top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }))
}

/// `Time ::= CHOICE { utcTime UTCTime, generalTime GeneralizedTime }`.
fn read_time(r: BERReader<'_, '_>) -> Result<DateTime<Utc>, ASN1Error> {
    let tag = r.lookahead_tag()?;
    let unix = if tag == TAG_UTCTIME {
        r.read_utctime()?.datetime().unix_timestamp()
    } else if tag == TAG_GENERALIZEDTIME {
        r.read_generalized_time()?.datetime().unix_timestamp()
    } else {
        return Err(ASN1Error::new(ASN1ErrorKind::Invalid));
    };
    DateTime::from_timestamp(unix, 0).ok_or_else(|| ASN1Error::new(ASN1ErrorKind::Invalid))
}

/// Skips the elements of a SEQUENCE that are not needed (yasna refuses unread contents).
fn skip_rest(seq: &mut yasna::BERReaderSeq<'_, '_>) -> Result<(), ASN1Error> {
    while seq.read_optional(|r| r.read_der())?.is_some() {}
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_period_is_read_from_utc_and_generalized_times() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 asks.
        let der = cert_valid((2020, 1, 1), (2051, 6, 30));
        let v = Validity::of(&der).unwrap();
        assert_eq!(
            v.not_before,
            Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            v.not_after,
            Utc.with_ymd_and_hms(2051, 6, 30, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_start_a_little_ahead_of_the_clock_is_accepted() {
        let now = Utc::now();
        let v = Validity {
            not_before: now + chrono::TimeDelta::seconds(30),
            not_after: now + chrono::TimeDelta::days(1),
        };
        v.check(now).unwrap();
        let v = Validity {
            not_before: now + chrono::TimeDelta::minutes(10),
            ..v
        };
        assert!(v.check(now).is_err());
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_say_so() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        let old = Validity::of(&cert_valid((2020, 1, 1), (2021, 1, 1))).unwrap();
        let err = old.check(now).unwrap_err();
        assert!(matches!(err, ValidityError::Expired(_)), "{err}");
        assert!(
            err.to_string().starts_with("Certificate is expired"),
            "{err}"
        );
        let future = Validity::of(&cert_valid((2030, 1, 1), (2031, 1, 1))).unwrap();
        let err = future.check(now).unwrap_err();
        assert!(matches!(err, ValidityError::NotYetValid(_)), "{err}");
        assert!(err.to_string().contains("not valid yet"), "{err}");
        let current = Validity::of(&cert_valid((2025, 1, 1), (2027, 1, 1))).unwrap();
        assert_eq!(current.check(now), Ok(()));
    }

    #[test]
    fn a_generated_client_certificate_is_valid_now() {
        let (pem, _) = super::super::generate_client_cert("me").unwrap();
        let der = super::super::parse_cert_pem(&pem, "test").unwrap();
        check_now(&der).unwrap();
    }

    // `openssl req -x509 -newkey rsa:1024 -days 36500 -subj /CN=weak`
    pub(crate) const RSA_1024: &str = "-----BEGIN CERTIFICATE-----
MIIB/DCCAWWgAwIBAgIUAau3yogUc6bm8xs3yotB8j/asgMwDQYJKoZIhvcNAQEL
BQAwDzENMAsGA1UEAwwEd2VhazAgFw0yNjEyMDMwODIzNDhaGA8yMTI2MTEwOTA4
MjM0OFowDzENMAsGA1UEAwwEd2VhazCBnzANBgkqhkiG9w0BAQEFAAOBjQAwgYkC
gYEAwW8pm1y+V50dkcoYNrodM28zAmv7HCSiRrbHfvog7LADa9JPoz6zowU6dQVi
0YWVq0qZxzEFo92gi1aNthwhQdUcMl+O/UxIl/ypSmuEH5MCpLi35NyJsTWVhoLt
K+9Q1l2g4kK6+TIz2/5/QmqNyBeFOQw0IAK9xqJmOuckjH0CAwEAAaNTMFEwHQYD
VR0OBBYEFJ1rhryPKywOxQ87NW9Z9AEjQcEIMB8GA1UdIwQYMBaAFJ1rhryPKywO
xQ87NW9Z9AEjQcEIMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZIhvcNAQELBQADgYEA
r+ThY9CtrwqqX0Yb/D3+vySJbv4Wl1ZzPYbr01ktQm1MfdNiOYCfnod/v4LISeiJ
i83fAnoDnw5+c1zE7t3zHadBsPgzkr4b6flDjbh9NxLhZTmA93F4Cd8Z8TCIE+UM
IbD7oSPg178ZutOWBGtt6Kp13jL9RkP8+DZ9igZVDU4=
-----END CERTIFICATE-----";

    // `openssl req -x509 -newkey rsa:2048 -days 36500 -subj /CN=strong`
    const RSA_2048: &str = "-----BEGIN CERTIFICATE-----
MIIDBTCCAe2gAwIBAgIULXTpBsBxQt9FlQBYVQ31m1ZTCbswDQYJKoZIhvcNAQEL
BQAwETEPMA0GA1UEAwwGc3Ryb25nMCAXDTI2MTIwMzA4MjQwNFoYDzIxMjYxMTA5
MDgyNDA0WjARMQ8wDQYDVQQDDAZzdHJvbmcwggEiMA0GCSqGSIb3DQEBAQUAA4IB
DwAwggEKAoIBAQCm/Jhd4Yfc9aLAVXxXrScbWIjvo/KMdLMqHf+n1Q+EzKz6v2EJ
UgRqs77SnhXsKfKY9a5mf6waeWnrx+Y6GFinn0/uFj/y4vy45jGBslbvzxU0iayR
mz4bSR/fnvYJmLPPG1nMbBygzXP/nnwPh5pqi7Gx6X7d2Ds5qKldD9qAJX0LACsu
TQBTQemku90FvDRk7ovLCaxIVufBUuKi/GxoKem9HX3uZrz069b3PjKTyu1ttLBN
5xBKasynpXxJZo3TZfvcHQ2nXBcz108fkw10m9+hhHqDcuUAK49VYB2cgRb316hC
iKUriGQLLcF0SV2kaN2YzuLA5LLb4UXZ5uT5AgMBAAGjUzBRMB0GA1UdDgQWBBR0
PH9z1zQ6CudhAneaZKwbI+r8dTAfBgNVHSMEGDAWgBR0PH9z1zQ6CudhAneaZKwb
I+r8dTAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQBb+baZn4P+
8nB/xh+nVlDrlmb2lqYOPn2IESB/PzKHenSbvG/mRyseqd6L6SoQtVpsC4kzxxDS
M6h2a1ZhMamaiMP65I2Nc7XjVeJXlCTMDiTJbBlTt7ad55GZzh/9NS4/harIIa0m
uBfyhigdrC07440RXX4lSkQfxyZnrOapib0tp04I4C5K2btcJuJH2ke6B/buN0o3
WfZSDBF/vKF2rJLHUzW4apFwd/HUADIW+iYGiEvD1wgqrMYy0xHsAxBsciU299DD
k6Smwug2bzRfAunx/us6P5GN90yMwNNf3zt9lgxkYu+KvSFT6ldwR9mb8g5Ailk1
p3K1O9xUK/0h
-----END CERTIFICATE-----";

    #[test]
    fn rsa_key_sizes_are_read_and_other_keys_are_not_rsa() {
        let weak = super::super::parse_cert_pem(RSA_1024, "test").unwrap();
        assert_eq!(rsa_key_bits(&weak).unwrap(), Some(1024));
        // Its period (2026..2126) is read past the RSA key too.
        check_now(&weak).unwrap();
        let strong = super::super::parse_cert_pem(RSA_2048, "test").unwrap();
        assert_eq!(rsa_key_bits(&strong).unwrap(), Some(2048));
        assert_eq!(
            rsa_key_bits(&cert_valid((2020, 1, 1), (2040, 1, 1))).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        let der = cert_valid((2020, 1, 1), (2021, 1, 1));
        for bytes in [&b""[..], b"\x30\x03\x01\x02\x03", &der[..der.len() / 2]] {
            assert!(matches!(
                Validity::of(bytes),
                Err(ValidityError::Unreadable(_))
            ));
        }
    }
}
