//! The image store: uploaded image tarballs kept by fingerprint under `<state>/images`, their
//! records in the database, and their unpacked volumes in storage pools.
//!
//! An upload is unpacked into the default pool before it is recorded, so a hostile or
//! broken tarball is refused at import time and leaves nothing behind.
//!
//! Every unpack (an upload, or the stored tarball into another pool) has a byte budget
//! ([`UnpackBudget`]): `images.max_unpacked_size` (16 GiB when unset), lowered to what the
//! pool can give when the unpack starts (its free space less a reserve, [`pool_reserve`]).
//! A small tarball of zeros that would expand past either stops there, with an error that
//! names which one, and the pool's staging volume is removed.

pub mod unpack;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};

use crate::daemon::Daemon;
use crate::db::records::ImageRecord;
use crate::db::{Command, DbError};
use crate::storage::size::{format_iec, parse_bytes};
use crate::storage::{Space, StorageDriver};
use unpack::{UnpackError, UnpackLimits};

/// The server key capping what one image may unpack to.
pub const MAX_UNPACKED_SIZE_KEY: &str = "images.max_unpacked_size";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Image with same fingerprint already exists")]
    Exists,
    #[error("Image not found")]
    NotFound,
    #[error("Invalid image: {0}")]
    Invalid(String),
    /// The image expands past `images.max_unpacked_size` (or its default).
    #[error(
        "Image unpacks to more than {MAX_UNPACKED_SIZE_KEY} ({}{})",
        format_iec(*limit),
        if *configured { "" } else { ", the default" }
    )]
    OverLimit { limit: u64, configured: bool },
    /// The image expands past what its pool can hold, less the reserve kept free.
    #[error(
        "Image would not fit in storage pool {pool:?}: it unpacks to more than {} \
         ({} free, {} kept in reserve)",
        format_iec(*usable), format_iec(*free), format_iec(*reserve)
    )]
    WouldNotFit {
        pool: String,
        usable: u64,
        free: u64,
        reserve: u64,
    },
    /// The pool filled up during the unpack (another writer took the space meanwhile).
    #[error(
        "Image would not fit in storage pool {pool:?}: the pool ran out of space while unpacking"
    )]
    PoolFull { pool: String },
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

/// The default of `images.max_unpacked_size`: the unpacker's own byte limit.
pub fn default_max_unpacked_size() -> u64 {
    UnpackLimits::default().max_bytes
}

/// A value of `images.max_unpacked_size`: `None` when empty (the default applies), else a
/// size string (`10GiB`, `500MB`, bytes) of more than zero. The error is the API's 400.
pub fn parse_max_unpacked_size(value: &str) -> Result<Option<u64>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let bad = |why: String| format!("Invalid value for {MAX_UNPACKED_SIZE_KEY}: {value:?} ({why})");
    match parse_bytes(value) {
        // Zero would refuse every image, even one of empty files: never what is meant.
        Ok(0) => Err(bad("must be more than 0".into())),
        Ok(n) => Ok(Some(n)),
        Err(e) => Err(bad(format!("{e}; a size such as 10GiB"))),
    }
}

/// What one unpack must leave free in a pool: 5% of its size, at least 64 MiB. A dir pool
/// usually shares its filesystem with the state dir, and the database, logs and the
/// containers already running must still be able to write when an image takes the rest.
pub fn pool_reserve(total: u64) -> u64 {
    (total / 20).max(64 << 20)
}

/// Which limit bounds an unpack, to say which one an image went over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetSource {
    /// `images.max_unpacked_size`, or its default when `configured` is false.
    Config { configured: bool },
    /// The pool's free space (at the start of the unpack) less [`pool_reserve`].
    Pool {
        pool: String,
        free: u64,
        reserve: u64,
    },
}

/// The byte limit of one unpack and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackBudget {
    pub bytes: u64,
    pub source: BudgetSource,
}

impl UnpackBudget {
    /// The smaller of the configured limit (`None`: the default) and what the pool can give.
    /// The pool's figure is taken once, at the start: two unpacks at once may each count on
    /// the same free space, and the second then stops on ENOSPC ([`ImageError::PoolFull`]),
    /// cleaned up the same way.
    pub fn new(configured: Option<u64>, pool: &str, space: Space) -> UnpackBudget {
        let max = configured.unwrap_or_else(default_max_unpacked_size);
        let free = space.total.saturating_sub(space.used);
        let reserve = pool_reserve(space.total);
        let usable = free.saturating_sub(reserve);
        if usable < max {
            UnpackBudget {
                bytes: usable,
                source: BudgetSource::Pool {
                    pool: pool.to_string(),
                    free,
                    reserve,
                },
            }
        } else {
            UnpackBudget {
                bytes: max,
                source: BudgetSource::Config {
                    configured: configured.is_some(),
                },
            }
        }
    }

