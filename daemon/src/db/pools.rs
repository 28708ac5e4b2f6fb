//! Storage pools and their custom volumes: commands and queries.

use rusqlite::{params, Transaction};

use super::records::{PoolRecord, VolumeRecord};
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
