//! Instances: their commands and queries.

use rusqlite::{params, Transaction};

use super::records::*;
use super::snapshots::snapshots_of;
use super::sql::{exec, json, load, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreateInstance(i) => {
            exec(
                tx,
                "INSERT INTO instances (name, data) VALUES (?1, ?2)",
                params![i.name, json(i)?],
            )?;
        }
        UpdateInstance(i) => one(
            "instance",
            &i.name,
            exec(
                tx,
                "UPDATE instances SET data = ?2 WHERE name = ?1",
                params![i.name, json(i)?],
            )?,
        )?,
        RenameInstance { from, to } => {
            let mut i: InstanceRecord = load(tx, "instances", "name", from)?;
            i.name = to.clone();
            exec(
                tx,
                "UPDATE instances SET name = ?2, data = ?3 WHERE name = ?1",
                params![from, to, json(&i)?],
            )?;
            for mut s in snapshots_of(tx, from)? {
                s.instance = to.clone();
                exec(tx,
                    "UPDATE snapshots SET instance = ?2, data = ?4 WHERE instance = ?1 AND name = ?3",
                    params![from, to, s.name, json(&s)?],
                )?;
            }
        }
        DeleteInstance { name } => {
            exec(
                tx,
                "DELETE FROM snapshots WHERE instance = ?1",
                params![name],
            )?;
            one(
                "instance",
                name,
                exec(tx, "DELETE FROM instances WHERE name = ?1", params![name])?,
            )?
        }
        SetInstanceVolatile { name, key, value } => {
            let mut i: InstanceRecord = load(tx, "instances", "name", name)?;
            match value {
                Some(v) => i.config.insert(key.clone(), v.clone()),
                None => i.config.remove(key),
            };
            exec(
                tx,
                "UPDATE instances SET data = ?2 WHERE name = ?1",
                params![name, json(&i)?],
            )?;
        }
        other => return Err(super::sql::misrouted("instance", other)),
    }
    Ok(())
}

impl Db {
    pub fn instance(&self, name: &str) -> Result<Option<InstanceRecord>, DbError> {
        self.get("SELECT data FROM instances WHERE name = ?1", &[name])
    }
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, DbError> {
        self.list("SELECT data FROM instances ORDER BY name", &[])
    }
}
