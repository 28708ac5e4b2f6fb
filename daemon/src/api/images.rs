//! `/1.0/images` (import from a request body: a unified tarball, or multipart metadata +
//! rootfs for split images), image records, export and aliases.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::response::{async_op, check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState, RecursionQuery};
use crate::db::records::{AliasRecord, ImageRecord};
use crate::db::Command;
use crate::image::{self, ImageError};
use crate::operations::resources;

/// Largest image upload accepted (the unpacker separately bounds what it expands to).
pub const MAX_UPLOAD: u64 = 8 << 30;

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Exists => ApiError::conflict(e.to_string()),
            ImageError::NotFound => ApiError::not_found(e.to_string()),
            ImageError::Invalid(m) => ApiError::bad_request(format!("Invalid image: {m}")),
            // The image is too big for the configured limit: the caller's to change.
            ImageError::OverLimit { .. } => ApiError::bad_request(e.to_string()),
            // A full pool is the host's condition, like StorageError::Full elsewhere.
            ImageError::WouldNotFit { .. } | ImageError::PoolFull { .. } => {
                ApiError::internal(e.to_string())
            }
            ImageError::Failed(m) => ApiError::internal(m),
        }
    }
}

#[derive(Serialize)]
struct AliasRef<'a> {
    name: &'a str,
    description: &'a str,
}

#[derive(Serialize)]
struct ImageView<'a> {
    auto_update: bool,
    properties: &'a BTreeMap<String, String>,
    public: bool,
    expires_at: String,
    profiles: &'a [String],
    aliases: Vec<AliasRef<'a>>,
    architecture: &'a str,
    cached: bool,
    filename: &'a str,
    fingerprint: &'a str,
    size: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    last_used_at: String,
    uploaded_at: chrono::DateTime<chrono::Utc>,
    project: &'static str,
}

#[derive(Serialize)]
struct ImageEtag<'a> {
    auto_update: bool,
    properties: &'a BTreeMap<String, String>,
    public: bool,
    profiles: &'a [String],
}

/// Go's zero time, which Incus clients read as "never".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn view<'a>(img: &'a ImageRecord, aliases: &'a [AliasRecord]) -> ImageView<'a> {
    ImageView {
        auto_update: img.auto_update,
        properties: &img.properties,
        public: img.public,
        expires_at: img
            .expires_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| ZERO_TIME.into()),
        profiles: &img.profiles,
        aliases: aliases
            .iter()
            .filter(|a| a.target == img.fingerprint)
            .map(|a| AliasRef {
                name: &a.name,
                description: &a.description,
            })
            .collect(),
        architecture: &img.architecture,
        cached: img.cached,
        filename: &img.filename,
        fingerprint: &img.fingerprint,
        size: img.size,
        kind: &img.image_type,
        created_at: img.created_at,
        last_used_at: img
            .last_used_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| ZERO_TIME.into()),
        uploaded_at: img.uploaded_at,
        project: "default",
    }
}

fn etag(img: &ImageRecord) -> ImageEtag<'_> {
    ImageEtag {
        auto_update: img.auto_update,
        properties: &img.properties,
        public: img.public,
        profiles: &img.profiles,
    }
}

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let images = d.db.images()?;
    if q.recursive() {
        let aliases = d.db.aliases()?;
        return sync(images.iter().map(|i| view(i, &aliases)).collect::<Vec<_>>());
    }
    sync(
        images
            .iter()
            .map(|i| format!("/1.0/images/{}", i.fingerprint))
            .collect::<Vec<_>>(),
    )
}

pub async fn get_one(State(d): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let img = image::resolve(&d, &fp)?;
    let aliases = d.db.aliases()?;
    sync_etag(view(&img, &aliases), &etag(&img))
}

/// Streams a body into a file, hashing it and enforcing the size limit.
async fn save_stream<S, E>(
    mut stream: S,
    path: &std::path::Path,
    hasher: &mut Sha256,
    total: &mut u64,
) -> Result<(), ApiError>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("Failed reading upload: {e}")))?;
        *total += chunk.len() as u64;
        if *total > MAX_UPLOAD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Image upload too large",
            ));
        }
        hasher.update(&chunk);
        f.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    f.sync_all().await.map_err(ApiError::internal)?;
    Ok(())
}

fn header_str(h: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()).map(str::to_string))
}

