//! The trust store: client certificates allowed over HTTPS, and the single-use trust tokens
//! (`incus config trust add`) that let a new client add its own certificate.
//!
//! A pending token is both a database record (so it survives a restart) and a running
//! operation of class `token` (which is how Incus clients list and revoke them). The record
//! is the truth, replicated to every member of a cluster; the operation lives only on the
//! member that issued it (or restored it at start). So a token is accepted only while its
//! record exists and has not expired, redeeming it deletes the record through
//! [`Daemon::write`] (a second redeem, on any member, finds nothing to delete and is
//! refused), and cancelling its operation — or naming it on a member that does not hold the
//! operation — deletes the record the same way ([`revoke_operation`]). Join tokens
//! (`incus cluster add`) follow the same rule; their records are the cluster's.

use chrono::{Duration, Utc};
use serde_json::json;

use crate::daemon::Daemon;
use crate::db::records::{CertificateRecord, TokenRecord};
use crate::db::{Command, DbError};
use crate::operations::{NewOp, OpClass, OpStatus, Operation, OperationView, Resources};
use crate::tls::{self, TrustToken};

/// How long a trust token stays valid. Incus defaults to no expiry; a day bounds how long a
/// leaked token is worth anything.
pub const TOKEN_LIFETIME_HOURS: i64 = 24;

/// Why `restricted: true` is refused: without projects a restricted certificate could only
/// be a full admin.
pub const RESTRICTED_UNSUPPORTED: &str =
    "Restricted certificates need projects, which this server does not support yet";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Invalid(String),
    #[error("No matching certificate add operation found")]
    BadToken,
    #[error("Token has expired")]
    Expired,
    /// The certificate is expired, not valid yet or has a weak RSA key (HTTP 400, as Incus).
    #[error("{0}")]
    Unusable(String),
    #[error("{RESTRICTED_UNSUPPORTED}")]
    RestrictedUnsupported,
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
    if restricted {
        return Err(TrustError::RestrictedUnsupported);
    }
    check_certificate(der)?;
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

/// Smallest RSA key a client may use (Incus's `certificateValidate`).
const MIN_RSA_BITS: usize = 2048;

