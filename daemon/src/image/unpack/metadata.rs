//! `metadata.yaml`: what every Incus image says about itself.
//!
//! It is written by image builders (distrobuilder, `incus publish`, the test
//! images built here), so parsing is lenient where real images vary (unknown
//! keys, numeric property values such as `release: 22.04`) and strict only
//! where the daemon depends on a value (an architecture must be named).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use serde::Deserialize;

use super::UnpackError;

/// The largest `metadata.yaml` accepted. Real ones are a few KiB; the cap keeps
/// a hostile image from making the daemon parse a gigabyte of YAML.
pub const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;

/// What an image says about itself in `metadata.yaml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMetadata {
    /// Architecture name as Incus spells it (`x86_64`, `aarch64`, ...).
    pub architecture: String,
    /// Build time, seconds since the epoch (0 when the image does not say).
    pub creation_date: i64,
    /// When the image stops being current, seconds since the epoch.
    pub expiry_date: Option<i64>,
    /// Free-form properties (`os`, `release`, `description`, ...), all as text.
    pub properties: BTreeMap<String, String>,
    /// Template rules keyed by the path inside the container, kept as parsed:
    /// the template engine interprets them, not the unpacker.
    pub templates: BTreeMap<String, serde_yaml::Value>,
}

/// Why a `metadata.yaml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("parsing metadata.yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("metadata.yaml names no architecture")]
    NoArchitecture,
    #[error("metadata.yaml property {key:?} is not a scalar value")]
    PropertyNotScalar { key: String },
    #[error("metadata.yaml is {size} bytes, more than the {max} bytes allowed")]
    TooLarge { size: u64, max: u64 },
}

/// The on-disk shape; unknown keys are ignored (serde's default) because image
/// builders add their own.
#[derive(Deserialize)]
struct RawMetadata {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    creation_date: i64,
    #[serde(default)]
    expiry_date: Option<i64>,
    #[serde(default)]
    properties: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    templates: Option<BTreeMap<String, serde_yaml::Value>>,
}

impl ImageMetadata {
    /// Parses the bytes of a `metadata.yaml`.
    pub fn from_yaml(bytes: &[u8]) -> Result<Self, MetadataError> {
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge {
                size: bytes.len() as u64,
                max: MAX_METADATA_BYTES,
            });
        }
        let raw: RawMetadata = serde_yaml::from_slice(bytes)?;
        if raw.architecture.trim().is_empty() {
            return Err(MetadataError::NoArchitecture);
        }
        let mut properties = BTreeMap::new();
        for (key, value) in raw.properties.unwrap_or_default() {
            let text = scalar_to_string(&value)
                .ok_or_else(|| MetadataError::PropertyNotScalar { key: key.clone() })?;
            properties.insert(key, text);
        }
        Ok(ImageMetadata {
            architecture: raw.architecture,
            creation_date: raw.creation_date,
            // Incus writes 0 for "never expires"; both mean the same here.
            expiry_date: raw.expiry_date.filter(|date| *date != 0),
            properties,
            templates: raw.templates.unwrap_or_default(),
        })
    }
}

/// Go's YAML decoder turns any scalar into a string when the target is a
/// string map, so `release: 22.04` is valid there; do the same.
fn scalar_to_string(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(text) => Some(text.clone()),
        serde_yaml::Value::Number(number) => Some(number.to_string()),
        serde_yaml::Value::Bool(flag) => Some(flag.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Reads and parses `metadata.yaml` at `path`, refusing a symlink there.
pub fn read_metadata(path: &Path) -> Result<ImageMetadata, UnpackError> {
    let read_err = |source| UnpackError::MetadataRead {
        path: path.to_path_buf(),
        source,
    };
    let fd = openat(
        None,
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| read_err(errno.into()))?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    // Read one byte past the cap so an oversized file is reported as such.
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    ImageMetadata::from_yaml(&bytes).map_err(|source| UnpackError::Metadata {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_distrobuilder_style_file_parses() {
        let yaml = br#"
architecture: x86_64
creation_date: 1700000000
expiry_date: 1800000000
properties:
  os: Debian
  release: trixie
  version: 13
  description: Debian trixie amd64
  variant: default
templates:
  /etc/hostname:
    when: [create, copy]
    template: hostname.tpl
    create_only: false
some_builder_key: ignored
"#;
        let meta = ImageMetadata::from_yaml(yaml).unwrap();
        assert_eq!(meta.architecture, "x86_64");
        assert_eq!(meta.creation_date, 1_700_000_000);
        assert_eq!(meta.expiry_date, Some(1_800_000_000));
        assert_eq!(meta.properties["os"], "Debian");
        assert_eq!(meta.properties["version"], "13");
        let rule = &meta.templates["/etc/hostname"];
        assert_eq!(rule["template"].as_str(), Some("hostname.tpl"));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let meta = ImageMetadata::from_yaml(b"architecture: aarch64\n").unwrap();
        assert_eq!(meta.creation_date, 0);
        assert_eq!(meta.expiry_date, None);
        assert!(meta.properties.is_empty());
        assert!(meta.templates.is_empty());
    }

    #[test]
    fn zero_expiry_means_none() {
        let meta = ImageMetadata::from_yaml(b"architecture: x86_64\nexpiry_date: 0\n").unwrap();
        assert_eq!(meta.expiry_date, None);
    }

    #[test]
    fn numeric_and_null_properties_become_text() {
        let meta = ImageMetadata::from_yaml(
            b"architecture: x86_64\nproperties:\n  release: 22.04\n  serial:\n  lts: true\n",
        )
        .unwrap();
        assert_eq!(meta.properties["release"], "22.04");
        assert_eq!(meta.properties["serial"], "");
        assert_eq!(meta.properties["lts"], "true");
    }

    #[test]
    fn missing_architecture_is_refused() {
        let err = ImageMetadata::from_yaml(b"creation_date: 1\n").unwrap_err();
        assert!(matches!(err, MetadataError::NoArchitecture), "{err}");
    }

    #[test]
    fn nested_property_is_refused() {
        let err = ImageMetadata::from_yaml(b"architecture: x86_64\nproperties:\n  os: [a, b]\n")
            .unwrap_err();
        assert!(err.to_string().contains("\"os\""), "{err}");
    }

    #[test]
    fn garbage_is_a_yaml_error() {
        let err = ImageMetadata::from_yaml(b"architecture: [unclosed\n").unwrap_err();
        assert!(matches!(err, MetadataError::Yaml(_)), "{err}");
        let err = ImageMetadata::from_yaml(b"- just\n- a list\n").unwrap_err();
        assert!(matches!(err, MetadataError::Yaml(_)), "{err}");
    }

    #[test]
    fn oversized_file_is_refused_before_parsing() {
        let big = vec![b' '; MAX_METADATA_BYTES as usize + 1];
        let err = ImageMetadata::from_yaml(&big).unwrap_err();
        assert!(matches!(err, MetadataError::TooLarge { .. }), "{err}");
    }
}
