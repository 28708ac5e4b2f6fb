//! The SQL helpers every resource's commands use.

use rusqlite::{params, Transaction};
use serde::Serialize;

use super::{Command, DbError};

pub(super) fn json<T: Serialize>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Encode(e.to_string()))
}

/// Checks that an UPDATE or DELETE touched a row, so a command about a missing object fails
/// instead of silently doing nothing.
pub(super) fn one(what: &str, name: &str, changed: usize) -> Result<(), DbError> {
    if changed == 0 {
        return Err(DbError::NotFound(format!("{what} {name:?}")));
    }
    Ok(())
}

/// Runs one statement, prepared once per connection: commands are applied on every member
/// for every request, and parsing the SQL each time was a visible share of a commit.
pub(super) fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

pub(super) fn load<T: serde::de::DeserializeOwned>(
    tx: &Transaction<'_>,
    table: &str,
    key_col: &str,
    key: &str,
) -> Result<T, DbError> {
    let sql = format!("SELECT data FROM {table} WHERE {key_col} = ?1");
    let data: Option<String> = tx
        .query_row(&sql, params![key], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let data = data.ok_or_else(|| DbError::NotFound(format!("{table} {key:?}")))?;
    serde_json::from_str(&data).map_err(|e| DbError::Decode(format!("{table} {key:?}: {e}")))
}

pub(super) fn all<T: serde::de::DeserializeOwned>(
    tx: &Transaction<'_>,
    table: &str,
) -> Result<Vec<T>, DbError> {
    let mut st = tx.prepare(&format!("SELECT data FROM {table}"))?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let data = row?;
        out.push(
            serde_json::from_str(&data).map_err(|e| DbError::Decode(format!("{table}: {e}")))?,
        );
    }
    Ok(out)
}

/// A command handed to another resource's applier: a bug in `Command::resource`, refused
/// the same way on every member.
pub(super) fn misrouted(applier: &str, cmd: &Command) -> DbError {
    DbError::Misrouted(format!("not a {applier} command: {cmd:?}"))
}
