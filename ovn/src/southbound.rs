//! The one southbound read cairnd needs: which chassis holds a router's gateway port now
//! (Incus's `ovn.chassis` in a network's state). Through `ovn-sbctl`, the same way the
//! northbound side uses `ovn-nbctl`.

use std::process::Command;

use crate::OvnError;

/// The hostname of the chassis the gateway port `lrp` (a router port with gateway
/// chassis) is bound to now; `None` while no chassis has claimed it.
pub fn active_chassis(sb_db: &str, lrp: &str) -> Result<Option<String>, OvnError> {
    let run = |args: &[&str]| -> Result<String, OvnError> {
        let out = Command::new("ovn-sbctl")
            .arg(format!("--db={sb_db}"))
            .arg("--timeout=5")
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
    };
    let chassis = run(&[
        "--bare",
        "--columns=chassis",
        "find",
        "port_binding",
        &format!("logical_port=cr-{lrp}"),
    ])?;
    let Some(uuid) = chassis.split_whitespace().next() else {
        return Ok(None);
    };
    let host = run(&["--bare", "get", "chassis", uuid, "hostname"])?;
    Ok(Some(host.trim_matches('"').to_string()).filter(|h| !h.is_empty()))
}
