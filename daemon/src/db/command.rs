//! Typed state changes. Every write to the database is one of these, applied by
//! [`apply`] inside one transaction. `apply` is deterministic: it reads no clock, draws no
//! random numbers and does no I/O but its SQLite handle, so the same sequence of commands
//! gives the same database on every member once the commands travel through Raft.

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

use super::records::*;
use super::sql::{all, exec, json, load, one};
use super::DbError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    SetServerConfig {
        key: String,
        value: Option<String>,
    },

    CreateImage(ImageRecord),
    UpdateImage(ImageRecord),
    DeleteImage {
        fingerprint: String,
    },
    CreateAlias(AliasRecord),
    UpdateAlias(AliasRecord),
    RenameAlias {
        from: String,
        to: String,
    },
    DeleteAlias {
        name: String,
    },

    CreateProfile(ProfileRecord),
    UpdateProfile(ProfileRecord),
    RenameProfile {
        from: String,
        to: String,
    },
    DeleteProfile {
        name: String,
    },

    CreateInstance(InstanceRecord),
    UpdateInstance(InstanceRecord),
    RenameInstance {
        from: String,
        to: String,
    },
    DeleteInstance {
        name: String,
    },
    /// Sets (or with `None` removes) one `volatile.*` key without touching the rest.
    SetInstanceVolatile {
        name: String,
        key: String,
        value: Option<String>,
    },

    CreateSnapshot(SnapshotRecord),
    UpdateSnapshot(SnapshotRecord),
    RenameSnapshot {
        instance: String,
        from: String,
        to: String,
    },
    DeleteSnapshot {
        instance: String,
        name: String,
    },

    CreatePool(PoolRecord),
    UpdatePool(PoolRecord),
    DeletePool {
        name: String,
    },

    AddCertificate(CertificateRecord),
    UpdateCertificate(CertificateRecord),
    DeleteCertificate {
        fingerprint: String,
    },

    CreateToken(TokenRecord),
    DeleteToken {
        secret: String,
    },

    /// Adds a member; refused if its id was ever given out or its name is taken.
    AddMember(MemberRecord),
    UpdateMember(MemberRecord),
    RenameMember {
        from: String,
        to: String,
    },
    RemoveMember {
        name: String,
    },
    CreateJoinToken(JoinTokenRecord),
    DeleteJoinToken {
        name: String,
    },
}

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

        CreateSnapshot(s) => {
            exec(
                tx,
                "INSERT INTO snapshots (instance, name, data) VALUES (?1, ?2, ?3)",
                params![s.instance, s.name, json(s)?],
            )?;
        }
        UpdateSnapshot(s) => one(
            "snapshot",
            &s.name,
            exec(
                tx,
                "UPDATE snapshots SET data = ?3 WHERE instance = ?1 AND name = ?2",
                params![s.instance, s.name, json(s)?],
            )?,
        )?,
        RenameSnapshot { instance, from, to } => {
            let mut s = snapshots_of(tx, instance)?
                .into_iter()
                .find(|s| &s.name == from)
                .ok_or_else(|| DbError::NotFound(format!("snapshot {instance}/{from}")))?;
            s.name = to.clone();
            exec(
                tx,
                "UPDATE snapshots SET name = ?3, data = ?4 WHERE instance = ?1 AND name = ?2",
                params![instance, from, to, json(&s)?],
            )?;
        }
        DeleteSnapshot { instance, name } => one(
            "snapshot",
            name,
            exec(
                tx,
                "DELETE FROM snapshots WHERE instance = ?1 AND name = ?2",
                params![instance, name],
            )?,
        )?,

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
        DeletePool { name } => one(
            "storage pool",
            name,
            exec(
                tx,
                "DELETE FROM storage_pools WHERE name = ?1",
                params![name],
            )?,
        )?,

        AddCertificate(c) => {
            exec(
                tx,
                "INSERT INTO certificates (fingerprint, data) VALUES (?1, ?2)",
                params![c.fingerprint, json(c)?],
            )?;
        }
        UpdateCertificate(c) => one(
            "certificate",
            &c.fingerprint,
            exec(
                tx,
                "UPDATE certificates SET data = ?2 WHERE fingerprint = ?1",
                params![c.fingerprint, json(c)?],
            )?,
        )?,
        DeleteCertificate { fingerprint } => one(
            "certificate",
            fingerprint,
            exec(
                tx,
                "DELETE FROM certificates WHERE fingerprint = ?1",
                params![fingerprint],
            )?,
        )?,

        CreateToken(t) => {
            exec(
                tx,
                "INSERT INTO tokens (secret, data) VALUES (?1, ?2)",
                params![t.secret, json(t)?],
            )?;
        }
        DeleteToken { secret } => one(
            "token",
            "(secret)",
            exec(tx, "DELETE FROM tokens WHERE secret = ?1", params![secret])?,
        )?,

        AddMember(_) | UpdateMember(_) | RenameMember { .. } | RemoveMember { .. } => {
            super::members::apply(tx, cmd)?
        }
        CreateJoinToken(_) | DeleteJoinToken { .. } => super::members::apply(tx, cmd)?,
    }
    Ok(())
}

fn snapshots_of(tx: &Transaction<'_>, instance: &str) -> Result<Vec<SnapshotRecord>, DbError> {
    let mut st = tx.prepare("SELECT data FROM snapshots WHERE instance = ?1")?;
    let rows = st.query_map(params![instance], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(
            serde_json::from_str(&row?).map_err(|e| DbError::Decode(format!("snapshot: {e}")))?,
        );
    }
    Ok(out)
}
