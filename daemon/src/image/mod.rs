//! The image store: uploaded image tarballs kept by fingerprint under `<state>/images`, their
//! records in the database, and their unpacked volumes in storage pools.
//!
//! An upload is unpacked into the default pool before it is recorded, so a hostile or
//! broken tarball is refused at import time and leaves nothing behind.

pub mod unpack;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};

use crate::daemon::Daemon;
use crate::db::records::ImageRecord;
use crate::db::{Command, DbError};
use crate::storage::StorageDriver;
use unpack::{UnpackError, UnpackLimits};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Image with same fingerprint already exists")]
    Exists,
    #[error("Image not found")]
    NotFound,
    #[error("Invalid image: {0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl From<DbError> for ImageError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Exists(_) => ImageError::Exists,
            DbError::NotFound(_) => ImageError::NotFound,
            e => ImageError::Failed(e.to_string()),
        }
    }
}

impl From<UnpackError> for ImageError {
    fn from(e: UnpackError) -> Self {
        ImageError::Invalid(e.to_string())
    }
}

/// Where an uploaded image's files are kept.
pub fn tarball_path(d: &Daemon, fp: &str) -> PathBuf {
    d.paths.images.join(fp)
}

pub fn rootfs_tarball_path(d: &Daemon, fp: &str) -> PathBuf {
    d.paths.images.join(format!("{fp}.rootfs"))
}

pub fn limits() -> UnpackLimits {
    UnpackLimits::default()
}

fn open(p: &Path) -> Result<BufReader<File>, ImageError> {
    File::open(p)
        .map(BufReader::new)
        .map_err(|e| ImageError::Failed(format!("opening {}: {e}", p.display())))
}

/// Unpacks an image's tarball(s) into a pool's image volume.
fn fill_pool(
    pool: &dyn StorageDriver,
    fp: &str,
    unified: &Path,
    rootfs: Option<&Path>,
) -> Result<unpack::ImageMetadata, ImageError> {
    let mut outcome: Option<Result<unpack::ImageMetadata, ImageError>> = None;
    let r = pool.create_image(fp, &mut |dir: &Path| {
        let result = (|| -> Result<unpack::ImageMetadata, ImageError> {
            match rootfs {
                None => Ok(unpack::unpack_unified(open(unified)?, dir, &limits())?.metadata),
                Some(rootfs) => {
                    let m = unpack::unpack_metadata(open(unified)?, dir, &limits())?.metadata;
                    unpack::unpack_rootfs(open(rootfs)?, &dir.join("rootfs"), &limits())?;
                    Ok(m)
                }
            }
        })();
        let status = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        outcome = Some(result);
        status
    });
    match outcome {
        // The unpacker's own error says more than the pool's wrapper around it.
        Some(Err(e)) => Err(e),
        Some(Ok(m)) => r.map(|_| m).map_err(|e| ImageError::Failed(e.to_string())),
        None => Err(ImageError::Failed(
            r.err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "image volume not filled".into()),
        )),
    }
}

pub struct Upload {
    /// The uploaded file (unified tarball or metadata tarball), already on disk.
    pub file: PathBuf,
    /// The rootfs tarball of a split image.
    pub rootfs: Option<PathBuf>,
    /// sha256 over the upload (both files for a split image, metadata first).
    pub fingerprint: String,
    pub size: u64,
    pub filename: String,
    pub public: bool,
    pub expected_fingerprint: Option<String>,
}

