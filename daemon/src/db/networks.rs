//! Managed networks: their commands and queries.

use rusqlite::{params, Transaction};

use super::records::NetworkRecord;
use super::sql::{exec, json, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreateNetwork(p) => {
            exec(
                tx,
                "INSERT INTO networks (name, data) VALUES (?1, ?2)",
                params![p.name, json(p)?],
            )?;
        }
        UpdateNetwork(p) => one(
            "network",
            &p.name,
            exec(
                tx,
                "UPDATE networks SET data = ?2 WHERE name = ?1",
                params![p.name, json(p)?],
            )?,
        )?,
        DeleteNetwork { name } => one(
            "network",
            name,
            exec(tx, "DELETE FROM networks WHERE name = ?1", params![name])?,
        )?,
        other => return Err(super::sql::misrouted("network", other)),
    }
    Ok(())
}

impl Db {
    pub fn network(&self, name: &str) -> Result<Option<NetworkRecord>, DbError> {
        self.get("SELECT data FROM networks WHERE name = ?1", &[name])
    }
    pub fn networks(&self) -> Result<Vec<NetworkRecord>, DbError> {
        self.list("SELECT data FROM networks ORDER BY name", &[])
    }
}
