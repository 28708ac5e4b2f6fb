//! What cairnd reads and keeps in the southbound database: which chassis holds a router's
//! gateway port now (Incus's `ovn.chassis` in a network's state), and the chassis rows of
//! members that left. Through `ovn-sbctl`, the same way the northbound side uses
//! `ovn-nbctl`.

use std::process::Command;

use crate::OvnError;

fn sbctl(sb_db: &str, args: &[&str]) -> Result<String, OvnError> {
    let out = Command::new("ovn-sbctl")
        .arg(format!("--db={sb_db}"))
        // As the northbound runner's: the leader search is slow under TCG.
        .arg("--timeout=20")
        .args(args)
        .output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(OvnError::Unreachable {
            db: sb_db.to_string(),
            detail: stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The hostname of the chassis the gateway port `lrp` (a router port with gateway
/// chassis) is bound to now; `None` while no chassis has claimed it.
pub fn active_chassis(sb_db: &str, lrp: &str) -> Result<Option<String>, OvnError> {
    let chassis = sbctl(
        sb_db,
        &[
            "--bare",
            "--columns=chassis",
            "find",
            "port_binding",
            &format!("logical_port=cr-{lrp}"),
        ],
    )?;
    let Some(uuid) = chassis.split_whitespace().next() else {
        return Ok(None);
    };
    let host = sbctl(sb_db, &["--bare", "get", "chassis", uuid, "hostname"])?;
    Ok(Some(host.trim_matches('"').to_string()).filter(|h| !h.is_empty()))
}

/// The names of the chassis registered in the southbound database.
pub fn chassis_names(sb_db: &str) -> Result<Vec<String>, OvnError> {
    let out = sbctl(sb_db, &["--bare", "--columns=name", "list", "chassis"])?;
    Ok(out.split_whitespace().map(String::from).collect())
}

/// Deletes chassis `name` (and its encapsulations): the other chassis drop their tunnels
/// to it. A chassis already gone is not an error.
pub fn delete_chassis(sb_db: &str, name: &str) -> Result<(), OvnError> {
    sbctl(sb_db, &["--if-exists", "chassis-del", name]).map(drop)
}