    /// The unpacker's limits with this budget's bytes (and the default entry count).
    pub fn limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_bytes: self.bytes,
            ..UnpackLimits::default()
        }
    }

    /// The error of an image that went over this budget.
    pub fn exceeded(&self) -> ImageError {
        match &self.source {
            BudgetSource::Config { configured } => ImageError::OverLimit {
                limit: self.bytes,
                configured: *configured,
            },
            BudgetSource::Pool {
                pool,
                free,
                reserve,
            } => ImageError::WouldNotFit {
                pool: pool.clone(),
                usable: self.bytes,
                free: *free,
                reserve: *reserve,
            },
        }
    }

    /// An unpacker error in this budget's words: over the byte limit is
    /// [`UnpackBudget::exceeded`], a full filesystem is [`ImageError::PoolFull`].
    fn explain(&self, pool: &str, e: UnpackError) -> ImageError {
        if e.is_over_byte_limit() {
            self.exceeded()
        } else if e.is_out_of_space() {
            ImageError::PoolFull {
                pool: pool.to_string(),
            }
        } else {
            e.into()
        }
    }
}

/// `images.max_unpacked_size` as set, `None` when unset. A stored value that does not parse
/// (the API refuses one, so only a hand-edited database has it) falls back to the default:
/// the unpack stays bounded, and the log says why the setting is not honoured.
fn configured_max_unpacked_size(d: &Daemon) -> Result<Option<u64>, ImageError> {
    let config = d.db.server_config()?;
    let Some(v) = config.get(MAX_UNPACKED_SIZE_KEY) else {
        return Ok(None);
    };
    match parse_max_unpacked_size(v) {
        Ok(n) => Ok(n),
        Err(e) => {
            tracing::warn!("{e}; using the default");
            Ok(None)
        }
    }
}

/// Where an uploaded image's files are kept.
pub fn tarball_path(d: &Daemon, fp: &str) -> PathBuf {
    d.paths.images.join(fp)
}

pub fn rootfs_tarball_path(d: &Daemon, fp: &str) -> PathBuf {
    d.paths.images.join(format!("{fp}.rootfs"))
}

fn open(p: &Path) -> Result<BufReader<File>, ImageError> {
    File::open(p)
        .map(BufReader::new)
        .map_err(|e| ImageError::Failed(format!("opening {}: {e}", p.display())))
}

