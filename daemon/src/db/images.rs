//! Images and their aliases: their commands and queries.

use rusqlite::{params, Transaction};

use super::sql::{exec, json, one};
use super::{Command, DbError};

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
