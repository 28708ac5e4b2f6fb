//! Node-local server settings: the keys that describe this member and not the cluster
//! (`core.https_address`, `cluster.https_address`), as Incus keeps them in its local
//! database. They live in `<state>/local.json`, outside the (possibly replicated) database:
//! replicating a member's listen address to the others would make them all bind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::daemon::StartError;
use crate::db::Db;

/// The keys that are per member. `core.https_tls12` describes this member's listener, so
/// it is set per member like the address it listens on.
pub const LOCAL_KEYS: &[&str] = &[
    "core.https_address",
    "cluster.https_address",
    "core.https_tls12",
];

pub fn is_local_key(key: &str) -> bool {
    LOCAL_KEYS.contains(&key)
}

pub struct LocalConfig {
    path: PathBuf,
    values: RwLock<BTreeMap<String, String>>,
}

impl LocalConfig {
    /// Loads the file, or creates it from the node-local keys a database of an older
    /// cairnd still holds (copying them out of the database).
    ///
    /// The rows stay in the database and every reader ignores them (`is_local_key`): this
    /// runs before cluster membership resumes, and deleting them here would change a
    /// cluster member's replicated database outside the Raft log. Replaying the deletes
    /// through `Daemon::write` later would need a queue kept across restarts for rows that
    /// do no harm, so they are left in place.
    pub fn open(path: &Path, db: &Db) -> Result<LocalConfig, StartError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            StartError::Local(format!("{what} {}: {e}", path.display()))
        };
        let values = match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| err("parsing", &e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let config = db.server_config()?;
                let moved: BTreeMap<String, String> = config
                    .into_iter()
                    .filter(|(k, _)| is_local_key(k))
                    .collect();
                let c = LocalConfig {
                    path: path.to_path_buf(),
                    values: RwLock::new(moved.clone()),
                };
                c.save(&moved).map_err(|e| err("writing", &e))?;
                return Ok(c);
            }
            Err(e) => return Err(err("reading", &e)),
        };
        Ok(LocalConfig {
            path: path.to_path_buf(),
            values: RwLock::new(values),
        })
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.values
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn all(&self) -> BTreeMap<String, String> {
        self.values
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (or with `None` removes) a key, durably.
    pub fn set(&self, key: &str, value: Option<&str>) -> std::io::Result<()> {
        let mut values = self.values.write().unwrap_or_else(|p| p.into_inner());
        let mut next = values.clone();
        match value {
            Some(v) if !v.is_empty() => next.insert(key.to_string(), v.to_string()),
            _ => next.remove(key),
        };
        self.save(&next)?;
        *values = next;
        Ok(())
    }

    fn save(&self, values: &BTreeMap<String, String>) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(values).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // A temporary left by a crash is replaced, so the new file gets its own mode.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::Command;

    #[test]
    fn copies_local_keys_out_of_the_database_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_in_memory().unwrap();
        db.apply_unreplicated(&[
            Command::SetServerConfig {
                key: "core.https_address".into(),
                value: Some("127.0.0.1:8443".into()),
            },
            Command::SetServerConfig {
                key: "user.x".into(),
                value: Some("y".into()),
            },
        ])
        .unwrap();
        let path = dir.path().join("local.json");
        let c = LocalConfig::open(&path, &db).unwrap();
        assert_eq!(
            c.get("core.https_address").as_deref(),
            Some("127.0.0.1:8443")
        );
        // The database is not written (it may be a cluster member's replica).
        let left = db.server_config().unwrap();
        assert!(left.contains_key("core.https_address"));
        assert_eq!(left.get("user.x").map(String::as_str), Some("y"));
        c.set("cluster.https_address", Some("127.0.0.1:8443"))
            .unwrap();
        c.set("core.https_address", None).unwrap();
        let again = LocalConfig::open(&path, &db).unwrap();
        assert_eq!(again.get("core.https_address"), None);
        assert_eq!(
            again.get("cluster.https_address").as_deref(),
            Some("127.0.0.1:8443")
        );
    }
}
