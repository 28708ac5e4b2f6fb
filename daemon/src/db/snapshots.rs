//! Instance snapshots: their commands and queries.

use rusqlite::{params, Transaction};

use super::records::*;
use super::sql::{exec, json, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreateSnapshot(s) => {
            exec(
                tx,
                "INSERT INTO snapshots (instance, name, data) VALUES (?1, ?2, ?3)",
                params![s.instance, s.name, json(s)?],
            )?;
        }
        UpdateSnapshot(s) => one(
            "snapshot",
            &s.name,
            exec(
                tx,
                "UPDATE snapshots SET data = ?3 WHERE instance = ?1 AND name = ?2",
                params![s.instance, s.name, json(s)?],
            )?,
        )?,
        RenameSnapshot { instance, from, to } => {
            let mut s = snapshots_of(tx, instance)?
                .into_iter()
                .find(|s| &s.name == from)
                .ok_or_else(|| DbError::NotFound(format!("snapshot {instance}/{from}")))?;
            s.name = to.clone();
            exec(
                tx,
                "UPDATE snapshots SET name = ?3, data = ?4 WHERE instance = ?1 AND name = ?2",
                params![instance, from, to, json(&s)?],
            )?;
        }
        DeleteSnapshot { instance, name } => one(
            "snapshot",
            name,
            exec(
                tx,
                "DELETE FROM snapshots WHERE instance = ?1 AND name = ?2",
                params![instance, name],
            )?,
        )?,
        other => return Err(super::sql::misrouted("snapshot", other)),
    }
    Ok(())
}

pub(super) fn snapshots_of(
    tx: &Transaction<'_>,
    instance: &str,
) -> Result<Vec<SnapshotRecord>, DbError> {
    let mut st = tx.prepare("SELECT data FROM snapshots WHERE instance = ?1")?;
    let rows = st.query_map(params![instance], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(
            serde_json::from_str(&row?).map_err(|e| DbError::Decode(format!("snapshot: {e}")))?,
        );
    }
    Ok(out)
}

impl Db {
    pub fn snapshots(&self, instance: &str) -> Result<Vec<SnapshotRecord>, DbError> {
        self.list(
            "SELECT data FROM snapshots WHERE instance = ?1 ORDER BY rowid",
            &[instance],
        )
    }
    pub fn snapshot(&self, instance: &str, name: &str) -> Result<Option<SnapshotRecord>, DbError> {
        self.get(
            "SELECT data FROM snapshots WHERE instance = ?1 AND name = ?2",
            &[instance, name],
        )
    }
}
