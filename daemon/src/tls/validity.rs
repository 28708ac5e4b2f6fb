//! A client certificate's validity period (X.509 `notBefore`/`notAfter`).
//!
//! The TLS layer accepts any well-formed client certificate (see [`super::verifier`]), so
//! that a client whose certificate is out of date still connects and is told why it is
//! refused; the daemon checks the period per request, as Incus's `CheckTrustState` does,
//! and when a certificate is added to the trust store (Incus's `certificateValidate`).

use chrono::{DateTime, Utc};
use yasna::tags::{TAG_GENERALIZEDTIME, TAG_UTCTIME};
use yasna::{ASN1Error, ASN1ErrorKind, BERReader, Tag};

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

impl Validity {
    /// Reads the validity period from a DER certificate.
    pub fn of(der: &[u8]) -> Result<Validity, ValidityError> {
        yasna::parse_der(der, |r| {
            r.read_sequence(|cert| {
                let validity = cert.next().read_sequence(|tbs| {
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
                    skip_rest(tbs)?;
                    Ok(validity)
                })?;
                skip_rest(cert)?;
                Ok(validity)
            })
        })
        .map_err(|e| ValidityError::Unreadable(e.to_string()))
    }

    /// Whether the certificate may be used at `now` (both ends inclusive, as Go's checks).
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), ValidityError> {
        if now < self.not_before {
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
mod tests {
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