/// Removes upload files unless disarmed.
struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub async fn import(State(d): State<AppState>, req: Request) -> ApiResult {
    let headers = req.headers().clone();
    let ctype = header_str(&headers, &["content-type"]).unwrap_or_default();
    if ctype.starts_with("application/json") {
        return Err(ApiError::bad_request(
            "Importing images from a URL, a remote server or an instance is not supported yet; upload the image file",
        ));
    }
    let id = uuid::Uuid::new_v4();
    let first = d.paths.images.join(format!(".upload-{id}"));
    let second = d.paths.images.join(format!(".upload-{id}.rootfs"));
    let mut temps = TempFiles(vec![first.clone(), second.clone()]);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let split = if ctype.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &d)
            .await
            .map_err(|e| ApiError::bad_request(format!("Invalid multipart upload: {e}")))?;
        let (mut got_meta, mut got_rootfs) = (false, false);
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("Invalid multipart upload: {e}")))?
        {
            match field.name() {
                Some("metadata") if !got_meta && !got_rootfs => {
                    save_stream(field, &first, &mut hasher, &mut total).await?;
                    got_meta = true;
                }
                Some("rootfs") if got_meta && !got_rootfs => {
                    save_stream(field, &second, &mut hasher, &mut total).await?;
                    got_rootfs = true;
                }
                Some("rootfs.img") => {
                    return Err(ApiError::bad_request(
                        "Virtual machine images are not supported",
                    ))
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Unexpected multipart field {other:?} (want metadata, then rootfs)"
                    )))
                }
            }
        }
        if !(got_meta && got_rootfs) {
            return Err(ApiError::bad_request(
                "A split image needs a metadata and a rootfs part",
            ));
        }
        true
    } else {
        let stream = req.into_body().into_data_stream();
        save_stream(stream, &first, &mut hasher, &mut total).await?;
        false
    };
    if total == 0 {
        return Err(ApiError::bad_request("Empty image upload"));
    }
    let fingerprint = hex::encode(hasher.finalize());
    if d.db.image(&fingerprint)?.is_some() {
        return Err(ApiError::conflict(
            "Image with same fingerprint already exists",
        ));
    }
    let public = header_str(&headers, &["x-incus-public", "x-lxd-public"])
        .is_some_and(|v| v == "true" || v == "1");
    let filename = header_str(&headers, &["x-incus-filename", "x-lxd-filename"])
        .filter(|f| !f.contains('/') && f.len() < 256)
        .unwrap_or_default();
    let expected = header_str(&headers, &["x-incus-fingerprint", "x-lxd-fingerprint"]);
    let properties: BTreeMap<String, String> =
        header_str(&headers, &["x-incus-properties", "x-lxd-properties"])
            .map(|p| url_decode_pairs(&p))
            .unwrap_or_default();
    // The files now belong to the import job.
    temps.0.clear();
    let up = image::Upload {
        file: first,
        rootfs: split.then_some(second.clone()),
        fingerprint: fingerprint.clone(),
        size: total,
        filename,
        public,
        expected_fingerprint: expected,
    };
    if !split {
        let _ = std::fs::remove_file(&second);
    }
    let d2 = d.clone();
    // The client reads the fingerprint and size from the finished operation's metadata.
    let metadata = serde_json::json!({"fingerprint": fingerprint, "size": total});
    let op = d.ops.spawn_task_with(
        "Downloading image",
        resources("images", &[format!("/1.0/images/{fingerprint}")]),
        metadata,
        async move {
            let d3 = d2.clone();
            let rec = tokio::task::spawn_blocking(move || image::import(&d3, up))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if !properties.is_empty() {
                let mut r = rec.clone();
                r.properties.extend(properties);
                // Through the write path like every change: applied to this member's
                // database alone, the properties would never reach the others.
                d2.write(vec![Command::UpdateImage(r)])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        },
    );
    async_op(op.view())
}

fn url_decode_pairs(s: &str) -> BTreeMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePut {
    #[serde(default)]
    auto_update: Option<bool>,
    #[serde(default)]
    properties: Option<BTreeMap<String, String>>,
    #[serde(default)]
    public: Option<bool>,
    #[serde(rename = "expires_at", default)]
    _expires_at: IgnoredAny,
    #[serde(default)]
    profiles: Option<Vec<String>>,
}

async fn update(
    d: AppState,
    fp: String,
    headers: HeaderMap,
    req: ImagePut,
    patch: bool,
) -> ApiResult {
    let mut img = image::resolve(&d, &fp)?;
    check_if_match(&headers, &etag(&img))?;
    if patch {
        if let Some(p) = req.properties {
            img.properties.extend(p);
        }
    } else {
        img.properties = req.properties.unwrap_or_default();
    }
    img.auto_update = req
        .auto_update
        .unwrap_or(if patch { img.auto_update } else { false });
    img.public = req.public.unwrap_or(if patch { img.public } else { false });
    if let Some(p) = req.profiles {
        for name in &p {
            if d.db.profile(name)?.is_none() {
                return Err(ApiError::bad_request(format!(
                    "Profile {name:?} doesn't exist"
                )));
            }
        }
        img.profiles = p;
    }
    d.write(vec![Command::UpdateImage(img)]).await?;
    empty()
}

pub async fn put(
    State(d): State<AppState>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ImagePut>,
) -> ApiResult {
    update(d, fp, headers, req, false).await
}

pub async fn patch(
    State(d): State<AppState>,
    Path(fp): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ImagePut>,
) -> ApiResult {
    update(d, fp, headers, req, true).await
}

