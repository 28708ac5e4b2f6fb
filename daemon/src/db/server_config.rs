//! Server configuration (the replicated keys; node-local ones live in `local.json`): its
//! commands and queries.

use rusqlite::{params, Transaction};

use super::records::ConfigMap;
use super::sql::exec;
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        SetServerConfig { key, value } => {
            match value {
                Some(v) => exec(
                    tx,
                    "INSERT INTO config (key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                )?,
                None => exec(tx, "DELETE FROM config WHERE key = ?1", params![key])?,
            };
        }
        other => return Err(super::sql::misrouted("server config", other)),
    }
    Ok(())
}

impl Db {
    pub fn server_config(&self) -> Result<ConfigMap, DbError> {
        let conn = self.lock();
        let mut st = conn.prepare("SELECT key, value FROM config")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
