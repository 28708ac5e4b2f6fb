//! Talking to a node's API from the host with the lab's client certificate (through curl,
//! so the harness carries no TLS stack): readiness, trust tokens, simple requests.

use crate::image::ClientCert;
use crate::{io_err, LabError, Result};
use base64::Engine;
use serde_json::Value;
use std::process::Command;

/// Makes one HTTPS request; returns the parsed JSON body.
pub fn request(
    cert: &ClientCert,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-k",
        "--connect-timeout",
        "5",
        "--max-time",
        "30",
        "-X",
        method,
    ])
    .arg("--cert")
    .arg(&cert.cert)
    .arg("--key")
    .arg(&cert.key)
    .arg(format!("{base}{path}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.output().map_err(io_err("running curl"))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: format!("{method} {base}{path}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| LabError::Command {
        what: format!("{method} {base}{path}"),
        detail: format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)),
    })
}

/// `GET` returning the body as text (logs).
pub fn get_text(cert: &ClientCert, base: &str, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--fail",
            "--connect-timeout",
            "5",
            "--max-time",
            "30",
        ])
        .arg("--cert")
        .arg(&cert.cert)
        .arg("--key")
        .arg(&cert.key)
        .arg(format!("{base}{path}"))
        .output()
        .map_err(io_err("running curl"))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: format!("GET {base}{path}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster members the node at `base` lists (`GET /1.0/cluster/members?recursion=1`).
fn members(cert: &ClientCert, base: &str) -> Result<Vec<Value>> {
    let text = get_text(cert, base, "/1.0/cluster/members?recursion=1")?;
    let v: Value = serde_json::from_str(&text).map_err(|e| LabError::Command {
        what: format!("GET {base}/1.0/cluster/members"),
        detail: e.to_string(),
    })?;
    Ok(v["metadata"].as_array().cloned().unwrap_or_default())
}

/// Sorted names of the `members` that are Online.
fn online_names(members: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = members
        .iter()
        .filter(|m| m["status"] == "Online")
        .filter_map(|m| m["server_name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// How many of `members` hold a database role (voters).
fn voter_count(members: &[Value]) -> usize {
    members
        .iter()
        .filter(|m| {
            m["roles"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "database" || x == "database-leader"))
        })
        .count()
}

/// Names of the cluster members the node at `base` sees Online.
pub fn online_members(cert: &ClientCert, base: &str) -> Result<Vec<String>> {
    Ok(online_names(&members(cert, base)?))
}

/// Waits until the node at `base` sees `n` members Online and its voters in place.
pub fn wait_cluster(
    cert: &ClientCert,
    base: &str,
    n: usize,
    timeout: std::time::Duration,
) -> Result<Vec<String>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let all = members(cert, base).unwrap_or_default();
        let seen = online_names(&all);
        // Formed means settled too: the voters (up to cluster.max_voters, 3) are in place,
        // so the first writes do not race the promotions (seconds under TCG).
        if seen.len() >= n && voter_count(&all) >= n.min(3) {
            return Ok(seen);
        }
        if std::time::Instant::now() >= deadline {
            return Err(LabError::Command {
                what: format!("waiting for {n} cluster members at {base}"),
                detail: format!("only {seen:?} online"),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Whether the API answers `GET /1.0` with a trusted response.
pub fn trusted(cert: &ClientCert, base: &str) -> bool {
    request(cert, base, "GET", "/1.0", None)
        .is_ok_and(|v| v["metadata"]["auth"].as_str() == Some("trusted"))
}

/// Waits (bounded) until the API trusts the lab's certificate: right after boot the
/// port may answer before the first-boot trust is applied.
pub fn wait_trusted(cert: &ClientCert, base: &str, timeout: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let r = request(cert, base, "GET", "/1.0", None);
        match &r {
            Ok(v) if v["metadata"]["auth"] == "trusted" => return Ok(()),
            _ if std::time::Instant::now() >= deadline => {
                return Err(LabError::Other(format!(
                    "{base} does not trust the lab certificate: {r:?}"
                )))
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Asks the node for a trust token that `incus remote add NAME URL --token T` accepts.
pub fn trust_token(cert: &ClientCert, base: &str, client_name: &str) -> Result<String> {
    trust_token_retrying(cert, base, client_name, std::time::Duration::ZERO)
}

/// [`trust_token`], asked again while the cluster answers 503 (unavailable: a membership
/// change or an election in progress, which under TCG on a loaded host can outlast one
/// write's 5 s bound), as an operator would.
pub fn trust_token_retrying(
    cert: &ClientCert,
    base: &str,
    client_name: &str,
    timeout: std::time::Duration,
) -> Result<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = request(
            cert,
            base,
            "POST",
            "/1.0/certificates",
            Some(&serde_json::json!({"type": "client", "name": client_name, "token": true})),
        );
        let unavailable = matches!(&v, Ok(v) if v["error_code"] == 503);
        if !unavailable || std::time::Instant::now() >= deadline {
            return token_from_operation(&v?, client_name);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Builds the token from the operation Incus returns (as the incus CLI does), or takes a
/// ready-made one if the server returns it.
pub fn token_from_operation(v: &Value, client_name: &str) -> Result<String> {
    let meta = &v["metadata"]["metadata"];
    if let Some(t) = meta["token"].as_str() {
        return Ok(t.to_string());
    }
    let (Some(secret), Some(fingerprint)) = (meta["secret"].as_str(), meta["fingerprint"].as_str())
    else {
        return Err(LabError::Other(format!("no token in the response: {v}")));
    };
    let token = serde_json::json!({
        "client_name": client_name,
        "fingerprint": fingerprint,
        "addresses": meta["addresses"].clone(),
        "secret": secret,
        "expires_at": meta["expiresAt"].as_str().or(meta["expires_at"].as_str()).unwrap_or("0001-01-01T00:00:00Z"),
    });
    Ok(base64::engine::general_purpose::STANDARD.encode(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_incus_style_operation() {
        let op = serde_json::json!({"type": "async", "metadata": {"metadata": {
            "secret": "s3cret", "fingerprint": "abcd", "addresses": ["10.0.2.15:8443"],
            "expiresAt": "0001-01-01T00:00:00Z"}}});
        let t = token_from_operation(&op, "lab").unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(t).unwrap();
        let v: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["client_name"], "lab");
        assert_eq!(v["secret"], "s3cret");
        assert_eq!(v["fingerprint"], "abcd");
        assert!(token_from_operation(&serde_json::json!({}), "lab").is_err());
    }
}