/// Unpacks an image's tarball(s) into a pool's image volume, within `images.max_unpacked_size`
/// (`configured`, `None`: the default) and the pool's free space. The pool's `create_image`
/// removes its staging volume when this fails.
fn fill_pool(
    pool: &dyn StorageDriver,
    configured: Option<u64>,
    fp: &str,
    unified: &Path,
    rootfs: Option<&Path>,
) -> Result<unpack::ImageMetadata, ImageError> {
    let space = pool
        .space()
        .map_err(|e| ImageError::Failed(format!("checking space before unpacking: {e}")))?;
    let budget = UnpackBudget::new(configured, pool.pool_name(), space);
    if budget.bytes == 0 {
        // Not even an empty image fits: say so before making a volume.
        return Err(budget.exceeded());
    }
    let limits = budget.limits();
    let mut outcome: Option<Result<unpack::ImageMetadata, ImageError>> = None;
    let r = pool.create_image(fp, &mut |dir: &Path| {
        let explain = |e| budget.explain(pool.pool_name(), e);
        let result = (|| -> Result<unpack::ImageMetadata, ImageError> {
            match rootfs {
                None => Ok(unpack::unpack_unified(open(unified)?, dir, &limits)
                    .map_err(explain)?
                    .metadata),
                Some(rootfs) => {
                    let m =
                        unpack::unpack_metadata(open(unified)?, dir, &limits).map_err(explain)?;
                    // One budget for the image, not one per tarball.
                    let left = UnpackLimits {
                        max_bytes: limits.max_bytes.saturating_sub(m.bytes),
                        max_entries: limits.max_entries.saturating_sub(m.entries),
                    };
                    unpack::unpack_rootfs(open(rootfs)?, &dir.join("rootfs"), &left)
                        .map_err(explain)?;
                    Ok(m.metadata)
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
    let meta = match configured_max_unpacked_size(d).and_then(|max| {
        fill_pool(
            pool.as_ref(),
            max,
            &up.fingerprint,
            &up.file,
            up.rootfs.as_deref(),
        )
    }) {
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
        configured_max_unpacked_size(d)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn space(total: u64, used: u64) -> Space {
        Space {
            used,
            total,
            inodes_used: 0,
            inodes_total: 0,
        }
    }

    #[test]
    fn the_reserve_is_five_percent_and_at_least_64_mib() {
        assert_eq!(pool_reserve(100 * GIB), 5 * GIB);
        assert_eq!(pool_reserve(GIB), 64 * MIB);
        assert_eq!(pool_reserve(0), 64 * MIB);
    }

    #[test]
    fn a_roomy_pool_leaves_the_configured_limit() {
        let b = UnpackBudget::new(Some(256 * MIB), "default", space(100 * GIB, 10 * GIB));
        assert_eq!(b.bytes, 256 * MIB);
        assert_eq!(b.source, BudgetSource::Config { configured: true });
        assert_eq!(
            b.exceeded().to_string(),
            "Image unpacks to more than images.max_unpacked_size (256.00MiB)"
        );
        let b = UnpackBudget::new(None, "default", space(100 * GIB, 10 * GIB));
        assert_eq!(b.bytes, 16 * GIB);
        assert_eq!(b.limits().max_bytes, 16 * GIB);
        assert_eq!(b.limits().max_entries, UnpackLimits::default().max_entries);
        assert_eq!(
            b.exceeded().to_string(),
            "Image unpacks to more than images.max_unpacked_size (16.00GiB, the default)"
        );
    }

    #[test]
    fn a_limit_above_the_default_is_honoured() {
        let b = UnpackBudget::new(Some(40 * GIB), "default", space(100 * GIB, 0));
        assert_eq!(b.bytes, 40 * GIB);
    }

    #[test]
    fn a_nearly_full_pool_lowers_the_limit_to_its_free_space_less_the_reserve() {
        // 100 GiB pool, 7 GiB free: 5 GiB is kept, 2 GiB may be unpacked.
        let b = UnpackBudget::new(None, "default", space(100 * GIB, 93 * GIB));
        assert_eq!(b.bytes, 2 * GIB);
        assert_eq!(
            b.source,
            BudgetSource::Pool {
                pool: "default".into(),
                free: 7 * GIB,
                reserve: 5 * GIB,
            }
        );
        assert_eq!(
            b.exceeded().to_string(),
            "Image would not fit in storage pool \"default\": it unpacks to more than 2.00GiB \
             (7.00GiB free, 5.00GiB kept in reserve)"
        );
        // The smaller bound wins either way.
        let b = UnpackBudget::new(Some(GIB), "default", space(100 * GIB, 93 * GIB));
        assert_eq!(b.bytes, GIB);
        assert_eq!(b.source, BudgetSource::Config { configured: true });
    }

    #[test]
    fn a_pool_with_less_free_than_the_reserve_gives_nothing() {
        let b = UnpackBudget::new(None, "p", space(GIB, GIB - 10 * MIB));
        assert_eq!(b.bytes, 0);
        assert!(matches!(b.exceeded(), ImageError::WouldNotFit { .. }));
        // A statvfs saying used > total (it happens on btrfs) must not wrap around.
        let b = UnpackBudget::new(None, "p", space(GIB, 2 * GIB));
        assert_eq!(b.bytes, 0);
    }

    #[test]
    fn unpacker_errors_are_put_in_the_budgets_words() {
        let b = UnpackBudget::new(Some(MIB), "default", space(100 * GIB, 0));
        let over = UnpackError::TooLarge {
            what: unpack::UNPACKED_BYTES,
            limit: MIB,
        };
        assert!(matches!(
            b.explain("default", over),
            ImageError::OverLimit { limit: MIB, .. }
        ));
        let entries = UnpackError::TooLarge {
            what: "the number of entries",
            limit: 10,
        };
        assert!(matches!(
            b.explain("default", entries),
            ImageError::Invalid(_)
        ));
        let full = UnpackError::Entry {
            path: "rootfs/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(
            b.explain("default", full).to_string(),
            "Image would not fit in storage pool \"default\": the pool ran out of space while unpacking"
        );
    }

    #[test]
    fn max_unpacked_size_values() {
        assert_eq!(parse_max_unpacked_size("").unwrap(), None);
        assert_eq!(parse_max_unpacked_size("10GiB").unwrap(), Some(10 * GIB));
        assert_eq!(parse_max_unpacked_size("1000").unwrap(), Some(1000));
        let e = parse_max_unpacked_size("0").unwrap_err();
        assert!(e.contains("must be more than 0"), "{e}");
        let e = parse_max_unpacked_size("big").unwrap_err();
        assert!(
            e.starts_with("Invalid value for images.max_unpacked_size: \"big\""),
            "{e}"
        );
    }
}
