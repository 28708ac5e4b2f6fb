//! The trust store (client certificates) and trust tokens: their commands and queries.

use rusqlite::{params, Transaction};

use super::records::{CertificateRecord, TokenRecord};
use super::sql::{exec, json, one};
use super::{Command, Db, DbError};

pub(super) fn apply(tx: &Transaction<'_>, cmd: &Command) -> Result<(), DbError> {
    use Command::*;
    match cmd {
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
        other => return Err(super::sql::misrouted("trust", other)),
    }
    Ok(())
}

impl Db {
    pub fn certificate(&self, fingerprint: &str) -> Result<Option<CertificateRecord>, DbError> {
        self.get(
            "SELECT data FROM certificates WHERE fingerprint = ?1",
            &[fingerprint],
        )
    }
    pub fn certificates(&self) -> Result<Vec<CertificateRecord>, DbError> {
        self.list("SELECT data FROM certificates ORDER BY fingerprint", &[])
    }
    pub fn token(&self, secret: &str) -> Result<Option<TokenRecord>, DbError> {
        self.get("SELECT data FROM tokens WHERE secret = ?1", &[secret])
    }
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.list("SELECT data FROM tokens", &[])
    }
}
