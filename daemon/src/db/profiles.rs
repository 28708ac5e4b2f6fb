//! Profiles: their commands and queries.

use rusqlite::{params, Transaction};

use super::records::*;
use super::sql::{all, exec, json, load, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
        CreateProfile(p) => {
            exec(
                tx,
                "INSERT INTO profiles (name, data) VALUES (?1, ?2)",
                params![p.name, json(p)?],
            )?;
        }
        UpdateProfile(p) => one(
            "profile",
            &p.name,
            exec(
                tx,
                "UPDATE profiles SET data = ?2 WHERE name = ?1",
                params![p.name, json(p)?],
            )?,
        )?,
        RenameProfile { from, to } => {
            let mut p: ProfileRecord = load(tx, "profiles", "name", from)?;
            p.name = to.clone();
            one(
                "profile",
                from,
                exec(
                    tx,
                    "UPDATE profiles SET name = ?2, data = ?3 WHERE name = ?1",
                    params![from, to, json(&p)?],
                )?,
            )?;
            // Instances name their profiles: keep those references pointing at the profile.
            for mut inst in all::<InstanceRecord>(tx, "instances")? {
                if inst.profiles.iter().any(|n| n == from) {
                    for n in inst.profiles.iter_mut().filter(|n| *n == from) {
                        *n = to.clone();
                    }
                    exec(
                        tx,
                        "UPDATE instances SET data = ?2 WHERE name = ?1",
                        params![inst.name, json(&inst)?],
                    )?;
                }
            }
        }
        DeleteProfile { name } => one(
            "profile",
            name,
            exec(tx, "DELETE FROM profiles WHERE name = ?1", params![name])?,
        )?,
        other => return Err(super::sql::misrouted("profile", other)),
    }
    Ok(())
}

impl Db {
    pub fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, DbError> {
        self.get("SELECT data FROM profiles WHERE name = ?1", &[name])
    }
    pub fn profiles(&self) -> Result<Vec<ProfileRecord>, DbError> {
        self.list("SELECT data FROM profiles ORDER BY name", &[])
    }
}
