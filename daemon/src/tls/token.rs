//! Incus trust tokens ("certificate add tokens").
//!
//! `incus config trust add NAME` asks the server for a token operation; the
//! CLI prints the token, base64 (standard alphabet, padded) of the JSON
//! `{"client_name","fingerprint","addresses","secret","expires_at"}` in that
//! order. `incus remote add NAME TOKEN` decodes it, connects to one of the
//! addresses, checks the server certificate against `fingerprint`, then sends
//! `POST /1.0/certificates` with `trust_token` set to the *whole token string*
//! (not just the secret) over a TLS connection carrying its new client
//! certificate. The server decodes that token and looks for a pending token
//! operation with the same secret (Incus 6.0.4 `cmd/incusd/certificates.go`,
//! `shared/tls` `CertificateTokenDecode`; traces `trust-add.txt`,
//! `remote-add.txt`).
//!
//! A token without expiry carries Go's zero time, `0001-01-01T00:00:00Z`.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::TlsError;

/// How Go's `encoding/json` writes a zero `time.Time`: "no expiry".
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A decoded trust token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustToken {
    /// Name the client certificate gets in the trust store.
    pub client_name: String,
    /// SHA-256 fingerprint of the server certificate, lowercase hex.
    pub fingerprint: String,
    /// `host:port` addresses the server listens on.
    pub addresses: Vec<String>,
    /// The single-use secret (64 hex characters when made by [`new_secret`]).
    pub secret: String,
    /// When the token stops being accepted; `None` never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The JSON as Incus writes it; field order matters only for byte-identical
/// output, which keeps tokens recognisable next to real Incus ones.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default)]
    client_name: String,
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    addresses: Option<Vec<String>>,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    expires_at: Option<String>,
}

impl TrustToken {
    /// The token text the CLI prints and `remote add` accepts.
    pub fn encode(&self) -> String {
        let expires_at = match self.expires_at {
            Some(at) => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => GO_ZERO_TIME.to_string(),
        };
        let wire = Wire {
            client_name: self.client_name.clone(),
            fingerprint: self.fingerprint.clone(),
            addresses: Some(self.addresses.clone()),
            secret: self.secret.clone(),
            expires_at: Some(expires_at),
        };
        // Serializing plain strings into JSON cannot fail; an empty token
        // would be refused by any decoder rather than panic here.
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Decodes a token, applying the checks Incus applies: a client name, at
    /// least one address, a secret and a fingerprint must be present.
    pub fn decode(text: &str) -> Result<TrustToken, TlsError> {
        let text = text.trim();
        let json = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|err| TlsError::Token(format!("not base64: {err}")))?;
        let wire: Wire = serde_json::from_slice(&json)
            .map_err(|err| TlsError::Token(format!("not a certificate add token: {err}")))?;
        let addresses = wire.addresses.unwrap_or_default();
        if wire.client_name.is_empty() {
            return Err(TlsError::Token(
                "no client name in certificate add token".into(),
            ));
        }
        if addresses.is_empty() {
            return Err(TlsError::Token(
                "no server addresses in certificate add token".into(),
            ));
        }
        if wire.secret.is_empty() {
            return Err(TlsError::Token("no secret in certificate add token".into()));
        }
        if wire.fingerprint.is_empty() {
            return Err(TlsError::Token(
                "no certificate fingerprint in certificate add token".into(),
            ));
        }
        let expires_at = match wire.expires_at.as_deref() {
            None | Some("") | Some(GO_ZERO_TIME) => None,
            Some(text) => {
                let at = DateTime::parse_from_rfc3339(text)
                    .map_err(|err| TlsError::Token(format!("bad expires_at {text:?}: {err}")))?
                    .with_timezone(&Utc);
                // Go's zero time in another zone, or any year-1 date, also
                // means "never".
                if at.timestamp() <= GO_ZERO_TIMESTAMP {
                    None
                } else {
                    Some(at)
                }
            }
        };
        Ok(TrustToken {
            client_name: wire.client_name,
            fingerprint: wire.fingerprint,
            addresses,
            secret: wire.secret,
            expires_at,
        })
    }

    /// The metadata of the token operation that `POST /1.0/certificates`
    /// with `"token": true` returns: `incus config trust add` builds the
    /// printed token from exactly these keys (`expiresAt` only when the token
    /// expires, as an RFC 3339 string) plus the request's `name`. The caller
    /// adds `"request"`, the original request body, as Incus does.
    pub fn operation_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut meta = serde_json::Map::new();
        meta.insert("addresses".into(), self.addresses.clone().into());
        meta.insert("fingerprint".into(), self.fingerprint.clone().into());
        meta.insert("secret".into(), self.secret.clone().into());
        if let Some(at) = self.expires_at {
            meta.insert(
                "expiresAt".into(),
                at.to_rfc3339_opts(SecondsFormat::AutoSi, true).into(),
            );
        }
        meta
    }

    /// Whether the token is past its expiry at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Seconds since the epoch of 0001-01-02T00:00:00Z: anything before it is a
/// zero time written in some zone.
const GO_ZERO_TIMESTAMP: i64 = -62_135_510_400;

