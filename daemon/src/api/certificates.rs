//! `/1.0/certificates`: the trust store and trust tokens.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Extension;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::response::{async_op, check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::CertificateRecord;
use crate::db::Command;
use crate::trust::{self, TrustError};

impl From<TrustError> for ApiError {
    fn from(e: TrustError) -> Self {
        match e {
            TrustError::Invalid(m) | TrustError::Unusable(m) => ApiError::bad_request(m),
            TrustError::RestrictedUnsupported => ApiError::bad_request(e.to_string()),
            TrustError::BadToken | TrustError::Expired => {
                ApiError::new(axum::http::StatusCode::FORBIDDEN, e.to_string())
            }
            TrustError::Exists => ApiError::conflict(e.to_string()),
            TrustError::Db(e) => e.into(),
        }
    }
}

#[derive(Serialize)]
struct CertView<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    restricted: bool,
    projects: &'a [String],
    certificate: &'a str,
    fingerprint: &'a str,
    description: &'a str,
}

fn view(c: &CertificateRecord) -> CertView<'_> {
    CertView {
        name: &c.name,
        kind: &c.cert_type,
        restricted: c.restricted,
        projects: &c.projects,
        certificate: &c.certificate,
        fingerprint: &c.fingerprint,
        description: &c.description,
    }
}

#[derive(Serialize)]
struct CertEtag<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    restricted: bool,
    projects: &'a [String],
    certificate: &'a str,
    description: &'a str,
}

fn etag(c: &CertificateRecord) -> CertEtag<'_> {
    CertEtag {
        name: &c.name,
        kind: &c.cert_type,
        restricted: c.restricted,
        projects: &c.projects,
        certificate: &c.certificate,
        description: &c.description,
    }
}

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let certs = d.db.certificates()?;
    if q.recursive() {
        return sync(certs.iter().map(view).collect::<Vec<_>>());
    }
    sync(
        certs
            .iter()
            .map(|c| format!("/1.0/certificates/{}", c.fingerprint))
            .collect::<Vec<_>>(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesPost {
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    restricted: bool,
    #[serde(default)]
    projects: Option<Vec<String>>,
    #[serde(default)]
    certificate: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    trust_token: String,
    #[serde(default)]
    token: bool,
}

pub async fn create(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CertificatesPost>,
) -> ApiResult {
    if !req.kind.is_empty() && req.kind != "client" {
        return Err(ApiError::bad_request(format!(
            "Unsupported certificate type {:?} (only client)",
            req.kind
        )));
    }
    if req.token {
        if !caller.trusted {
            return Err(ApiError::forbidden());
        }
        let op = trust::create_token(
            &d,
            &req.name,
            req.restricted,
            req.projects.unwrap_or_default(),
        )
        .await?;
        return async_op(op.view());
    }
    // The certificate to trust: the one in the body, else the one the client connected with.
    let der = if !req.certificate.is_empty() {
        trust::parse_certificate(&req.certificate)?
    } else {
        caller
            .cert_der
            .as_ref()
            .map(|c| c.to_vec())
            .ok_or_else(|| ApiError::bad_request("No client certificate provided"))?
    };
    let mut name = req.name.clone();
    let (mut restricted, mut projects) = (req.restricted, req.projects.unwrap_or_default());
    if !caller.trusted {
        if req.trust_token.is_empty() {
            return Err(ApiError::forbidden());
        }
        // Before the token is spent: a certificate that cannot be used should not cost it.
        trust::check_certificate(&der)?;
        // As Incus: the token's holder gets what the admin issued it for, whatever it asks.
        let token = trust::redeem(&d, &req.trust_token).await?;
        name = token.client_name;
        (restricted, projects) = (token.restricted, token.projects);
    }
    if name.is_empty() {
        name = "client".into();
    }
    crate::validate::object_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fp = crate::tls::cert_fingerprint(&der);
    if caller.trusted || d.db.certificate(&fp)?.is_none() {
        trust::add_certificate(&d, &der, &name, restricted, projects, &req.description).await?;
    }
    let mut r = empty()?;
    *r.status_mut() = axum::http::StatusCode::CREATED;
    r.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(&format!("/1.0/certificates/{fp}"))
            .map_err(ApiError::internal)?,
    );
    Ok(r)
}

fn find(d: &AppState, fp: &str) -> Result<CertificateRecord, ApiError> {
    if fp.is_empty() || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("Certificate not found"));
    }
    let mut matches: Vec<_> =
        d.db.certificates()?
            .into_iter()
            .filter(|c| c.fingerprint.starts_with(fp))
            .collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(ApiError::not_found("Certificate not found")),
        _ => Err(ApiError::bad_request("More than one certificate matches")),
    }
}

pub async fn get_one(State(d): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let c = find(&d, &fp)?;
    sync_etag(view(&c), &etag(&c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePut {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    restricted: Option<bool>,
    #[serde(default)]
    projects: Option<Vec<String>>,
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "fingerprint", default)]
    _fingerprint: IgnoredAny,
}

pub async fn put(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CertificatePut>,
) -> ApiResult {
    let mut c = find(&d, &fp)?;
    check_if_match(&headers, &etag(&c))?;
    // Restrictions bind a client only if it cannot lift them itself.
    let own = caller.fingerprint.as_deref() == Some(c.fingerprint.as_str());
    let changes_restrictions = req.restricted.is_some_and(|r| r != c.restricted)
        || req.projects.as_ref().is_some_and(|p| *p != c.projects);
    if own && changes_restrictions {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "A certificate cannot change its own restrictions",
        ));
    }
    if req.restricted == Some(true) {
        return Err(TrustError::RestrictedUnsupported.into());
    }
    if req.kind.as_deref().is_some_and(|k| k != "client") {
        return Err(ApiError::bad_request(
            "Only client certificates are supported",
        ));
    }
    if let Some(cert) = req.certificate.filter(|s| !s.is_empty()) {
        let der = trust::parse_certificate(&cert)?;
        if crate::tls::cert_fingerprint(&der) != c.fingerprint {
            return Err(ApiError::bad_request(
                "The certificate itself cannot be changed",
            ));
        }
    }
    if let Some(n) = req.name {
        crate::validate::object_name(&n).map_err(|e| ApiError::bad_request(e.to_string()))?;
        c.name = n;
    }
    if let Some(r) = req.restricted {
        c.restricted = r;
    }
    if let Some(p) = req.projects {
        c.projects = p;
    }
    if let Some(desc) = req.description {
        c.description = desc;
    }
    d.write(vec![Command::UpdateCertificate(c)]).await?;
    empty()
}

pub async fn delete(State(d): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let c = find(&d, &fp)?;
    d.write(vec![Command::DeleteCertificate {
        fingerprint: c.fingerprint.clone(),
    }])
    .await?;
    d.events.lifecycle(
        "certificate-deleted",
        &format!("/1.0/certificates/{}", c.fingerprint),
        serde_json::json!({}),
    );
    empty()
}
