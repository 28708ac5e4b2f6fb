//! Storage pools and their custom volumes: commands and queries.

use rusqlite::{params, Transaction};

use rusqlite::OptionalExtension;

use super::records::{PoolRecord, PoolStatus, VolumeRecord};
use super::sql::{exec, json, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreatePool(p) => {
            exec(
                tx,
                "INSERT INTO storage_pools (name, data) VALUES (?1, ?2)",
                params![p.name, json(p)?],
            )?;
        }
        UpdatePool(p) => one(
            "storage pool",
            &p.name,
            exec(
                tx,
                "UPDATE storage_pools SET data = ?2 WHERE name = ?1",
                params![p.name, json(p)?],
            )?,
        )?,
        SetPoolShare {
            pool,
            driver,
            member,
            share,
        } => {
            let found: Option<String> = tx
                .prepare_cached("SELECT data FROM storage_pools WHERE name = ?1")?
                .query_row(params![pool], |r| r.get(0))
                .optional()?;
            let mut rec = match found {
                Some(data) => serde_json::from_str::<PoolRecord>(&data)
                    .map_err(|e| DbError::Encode(format!("storage pool {pool:?}: {e}")))?,
                None => PoolRecord {
                    name: pool.clone(),
                    driver: driver.clone(),
                    status: PoolStatus::Pending,
                    ..PoolRecord::default()
                },
            };
            // Checked again here: two members defining the same pool at once are ordered by
            // the log, and the second one's driver must still match.
            if rec.driver != *driver {
                return Err(DbError::Exists(format!(
                    "storage pool {pool:?} with driver {:?}",
                    rec.driver
                )));
            }
            rec.members.insert(member.clone(), share.clone());
            exec(
                tx,
                "INSERT INTO storage_pools (name, data) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                params![pool, json(&rec)?],
            )?;
        }
        CreateVolume(v) => {
            exec(
                tx,
                "INSERT INTO storage_volumes (pool, name, data) VALUES (?1, ?2, ?3)",
                params![v.pool, v.name, json(v)?],
            )?;
        }
        UpdateVolume(v) => one(
            "storage volume",
            &v.name,
            exec(
                tx,
                "UPDATE storage_volumes SET data = ?3 WHERE pool = ?1 AND name = ?2",
                params![v.pool, v.name, json(v)?],
            )?,
        )?,
        DeleteVolume { pool, name } => one(
            "storage volume",
            name,
            exec(
                tx,
                "DELETE FROM storage_volumes WHERE pool = ?1 AND name = ?2",
                params![pool, name],
            )?,
        )?,
        DeletePool { name } => one(
            "storage pool",
            name,
            exec(
                tx,
                "DELETE FROM storage_pools WHERE name = ?1",
                params![name],
            )?,
        )?,
        other => return Err(super::sql::misrouted("storage pool", other)),
    }
    Ok(())
}

impl Db {
    pub fn pool(&self, name: &str) -> Result<Option<PoolRecord>, DbError> {
        self.get("SELECT data FROM storage_pools WHERE name = ?1", &[name])
    }
    pub fn pools(&self) -> Result<Vec<PoolRecord>, DbError> {
        self.list("SELECT data FROM storage_pools ORDER BY name", &[])
    }
    pub fn volume(&self, pool: &str, name: &str) -> Result<Option<VolumeRecord>, DbError> {
        self.get(
            "SELECT data FROM storage_volumes WHERE pool = ?1 AND name = ?2",
            &[pool, name],
        )
    }
    pub fn volumes(&self, pool: &str) -> Result<Vec<VolumeRecord>, DbError> {
        self.list(
            "SELECT data FROM storage_volumes WHERE pool = ?1 ORDER BY name",
            &[pool],
        )
    }
}