/// Records an uploaded image: unpack into the default pool (validating it), move the
/// files into the store, write the record. Blocking.
pub fn import(d: &Daemon, up: Upload) -> Result<ImageRecord, ImageError> {
    let cleanup = |up: &Upload| {
        let _ = std::fs::remove_file(&up.file);
        if let Some(r) = &up.rootfs {
            let _ = std::fs::remove_file(r);
        }
    };
    if let Some(want) = &up.expected_fingerprint {
        if !want.is_empty() && want != &up.fingerprint {
            cleanup(&up);
            return Err(ImageError::Invalid(format!(
                "Fingerprints don't match, got {} expected {want}",
                up.fingerprint
            )));
        }
    }
    if d.db.image(&up.fingerprint)?.is_some() {
        cleanup(&up);
        return Err(ImageError::Exists);
    }
    let pool = d
        .pool("default")
        .or_else(|| d.pools.read().ok()?.values().next().cloned())
        .ok_or_else(|| ImageError::Failed("no storage pool to unpack the image into".into()))?;
    let meta = match fill_pool(
        pool.as_ref(),
        &up.fingerprint,
        &up.file,
        up.rootfs.as_deref(),
    ) {
        Ok(m) => m,
        Err(e) => {
            cleanup(&up);
            return Err(e);
        }
    };
    let dst = tarball_path(d, &up.fingerprint);
    let moved = std::fs::rename(&up.file, &dst).and_then(|_| match &up.rootfs {
        Some(r) => std::fs::rename(r, rootfs_tarball_path(d, &up.fingerprint)),
        None => Ok(()),
    });
    if let Err(e) = moved {
        cleanup(&up);
        let _ = pool.delete_image(&up.fingerprint);
        return Err(ImageError::Failed(format!("storing image file: {e}")));
    }
    let now = Utc::now();
    let rec = ImageRecord {
        fingerprint: up.fingerprint.clone(),
        filename: up.filename.clone(),
        size: up.size,
        architecture: meta.architecture.clone(),
        image_type: "container".into(),
        public: up.public,
        auto_update: false,
        cached: false,
        properties: meta.properties.clone(),
        profiles: vec!["default".into()],
        created_at: Utc
            .timestamp_opt(meta.creation_date, 0)
            .single()
            .unwrap_or(now),
        uploaded_at: now,
        expires_at: meta
            .expiry_date
            .filter(|t| *t > 0)
            .and_then(|t| Utc.timestamp_opt(t, 0).single()),
        last_used_at: None,
    };
    if let Err(e) = d.write_blocking(vec![Command::CreateImage(rec.clone())]) {
        let _ = std::fs::remove_file(&dst);
        let _ = std::fs::remove_file(rootfs_tarball_path(d, &up.fingerprint));
        let _ = pool.delete_image(&up.fingerprint);
        return Err(e.into());
    }
    d.events.lifecycle(
        "image-created",
        &format!("/1.0/images/{}", rec.fingerprint),
        serde_json::json!({"type": "container"}),
    );
    Ok(rec)
}

/// Makes sure a pool has the image's volume, unpacking the stored tarball if not. Blocking.
pub fn ensure_in_pool(d: &Daemon, pool: &dyn StorageDriver, fp: &str) -> Result<(), ImageError> {
    if pool.has_image(fp) {
        return Ok(());
    }
    let rootfs = rootfs_tarball_path(d, fp);
    fill_pool(
        pool,
        fp,
        &tarball_path(d, fp),
        rootfs.exists().then_some(rootfs.as_path()),
    )
    .map(|_| ())
}

/// Deletes an image's record, files and pool volumes. Blocking.
pub fn delete(d: &Daemon, fp: &str) -> Result<(), ImageError> {
    d.db.image(fp)?.ok_or(ImageError::NotFound)?;
    d.write_blocking(vec![Command::DeleteImage {
        fingerprint: fp.into(),
    }])?;
    let pools: Vec<_> = d
        .pools
        .read()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    for pool in pools {
        if let Err(e) = pool.delete_image(fp) {
            tracing::warn!("removing image {fp} from pool {}: {e}", pool.pool_name());
        }
    }
    let _ = std::fs::remove_file(tarball_path(d, fp));
    let _ = std::fs::remove_file(rootfs_tarball_path(d, fp));
    d.events.lifecycle(
        "image-deleted",
        &format!("/1.0/images/{fp}"),
        serde_json::json!({}),
    );
    Ok(())
}

/// Finds an image by full fingerprint or unique prefix.
pub fn resolve(d: &Daemon, fp_or_prefix: &str) -> Result<ImageRecord, ImageError> {
    if fp_or_prefix.is_empty() || !fp_or_prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ImageError::NotFound);
    }
    let mut found = d.db.images_by_prefix(fp_or_prefix)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ImageError::NotFound),
        _ => Err(ImageError::Invalid(format!(
            "More than one image matches {fp_or_prefix:?}"
        ))),
    }
}