/// Refuses, in Incus's words (`certificateValidate`), a certificate outside its validity
/// period (a client could not use it anyway) or with an RSA key under 2048 bits.
pub fn check_certificate(der: &[u8]) -> Result<(), TrustError> {
    use tls::ValidityError::*;
    match tls::validity::check_now(der) {
        Ok(()) => {}
        Err(Expired(at)) => {
            return Err(TrustError::Unusable(format!(
                "The provided certificate is expired (valid until {})",
                at.to_rfc3339()
            )))
        }
        Err(NotYetValid(at)) => {
            return Err(TrustError::Unusable(format!(
                "The provided certificate isn't valid yet (valid from {})",
                at.to_rfc3339()
            )))
        }
        Err(e @ Unreadable(_)) => return Err(TrustError::Invalid(e.to_string())),
    }
    // Go's check is on whole bytes of modulus: a 2047-bit key passes there, so here too.
    match tls::validity::rsa_key_bits(der) {
        Ok(Some(bits)) if bits.div_ceil(8) * 8 < MIN_RSA_BITS => Err(TrustError::Unusable(
            format!("RSA key is too weak (minimum of {MIN_RSA_BITS}bit, this one has {bits})"),
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(TrustError::Invalid(e.to_string())),
    }
}

/// What `incus config trust add` builds the printed token from.
fn token_metadata(d: &Daemon, t: &TokenRecord) -> serde_json::Value {
    let addresses: Vec<String> = d
        .https
        .address()
        .into_iter()
        .map(|a| advertised(&a))
        .collect();
    let mut metadata = json!({
        "request": request_json(t),
        "secret": t.secret,
        "fingerprint": d.cert().fingerprint(),
        "addresses": addresses,
    });
    if let Some(exp) = t.expires_at {
        metadata["expiresAt"] = json!(exp.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    metadata
}

const TOKEN_OP_DESCRIPTION: &str = "Executing operation";
const JOIN_TOKEN_OP_DESCRIPTION: &str = "Requesting a join token";

fn token_op(d: &Daemon, t: &TokenRecord) -> std::sync::Arc<Operation> {
    d.ops.create_with_id(
        t.operation_id.clone(),
        NewOp {
            class: OpClass::Token,
            description: TOKEN_OP_DESCRIPTION.into(),
            resources: Resources::new(),
            metadata: token_metadata(d, t),
            may_cancel: true,
        },
    )
}

/// A running token operation as the API shows it, for a token whose operation another
/// member holds.
fn pending_view(
    id: &str,
    description: &str,
    created_at: chrono::DateTime<Utc>,
    resources: Resources,
    metadata: serde_json::Value,
) -> OperationView {
    let status = OpStatus::Running;
    OperationView {
        id: id.to_string(),
        class: "token".into(),
        description: description.into(),
        created_at,
        updated_at: created_at,
        status: status.name().into(),
        status_code: status.code(),
        resources,
        metadata,
        may_cancel: true,
        err: String::new(),
        location: "none".into(),
    }
}

/// The pending tokens (certificate add and cluster join) whose operation is not on this
/// member: in a cluster, the member that issued a token holds its operation, yet
/// `incus config trust list-tokens|revoke-token` and `incus cluster list-tokens|revoke-token`
/// may ask any member. Shown from the replicated records; cancelling one revokes the record
/// ([`revoke_operation`]).
pub fn tokens_held_elsewhere(d: &Daemon) -> Result<Vec<OperationView>, TrustError> {
    // Expired ones too, as their operations would be: listed (with their expiry) until
    // revoked, and refused if presented.
    let now = Utc::now();
    let here = |id: &str| d.ops.get(id).is_some();
    let mut views = Vec::new();
    for t in d.db.tokens()? {
        if here(&t.operation_id) {
            continue;
        }
        views.push(pending_view(
            &t.operation_id,
            TOKEN_OP_DESCRIPTION,
            t.created_at,
            Resources::new(),
            token_metadata(d, &t),
        ));
    }
    if d.cluster().is_some() {
        let addresses: Vec<String> = d.db.members()?.into_iter().map(|m| m.address).collect();
        for t in d.db.join_tokens()? {
            if here(&t.operation_id) {
                continue;
            }
            let metadata = json!({
                "serverName": t.name,
                "secret": t.secret,
                "fingerprint": d.cert().fingerprint(),
                "addresses": addresses,
                "expiresAt": t.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            });
            views.push(pending_view(
                &t.operation_id,
                JOIN_TOKEN_OP_DESCRIPTION,
                now,
                crate::operations::resources("cluster", &["/1.0/cluster".to_string()]),
                metadata,
            ));
        }
    }
    Ok(views)
}

/// Cancels this member's token operations whose token is gone: redeemed or revoked on
/// another member, which deleted the record but could not reach the operation.
pub fn forget_spent_tokens(d: &Daemon) -> Result<(), TrustError> {
    let mut live: std::collections::HashSet<String> =
        d.db.tokens()?.into_iter().map(|t| t.operation_id).collect();
    live.extend(d.db.join_tokens()?.into_iter().map(|t| t.operation_id));
    for op in d.ops.all() {
        if op.class() == OpClass::Token
            && op.status() == OpStatus::Running
            && !live.contains(&op.id)
        {
            op.cancel();
        }
    }
    Ok(())
}

/// A wildcard listen address is no use to a client: name loopback instead.
fn advertised(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("[::]" | "0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        _ => addr.to_string(),
    }
}

/// Issues a token for `client_name`; returns its operation. The restrictions are the
/// admin's: the client that redeems the token gets exactly these.
pub async fn create_token(
    d: &Daemon,
    client_name: &str,
    restricted: bool,
    projects: Vec<String>,
) -> Result<std::sync::Arc<Operation>, TrustError> {
    crate::validate::object_name(client_name).map_err(|e| TrustError::Invalid(e.to_string()))?;
    if restricted {
        return Err(TrustError::RestrictedUnsupported);
    }
    let now = Utc::now();
    let t = TokenRecord {
        secret: tls::new_secret(),
        client_name: client_name.to_string(),
        operation_id: uuid::Uuid::new_v4().to_string(),
        created_at: now,
        expires_at: Some(now + Duration::hours(TOKEN_LIFETIME_HOURS)),
        restricted,
        projects,
    };
    d.write(vec![Command::CreateToken(t.clone())]).await?;
    purge_expired(d).await;
    Ok(token_op(d, &t))
}

/// Drops expired certificate add tokens, best effort: they are refused anyway, and
/// nothing else deletes a token nobody presents or revokes.
async fn purge_expired(d: &Daemon) {
    let now = Utc::now();
    let expired: Vec<Command> = match d.db.tokens() {
        Ok(tokens) => tokens
            .into_iter()
            .filter(|t| t.expires_at.is_some_and(|e| e <= now))
            .map(|t| Command::DeleteToken { secret: t.secret })
            .collect(),
        Err(e) => {
            tracing::warn!("listing trust tokens: {e}");
            return;
        }
    };
    if expired.is_empty() {
        return;
    }
    // A failure (one of them redeemed or revoked meanwhile) is retried at the next token.
    if let Err(e) = d.write(expired).await {
        tracing::debug!("dropping expired trust tokens: {e}");
    }
}

fn request_json(t: &TokenRecord) -> serde_json::Value {
    json!({
        "name": t.client_name, "type": "client", "restricted": t.restricted,
        "projects": t.projects, "certificate": "", "description": "", "token": true,
        "trust_token": "",
    })
}

/// Recreates the operations of pending tokens after a restart. Expired ones get none (their
/// records are refused and dropped when presented): this runs before a cluster member has
/// rejoined Raft, when nothing may write the replicated database.
pub fn restore_tokens(d: &Daemon) -> Result<(), TrustError> {
    let now = Utc::now();
    for t in d.db.tokens()? {
        if t.expires_at.is_some_and(|e| e <= now) {
            continue;
        }
        token_op(d, &t);
    }
    Ok(())
}

/// Redeems a token (the whole base64 token or its bare secret): single use, checked for
/// expiry. Returns the token as the admin issued it (name and restrictions).
pub async fn redeem(d: &Daemon, presented: &str) -> Result<TokenRecord, TrustError> {
    let secret = match TrustToken::decode(presented) {
        Ok(t) => t.secret,
        Err(_) => presented.trim().to_string(),
    };
    if secret.is_empty() {
        return Err(TrustError::BadToken);
    }
    let found =
        d.db.tokens()?
            .into_iter()
            .find(|t| tls::secrets_equal(&t.secret, &secret))
            .ok_or(TrustError::BadToken)?;
    // Single use: the token is gone whatever happens next. The deletion is what decides
    // between racing redeems, and a revoke on another member: this member may not have
    // applied that yet, but the write is applied after it and finds no record.
    match d
        .write(vec![Command::DeleteToken {
            secret: found.secret.clone(),
        }])
        .await
    {
        Ok(()) => {}
        Err(DbError::NotFound(_)) => return Err(TrustError::BadToken),
        Err(e) => return Err(e.into()),
    }
    if let Some(op) = d.ops.get(&found.operation_id) {
        op.finish(Ok(()));
    }
    if found.expires_at.is_some_and(|e| e <= Utc::now()) {
        tracing::info!("refused expired trust token for {}", found.client_name);
        return Err(TrustError::Expired);
    }
    Ok(found)
}

/// Revokes the token (certificate add or cluster join) behind operation `op_id`: deletes
/// its record cluster-wide. Returns whether there was one. Runs before the operation is
/// marked cancelled, so a revoke that cannot be written leaves the token visibly pending.
pub async fn revoke_operation(d: &Daemon, op_id: &str) -> Result<bool, TrustError> {
    let mut cmds: Vec<Command> =
        d.db.tokens()?
            .into_iter()
            .filter(|t| t.operation_id == op_id)
            .map(|t| Command::DeleteToken { secret: t.secret })
            .collect();
    cmds.extend(
        d.db.join_tokens()?
            .into_iter()
            .filter(|t| t.operation_id == op_id)
            .map(|t| Command::DeleteJoinToken { name: t.name }),
    );
    if cmds.is_empty() {
        return Ok(false);
    }
    match d.write(cmds).await {
        Ok(()) => {}
        // Redeemed or revoked meanwhile (perhaps on another member): gone all the same.
        Err(DbError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!("token of operation {op_id} revoked");
    Ok(true)
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

    fn daemon() -> (tempfile::TempDir, std::sync::Arc<Daemon>) {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon::open(dir.path()).unwrap();
        (dir, d)
    }

    /// The token text `incus config trust add` prints for operation `op`.
    fn printed_token(d: &Daemon, op: &Operation) -> String {
        let meta = op.view().metadata;
        TrustToken {
            client_name: meta["request"]["name"].as_str().unwrap().to_string(),
            fingerprint: d.cert().fingerprint().to_string(),
            addresses: vec!["127.0.0.1:8443".into()],
            secret: meta["secret"].as_str().unwrap().to_string(),
            expires_at: None,
        }
        .encode()
    }

    #[tokio::test]
    async fn a_token_is_redeemed_once_with_the_admins_name_and_restrictions() {
        let (_dir, d) = daemon();
        let op = create_token(&d, "laptop", false, vec![]).await.unwrap();
        let token = printed_token(&d, &op);
        let got = redeem(&d, &token).await.unwrap();
        assert_eq!(got.client_name, "laptop");
        assert!(!got.restricted && got.projects.is_empty());
        assert_eq!(op.status(), crate::operations::OpStatus::Success);
        assert!(matches!(
            redeem(&d, &token).await,
            Err(TrustError::BadToken)
        ));
        assert!(d.db.tokens().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused() {
        let (_dir, d) = daemon();
        let op = create_token(&d, "laptop", false, vec![]).await.unwrap();
        let token = printed_token(&d, &op);
        assert!(revoke_operation(&d, &op.id).await.unwrap());
        assert!(matches!(
            redeem(&d, &token).await,
            Err(TrustError::BadToken)
        ));
        // Revoking again finds nothing.
        assert!(!revoke_operation(&d, &op.id).await.unwrap());
    }

    #[tokio::test]
    async fn a_token_issued_on_another_member_is_revoked_by_its_record() {
        // Replicated from the member that issued it: a record, no operation here.
        let (_dir, d) = daemon();
        let t = TokenRecord {
            secret: tls::new_secret(),
            client_name: "remote".into(),
            operation_id: uuid::Uuid::new_v4().to_string(),
            created_at: Utc::now(),
            expires_at: Some(Utc::now() + Duration::hours(1)),
            restricted: false,
            projects: vec![],
        };
        d.write(vec![Command::CreateToken(t.clone())])
            .await
            .unwrap();
        assert!(d.ops.get(&t.operation_id).is_none());
        // Listed here all the same, so revoke-token can find it on any member.
        let views = tokens_held_elsewhere(&d).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].id, t.operation_id);
        assert_eq!(views[0].metadata["request"]["name"], "remote");
        assert!(revoke_operation(&d, &t.operation_id).await.unwrap());
        assert!(tokens_held_elsewhere(&d).unwrap().is_empty());
        assert!(matches!(
            redeem(&d, &t.secret).await,
            Err(TrustError::BadToken)
        ));
    }

    #[tokio::test]
    async fn an_operation_whose_token_was_spent_elsewhere_stops_running() {
        let (_dir, d) = daemon();
        let op = create_token(&d, "laptop", false, vec![]).await.unwrap();
        let secret = op.view().metadata["secret"].as_str().unwrap().to_string();
        // As a redeem or revoke on another member leaves it: the record gone, the
        // operation here untouched.
        d.write(vec![Command::DeleteToken { secret }])
            .await
            .unwrap();
        assert_eq!(op.status(), OpStatus::Running);
        forget_spent_tokens(&d).unwrap();
        assert_eq!(op.status(), OpStatus::Cancelled);
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_and_dropped() {
        let (_dir, d) = daemon();
        let t = TokenRecord {
            secret: tls::new_secret(),
            client_name: "late".into(),
            operation_id: uuid::Uuid::new_v4().to_string(),
            created_at: Utc::now() - Duration::hours(2),
            expires_at: Some(Utc::now() - Duration::hours(1)),
            restricted: false,
            projects: vec![],
        };
        d.write(vec![Command::CreateToken(t.clone())])
            .await
            .unwrap();
        // Restoring after a restart gives it no operation (and writes nothing).
        restore_tokens(&d).unwrap();
        assert!(d.ops.get(&t.operation_id).is_none());
        assert!(matches!(
            redeem(&d, &t.secret).await,
            Err(TrustError::Expired)
        ));
        assert!(d.db.tokens().unwrap().is_empty());
        assert!(matches!(
            redeem(&d, &t.secret).await,
            Err(TrustError::BadToken)
        ));

        // One nobody presents is dropped when the next token is issued.
        let t = TokenRecord {
            secret: tls::new_secret(),
            operation_id: uuid::Uuid::new_v4().to_string(),
            ..t
        };
        d.write(vec![Command::CreateToken(t.clone())])
            .await
            .unwrap();
        let op = create_token(&d, "next", false, vec![]).await.unwrap();
        let left: Vec<_> = d.db.tokens().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].operation_id, op.id);
    }

    #[tokio::test]
    async fn a_revoked_join_token_record_is_deleted() {
        let (_dir, d) = daemon();
        let t = crate::db::records::JoinTokenRecord {
            name: "node2".into(),
            secret: tls::new_secret(),
            operation_id: uuid::Uuid::new_v4().to_string(),
            expires_at: Utc::now() + Duration::hours(3),
        };
        d.write(vec![Command::CreateJoinToken(t.clone())])
            .await
            .unwrap();
        assert!(revoke_operation(&d, &t.operation_id).await.unwrap());
        assert!(d.db.join_token("node2").unwrap().is_none());
    }

    #[tokio::test]
    async fn restricted_tokens_and_certificates_are_refused_until_projects_exist() {
        let (_dir, d) = daemon();
        let Err(err) = create_token(&d, "r", true, vec!["default".into()]).await else {
            panic!("a restricted token was issued");
        };
        assert!(matches!(err, TrustError::RestrictedUnsupported), "{err}");
        assert!(d.db.tokens().unwrap().is_empty());
        let (pem, _) = tls::generate_client_cert("r").unwrap();
        let der = parse_certificate(&pem).unwrap();
        let err = add_certificate(&d, &der, "r", true, vec!["default".into()], "")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Restricted certificates need projects"),
            "{err}"
        );
        assert!(d.db.certificates().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_expired_certificate_is_not_added() {
        let (_dir, d) = daemon();
        let mut params = rcgen::CertificateParams::new(vec!["old".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let err = add_certificate(&d, &der, "old", false, vec![], "")
            .await
            .unwrap_err();
        assert!(matches!(err, TrustError::Unusable(_)), "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn weak_rsa_keys_are_refused_as_incus_does() {
        let pem = crate::tls::validity::tests::RSA_1024;
        let der = parse_certificate(pem).unwrap();
        let err = check_certificate(&der).unwrap_err();
        assert!(matches!(err, TrustError::Unusable(_)), "{err}");
        assert!(err.to_string().contains("RSA key is too weak"), "{err}");
        let (ec, _) = tls::generate_client_cert("ec").unwrap();
        check_certificate(&parse_certificate(&ec).unwrap()).unwrap();
    }

    #[test]
    fn wildcard_addresses_are_advertised_as_loopback() {
        assert_eq!(advertised("[::]:8443"), "127.0.0.1:8443");
        assert_eq!(advertised("10.0.0.1:8443"), "10.0.0.1:8443");
    }
}
