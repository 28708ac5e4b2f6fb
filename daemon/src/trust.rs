//! The trust store: client certificates allowed over HTTPS, and the single-use trust tokens
//! (`incus config trust add`) that let a new client add its own certificate.
//!
//! A pending token is both a database record (so it survives a restart) and a running
//! operation of class `token` (which is how Incus clients list and revoke them).

use chrono::{Duration, Utc};
use serde_json::json;

use crate::daemon::Daemon;
use crate::db::records::{CertificateRecord, TokenRecord};
use crate::db::{Command, DbError};
use crate::operations::{NewOp, OpClass, Operation, Resources};
use crate::tls::{self, TrustToken};

/// How long a trust token stays valid. Incus defaults to no expiry; a day bounds how long a
/// leaked token is worth anything.
pub const TOKEN_LIFETIME_HOURS: i64 = 24;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Invalid(String),
    #[error("No matching certificate add operation found")]
    BadToken,
    #[error("Certificate already in trust store")]
    Exists,
    #[error("{0}")]
    Db(#[from] DbError),
}

/// Accepts a PEM certificate, or base64 of its DER or PEM (what Incus clients send).
pub fn parse_certificate(text: &str) -> Result<Vec<u8>, TrustError> {
    use base64::Engine as _;
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return tls::parse_cert_pem(text, "certificate")
            .map(|d| d.to_vec())
            .map_err(|e| TrustError::Invalid(e.to_string()));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.replace(['\n', '\r'], ""))
        .map_err(|_| TrustError::Invalid("Certificate is neither PEM nor base64".into()))?;
    if raw.starts_with(b"-----BEGIN") {
        return parse_certificate(&String::from_utf8_lossy(&raw));
    }
    let der = rustls::pki_types::CertificateDer::from(raw);
    rustls::server::ParsedCertificate::try_from(&der)
        .map_err(|e| TrustError::Invalid(format!("Invalid certificate: {e}")))?;
    Ok(der.to_vec())
}

pub async fn add_certificate(
    d: &Daemon,
    der: &[u8],
    name: &str,
    restricted: bool,
    projects: Vec<String>,
    description: &str,
) -> Result<CertificateRecord, TrustError> {
    let fingerprint = tls::cert_fingerprint(der);
    if d.db.certificate(&fingerprint)?.is_some() {
        return Err(TrustError::Exists);
    }
    let rec = CertificateRecord {
        fingerprint: fingerprint.clone(),
        name: name.to_string(),
        cert_type: "client".into(),
        certificate: tls::cert::pem_encode_cert(der),
        restricted,
        projects,
        description: description.to_string(),
    };
    d.write(vec![Command::AddCertificate(rec.clone())]).await?;
    d.events.lifecycle(
        "certificate-created",
        &format!("/1.0/certificates/{fingerprint}"),
        json!({"name": name}),
    );
    Ok(rec)
}

fn token_op(d: &Daemon, t: &TokenRecord, request: serde_json::Value) -> std::sync::Arc<Operation> {
    let addresses: Vec<String> = d
        .https
        .address()
        .into_iter()
        .map(|a| advertised(&a))
        .collect();
    let mut metadata = json!({
        "request": request,
        "secret": t.secret,
        "fingerprint": d.cert().fingerprint(),
        "addresses": addresses,
    });
    if let Some(exp) = t.expires_at {
        metadata["expiresAt"] = json!(exp.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    d.ops.create_with_id(
        t.operation_id.clone(),
        NewOp {
            class: OpClass::Token,
            description: "Executing operation".into(),
            resources: Resources::new(),
            metadata,
            may_cancel: true,
        },
    )
}

/// A wildcard listen address is no use to a client: name loopback instead.
fn advertised(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("[::]" | "0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        _ => addr.to_string(),
    }
}

/// Issues a token for `client_name`; returns its operation.
pub async fn create_token(
    d: &Daemon,
    client_name: &str,
) -> Result<std::sync::Arc<Operation>, TrustError> {
    crate::validate::object_name(client_name).map_err(|e| TrustError::Invalid(e.to_string()))?;
    let now = Utc::now();
    let t = TokenRecord {
        secret: tls::new_secret(),
        client_name: client_name.to_string(),
        operation_id: uuid::Uuid::new_v4().to_string(),
        created_at: now,
        expires_at: Some(now + Duration::hours(TOKEN_LIFETIME_HOURS)),
    };
    d.write(vec![Command::CreateToken(t.clone())]).await?;
    Ok(token_op(d, &t, request_json(client_name)))
}

fn request_json(name: &str) -> serde_json::Value {
    json!({
        "name": name, "type": "client", "restricted": false, "projects": [],
        "certificate": "", "description": "", "token": true, "trust_token": "",
    })
}

/// Recreates the operations of pending tokens after a restart, dropping expired ones.
pub async fn restore_tokens(d: &Daemon) -> Result<(), TrustError> {
    let now = Utc::now();
    for t in d.db.tokens()? {
        if t.expires_at.is_some_and(|e| e <= now) {
            d.write(vec![Command::DeleteToken { secret: t.secret }])
                .await?;
            continue;
        }
        token_op(d, &t, request_json(&t.client_name));
    }
    Ok(())
}

/// Redeems a token (the whole base64 token or its bare secret): single use, checked for
/// expiry. Returns the client name it was issued for.
pub async fn redeem(d: &Daemon, presented: &str) -> Result<String, TrustError> {
    let secret = match TrustToken::decode(presented) {
        Ok(t) => t.secret,
        Err(_) => presented.trim().to_string(),
    };
    let found =
        d.db.tokens()?
            .into_iter()
            .find(|t| tls::secrets_equal(&t.secret, &secret))
            .ok_or(TrustError::BadToken)?;
    // Single use: the token is gone whatever happens next.
    d.write(vec![Command::DeleteToken {
        secret: found.secret.clone(),
    }])
    .await?;
    if let Some(op) = d.ops.get(&found.operation_id) {
        op.finish(Ok(()));
    }
    if found.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(TrustError::BadToken);
    }
    Ok(found.client_name)
}

/// Drops the token behind a cancelled token operation.
pub async fn revoke_by_operation(d: &Daemon, op_id: &str) -> Result<(), TrustError> {
    for t in d.db.tokens()? {
        if t.operation_id == op_id {
            d.write(vec![Command::DeleteToken { secret: t.secret }])
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_in_every_form_clients_send() {
        use base64::Engine as _;
        let (pem, _) = tls::generate_client_cert("t").unwrap();
        let der = parse_certificate(&pem).unwrap();
        let b64_der = base64::engine::general_purpose::STANDARD.encode(&der);
        let b64_pem = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
        assert_eq!(parse_certificate(&b64_der).unwrap(), der);
        assert_eq!(parse_certificate(&b64_pem).unwrap(), der);
        assert!(parse_certificate("not a cert").is_err());
        assert!(
            parse_certificate(&base64::engine::general_purpose::STANDARD.encode(b"junk")).is_err()
        );
    }

    #[test]
    fn wildcard_addresses_are_advertised_as_loopback() {
        assert_eq!(advertised("[::]:8443"), "127.0.0.1:8443");
        assert_eq!(advertised("10.0.0.1:8443"), "10.0.0.1:8443");
    }
}
