//! Managed networks: their commands and queries.

use rusqlite::{params, OptionalExtension, Transaction};

use super::records::{NetworkRecord, NetworkStatus};
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
        DefineNetworkMember {
            network,
            kind,
            member,
        } => {
            let found: Option<String> = tx
                .prepare_cached("SELECT data FROM networks WHERE name = ?1")?
                .query_row(params![network], |r| r.get(0))
                .optional()?;
            let mut rec = match found {
                Some(data) => serde_json::from_str::<NetworkRecord>(&data)
                    .map_err(|e| DbError::Encode(format!("network {network:?}: {e}")))?,
                None => NetworkRecord {
                    name: network.clone(),
                    kind: kind.clone(),
                    status: NetworkStatus::Pending,
                    ..NetworkRecord::default()
                },
            };
            // Checked again here: two definitions at once are ordered by the log.
            if rec.kind != *kind || rec.status == NetworkStatus::Created {
                return Err(DbError::Exists(format!(
                    "network {network:?} ({}, {})",
                    rec.kind,
                    rec.status.as_str()
                )));
            }
            rec.members.insert(member.clone(), false);
            exec(
                tx,
                "INSERT INTO networks (name, data) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET data = excluded.data",
                params![network, json(&rec)?],
            )?;
        }
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
