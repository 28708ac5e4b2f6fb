//! Cluster members and join tokens: their commands and queries.

use rusqlite::{params, OptionalExtension, Transaction};

use super::records::{JoinTokenRecord, MemberRecord};
use super::sql::{json, one};
use super::{Command, Db, DbError};

const NEXT_ID: &str = "next_member_id";

fn next_id(tx: &Transaction<'_>) -> Result<u64, DbError> {
    let v: Option<String> = tx
        .query_row(
            "SELECT value FROM cluster_meta WHERE key = ?1",
            params![NEXT_ID],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(1))
}

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    match cmd {
        Command::AddMember(m) => {
            if m.id < next_id(tx)? {
                return Err(DbError::Exists(format!(
                    "cluster member id {} was already given out",
                    m.id
                )));
            }
            tx.execute(
                "INSERT INTO cluster_members (id, name, data) VALUES (?1, ?2, ?3)",
                params![m.id as i64, m.name, json(m)?],
            )?;
            tx.execute(
                "INSERT INTO cluster_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![NEXT_ID, (m.id + 1).to_string()],
            )?;
        }
        Command::UpdateMember(m) => one(
            "cluster member",
            &m.name,
            tx.execute(
                "UPDATE cluster_members SET data = ?2 WHERE name = ?1",
                params![m.name, json(m)?],
            )?,
        )?,
        Command::RenameMember { from, to } => {
            let data: Option<String> = tx
                .query_row(
                    "SELECT data FROM cluster_members WHERE name = ?1",
                    params![from],
                    |r| r.get(0),
                )
                .optional()?;
            let data = data.ok_or_else(|| DbError::NotFound(format!("cluster member {from:?}")))?;
            let mut m: MemberRecord =
                serde_json::from_str(&data).map_err(|e| DbError::Decode(e.to_string()))?;
            m.name = to.clone();
            tx.execute(
                "UPDATE cluster_members SET name = ?2, data = ?3 WHERE name = ?1",
                params![from, to, json(&m)?],
            )?;
            // Instances name the member they live on.
            let mut st = tx.prepare("SELECT name, data FROM instances")?;
            let rows: Vec<(String, String)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (name, data) in rows {
                let mut i: super::records::InstanceRecord =
                    serde_json::from_str(&data).map_err(|e| DbError::Decode(e.to_string()))?;
                if &i.location == from {
                    i.location = to.clone();
                    tx.execute(
                        "UPDATE instances SET data = ?2 WHERE name = ?1",
                        params![name, json(&i)?],
                    )?;
                }
            }
        }
        Command::RemoveMember { name } => one(
            "cluster member",
            name,
            tx.execute("DELETE FROM cluster_members WHERE name = ?1", params![name])?,
        )?,
        Command::CreateJoinToken(t) => {
            tx.execute(
                "INSERT INTO cluster_join_tokens (name, data) VALUES (?1, ?2)",
                params![t.name, json(t)?],
            )?;
        }
        Command::DeleteJoinToken { name } => one(
            "join token",
            name,
            tx.execute(
                "DELETE FROM cluster_join_tokens WHERE name = ?1",
                params![name],
            )?,
        )?,
        other => return Err(super::sql::misrouted("cluster member", other)),
    }
    Ok(())
}

impl Db {
    pub fn members(&self) -> Result<Vec<MemberRecord>, DbError> {
        self.list("SELECT data FROM cluster_members ORDER BY id", &[])
    }
    pub fn member(&self, name: &str) -> Result<Option<MemberRecord>, DbError> {
        self.get("SELECT data FROM cluster_members WHERE name = ?1", &[name])
    }
    pub fn next_member_id(&self) -> Result<u64, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        next_id(&tx)
    }
    pub fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>, DbError> {
        self.list("SELECT data FROM cluster_join_tokens ORDER BY name", &[])
    }
    pub fn join_token(&self, name: &str) -> Result<Option<JoinTokenRecord>, DbError> {
        self.get(
            "SELECT data FROM cluster_join_tokens WHERE name = ?1",
            &[name],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str) -> MemberRecord {
        MemberRecord {
            id,
            name: name.into(),
            address: format!("127.0.0.{id}:8443"),
            architecture: "x86_64".into(),
            description: String::new(),
            failure_domain: "default".into(),
            config: Default::default(),
            groups: vec!["default".into()],
            evacuated: false,
        }
    }

    #[test]
    fn member_ids_are_never_reused() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.next_member_id().unwrap(), 1);
        db.apply_unreplicated(&[Command::AddMember(member(1, "a"))])
            .unwrap();
        db.apply_unreplicated(&[Command::AddMember(member(2, "b"))])
            .unwrap();
        db.apply_unreplicated(&[Command::RemoveMember { name: "b".into() }])
            .unwrap();
        assert_eq!(db.next_member_id().unwrap(), 3);
        assert!(matches!(
            db.apply_unreplicated(&[Command::AddMember(member(2, "c"))]),
            Err(DbError::Exists(_))
        ));
        db.apply_unreplicated(&[Command::AddMember(member(3, "c"))])
            .unwrap();
        db.apply_unreplicated(&[Command::RenameMember {
            from: "c".into(),
            to: "d".into(),
        }])
        .unwrap();
        let names: Vec<_> = db.members().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["a", "d"]);
    }
}