pub async fn delete(State(d): State<AppState>, Path(fp): Path<String>) -> ApiResult {
    let img = image::resolve(&d, &fp)?;
    let d2 = d.clone();
    let fp = img.fingerprint.clone();
    let op = d.ops.spawn_task(
        "Deleting image",
        resources("images", &[format!("/1.0/images/{fp}")]),
        async move {
            tokio::task::spawn_blocking(move || image::delete(&d2, &fp))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        },
    );
    async_op(op.view())
}

pub async fn export(
    State(d): State<AppState>,
    Path(fp): Path<String>,
) -> Result<Response, ApiError> {
    let img = image::resolve(&d, &fp)?;
    let unified = image::tarball_path(&d, &img.fingerprint);
    let rootfs = image::rootfs_tarball_path(&d, &img.fingerprint);
    let name = if img.filename.is_empty() {
        format!("{}.tar.gz", img.fingerprint)
    } else {
        img.filename.clone()
    };
    if !rootfs.exists() {
        let f = tokio::fs::File::open(&unified)
            .await
            .map_err(|_| ApiError::not_found("Image file not found"))?;
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
        return Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename={name}"),
                ),
            ],
            body,
        )
            .into_response());
    }
    // Split image: multipart with the metadata and rootfs parts, as Incus sends it.
    let boundary = format!("cairn-{}", uuid::Uuid::new_v4().simple());
    let meta = tokio::fs::read(&unified)
        .await
        .map_err(ApiError::internal)?;
    let root = tokio::fs::read(&rootfs).await.map_err(ApiError::internal)?;
    let mut body = Vec::with_capacity(meta.len() + root.len() + 512);
    for (field, file, data) in [
        ("metadata", "meta-".to_string() + &name, meta),
        ("rootfs", name.clone(), root),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )],
        body,
    )
        .into_response())
}

#[derive(Serialize)]
struct AliasView<'a> {
    name: &'a str,
    description: &'a str,
    target: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn alias_view(a: &AliasRecord) -> AliasView<'_> {
    AliasView {
        name: &a.name,
        description: &a.description,
        target: &a.target,
        kind: "container",
    }
}

pub async fn list_aliases(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let aliases = d.db.aliases()?;
    if q.recursive() {
        return sync(aliases.iter().map(alias_view).collect::<Vec<_>>());
    }
    sync(
        aliases
            .iter()
            .map(|a| format!("/1.0/images/aliases/{}", a.name))
            .collect::<Vec<_>>(),
    )
}

pub async fn get_alias(State(d): State<AppState>, Path(alias): Path<String>) -> ApiResult {
    let a =
        d.db.alias(&alias)?
            .ok_or_else(|| ApiError::not_found("Image alias not found"))?;
    sync_etag(alias_view(&a), &(&a.description, &a.target))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasPost {
    name: String,
    #[serde(default)]
    description: String,
    target: String,
    #[serde(rename = "type", default)]
    kind: String,
}

pub async fn create_alias(
    State(d): State<AppState>,
    ApiJson(req): ApiJson<AliasPost>,
) -> ApiResult {
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !req.kind.is_empty() && req.kind != "container" {
        return Err(ApiError::bad_request("Only container images are supported"));
    }
    let img = image::resolve(&d, &req.target)?;
    if d.db.alias(&req.name)?.is_some() {
        return Err(ApiError::conflict("Alias already exists"));
    }
    d.write(vec![Command::CreateAlias(AliasRecord {
        name: req.name,
        target: img.fingerprint,
        description: req.description,
    })])
    .await?;
    empty()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasPut {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(rename = "name", default)]
    _name: IgnoredAny,
    #[serde(rename = "type", default)]
    _kind: IgnoredAny,
}

pub async fn put_alias(
    State(d): State<AppState>,
    Path(alias): Path<String>,
    ApiJson(req): ApiJson<AliasPut>,
) -> ApiResult {
    let mut a =
        d.db.alias(&alias)?
            .ok_or_else(|| ApiError::not_found("Image alias not found"))?;
    if let Some(t) = req.target {
        a.target = image::resolve(&d, &t)?.fingerprint;
    }
    if let Some(desc) = req.description {
        a.description = desc;
    }
    d.write(vec![Command::UpdateAlias(a)]).await?;
    empty()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasRename {
    name: String,
}

pub async fn rename_alias(
    State(d): State<AppState>,
    Path(alias): Path<String>,
    ApiJson(req): ApiJson<AliasRename>,
) -> ApiResult {
    crate::validate::object_name(&req.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    d.db.alias(&alias)?
        .ok_or_else(|| ApiError::not_found("Image alias not found"))?;
    if d.db.alias(&req.name)?.is_some() {
        return Err(ApiError::conflict("Alias already exists"));
    }
    d.write(vec![Command::RenameAlias {
        from: alias,
        to: req.name,
    }])
    .await?;
    empty()
}

pub async fn delete_alias(State(d): State<AppState>, Path(alias): Path<String>) -> ApiResult {
    d.db.alias(&alias)?
        .ok_or_else(|| ApiError::not_found("Image alias not found"))?;
    d.write(vec![Command::DeleteAlias { name: alias }]).await?;
    empty()
}
