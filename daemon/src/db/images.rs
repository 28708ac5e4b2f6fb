//! Images and their aliases: their commands and queries.

use rusqlite::{params, OptionalExtension, Transaction};

use super::records::{AliasRecord, ImageRecord};
use super::sql::{exec, json, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreateImage(r) => {
            exec(
                tx,
                "INSERT INTO images (fingerprint, data) VALUES (?1, ?2)",
                params![r.fingerprint, json(r)?],
            )?;
        }
        UpdateImage(r) => one(
            "image",
            &r.fingerprint,
            exec(
                tx,
                "UPDATE images SET data = ?2 WHERE fingerprint = ?1",
                params![r.fingerprint, json(r)?],
            )?,
        )?,
        DeleteImage { fingerprint } => {
            exec(
                tx,
                "DELETE FROM image_aliases WHERE target = ?1",
                params![fingerprint],
            )?;
            one(
                "image",
                fingerprint,
                exec(
                    tx,
                    "DELETE FROM images WHERE fingerprint = ?1",
                    params![fingerprint],
                )?,
            )?
        }
        CreateAlias(a) => {
            exec(
                tx,
                "INSERT INTO image_aliases (name, target, description) VALUES (?1, ?2, ?3)",
                params![a.name, a.target, a.description],
            )?;
        }
        UpdateAlias(a) => one(
            "image alias",
            &a.name,
            exec(
                tx,
                "UPDATE image_aliases SET target = ?2, description = ?3 WHERE name = ?1",
                params![a.name, a.target, a.description],
            )?,
        )?,
        RenameAlias { from, to } => one(
            "image alias",
            from,
            exec(
                tx,
                "UPDATE image_aliases SET name = ?2 WHERE name = ?1",
                params![from, to],
            )?,
        )?,
        DeleteAlias { name } => one(
            "image alias",
            name,
            exec(
                tx,
                "DELETE FROM image_aliases WHERE name = ?1",
                params![name],
            )?,
        )?,
        other => return Err(super::sql::misrouted("image", other)),
    }
    Ok(())
}

impl Db {
    pub fn image(&self, fingerprint: &str) -> Result<Option<ImageRecord>, DbError> {
        self.get(
            "SELECT data FROM images WHERE fingerprint = ?1",
            &[fingerprint],
        )
    }
    pub fn images(&self) -> Result<Vec<ImageRecord>, DbError> {
        self.list("SELECT data FROM images ORDER BY fingerprint", &[])
    }
    /// Finds images whose fingerprint starts with `prefix` (Incus accepts unique prefixes).
    pub fn images_by_prefix(&self, prefix: &str) -> Result<Vec<ImageRecord>, DbError> {
        let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
        self.list(
            "SELECT data FROM images WHERE fingerprint LIKE ?1",
            &[&pattern],
        )
    }
    pub fn alias(&self, name: &str) -> Result<Option<AliasRecord>, DbError> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT name, target, description FROM image_aliases WHERE name = ?1",
                params![name],
                |r| {
                    Ok(AliasRecord {
                        name: r.get(0)?,
                        target: r.get(1)?,
                        description: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }
    pub fn aliases(&self) -> Result<Vec<AliasRecord>, DbError> {
        let conn = self.lock();
        let mut st =
            conn.prepare("SELECT name, target, description FROM image_aliases ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok(AliasRecord {
                name: r.get(0)?,
                target: r.get(1)?,
                description: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