/// A new token secret: 32 random bytes from the OS, as 64 hex characters
/// (what Incus generates).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two secrets in time independent of where they differ, so a
/// client cannot guess a pending secret byte by byte.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Printed by `incus config trust add trace-client` (Incus 6.0.4,
    /// reference trace trust-add.txt) and sent back as `trust_token` by
    /// `incus remote add` (remote-add.txt).
    const INCUS_TOKEN: &str = "eyJjbGllbnRfbmFtZSI6InRyYWNlLWNsaWVudCIsImZpbmdlcnByaW50IjoiODQ5N2RkMjQ0NWU0M2VmYWJmNjY0ZmFjODdmMGQ1OTJiMWI5MjNlNmIwZjBjOGQ1MzlhODA5N2Q4YjhjOTIwNCIsImFkZHJlc3NlcyI6WyIxMjcuMC4wLjE6MTg0NzAiXSwic2VjcmV0IjoiZTA1NDI5ZWIwMDZiODIyZWY4MTI0ZTNmMTNhZjIzMzdkOGMyZjI0NDNkMzUxZTllZjkwOGU2YTdkNmJjOWMxNyIsImV4cGlyZXNfYXQiOiIwMDAxLTAxLTAxVDAwOjAwOjAwWiJ9";

    fn incus_token() -> TrustToken {
        TrustToken {
            client_name: "trace-client".into(),
            fingerprint: "8497dd2445e43efabf664fac87f0d592b1b923e6b0f0c8d539a8097d8b8c9204".into(),
            addresses: vec!["127.0.0.1:18470".into()],
            secret: "e05429eb006b822ef8124e3f13af2337d8c2f2443d351e9ef908e6a7d6bc9c17".into(),
            expires_at: None,
        }
    }

    #[test]
    fn decodes_a_real_incus_token() {
        assert_eq!(TrustToken::decode(INCUS_TOKEN).unwrap(), incus_token());
    }

    #[test]
    fn encodes_byte_for_byte_like_incus() {
        assert_eq!(incus_token().encode(), INCUS_TOKEN);
    }

    #[test]
    fn round_trips_with_an_expiry() {
        let token = TrustToken {
            client_name: "laptop".into(),
            fingerprint: "ab".repeat(32),
            addresses: vec!["10.0.0.1:8443".into(), "[fd00::1]:8443".into()],
            secret: new_secret(),
            expires_at: Some(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()),
        };
        let text = token.encode();
        let json = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .unwrap();
        let json = String::from_utf8(json).unwrap();
        assert!(
            json.contains(r#""expires_at":"2026-11-25T12:00:00Z""#),
            "{json}"
        );
        assert_eq!(TrustToken::decode(&text).unwrap(), token);
        assert!(!token.is_expired(Utc.with_ymd_and_hms(2026, 11, 25, 11, 59, 59).unwrap()));
        assert!(token.is_expired(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()));
        assert!(!incus_token().is_expired(Utc::now()));
    }

    #[test]
    fn accepts_go_fractional_seconds_and_offsets() {
        let json = r#"{"client_name":"c","fingerprint":"f","addresses":["a:1"],"secret":"s","expires_at":"2026-11-25T10:19:09.95145525+01:00","extra":1}"#;
        let text = base64::engine::general_purpose::STANDARD.encode(json);
        let token = TrustToken::decode(&format!("  {text}\n")).unwrap();
        let at = token.expires_at.unwrap();
        assert_eq!(
            at.timestamp(),
            Utc.with_ymd_and_hms(2026, 11, 25, 9, 19, 9)
                .unwrap()
                .timestamp()
        );
    }

    #[test]
    fn incomplete_tokens_are_refused_like_incus_does() {
        let cases = [
            (
                r#"{"fingerprint":"f","addresses":["a:1"],"secret":"s"}"#,
                "no client name",
            ),
            (
                r#"{"client_name":"c","fingerprint":"f","addresses":[],"secret":"s"}"#,
                "no server addresses",
            ),
            (
                r#"{"client_name":"c","fingerprint":"f","addresses":["a:1"]}"#,
                "no secret",
            ),
            (
                r#"{"client_name":"c","addresses":["a:1"],"secret":"s"}"#,
                "no certificate fingerprint",
            ),
            (r#"[1,2]"#, "not a certificate add token"),
        ];
        for (json, expected) in cases {
            let text = base64::engine::general_purpose::STANDARD.encode(json);
            let err = TrustToken::decode(&text).unwrap_err();
            assert!(err.to_string().contains(expected), "{json}: {err}");
            assert!(
                err.to_string().starts_with("decoding trust token: "),
                "{err}"
            );
        }
        let err = TrustToken::decode("not base64 at all!").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn operation_metadata_has_the_keys_the_cli_reads() {
        let meta = incus_token().operation_metadata();
        // As in the Incus trace (trust-add.txt), minus "request".
        assert_eq!(
            serde_json::Value::Object(meta),
            serde_json::json!({
                "addresses": ["127.0.0.1:18470"],
                "fingerprint": "8497dd2445e43efabf664fac87f0d592b1b923e6b0f0c8d539a8097d8b8c9204",
                "secret": "e05429eb006b822ef8124e3f13af2337d8c2f2443d351e9ef908e6a7d6bc9c17",
            })
        );
        let expiring = TrustToken {
            expires_at: Some(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()),
            ..incus_token()
        };
        assert_eq!(
            expiring.operation_metadata()["expiresAt"],
            "2026-11-25T12:00:00Z"
        );
    }

    #[test]
    fn secrets_are_64_hex_characters_and_unique() {
        let a = new_secret();
        let b = new_secret();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(secrets_equal(&a, &a.clone()));
        assert!(!secrets_equal(&a, &b));
        assert!(!secrets_equal(&a, &a[..63]));
    }
}
