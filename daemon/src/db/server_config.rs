//! Server configuration (the replicated keys; node-local ones live in `local.json`): its
//! commands and queries.

use rusqlite::{params, Transaction};

use super::sql::exec;
use super::{Command, DbError};

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
