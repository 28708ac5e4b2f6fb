//! Forming a cluster through the API as `incus admin init` and `incus cluster add` do, and
//! reading who leads it.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::http::Client;
use crate::procs::Member;
use crate::Result;

/// Waits for the operation an async reply names; fails unless it ended with status 200.
pub fn wait_op(c: &mut Client, reply: &Value, what: &str) -> Result<Value> {
    let op = reply["operation"]
        .as_str()
        .filter(|o| !o.is_empty())
        .ok_or_else(|| format!("{what}: the reply names no operation: {reply}"))?;
    let done = c.call("GET", &format!("{op}/wait?timeout=60"), None)?;
    let meta = &done["metadata"];
    if meta["status_code"] != 200 {
        return Err(format!(
            "{what}: operation ended {} ({}): {}",
            meta["status"], meta["status_code"], meta["err"]
        ));
    }
    Ok(meta.clone())
}

/// Turns standalone, freshly started members into one cluster: `members[0]` founds it,
/// the others join it one by one with a join token.
pub fn form(members: &[Member], port: u16) -> Result<()> {
    for m in members {
        let mut c = Client::new(&m.socket);
        c.call(
            "PUT",
            "/1.0",
            Some(json!({"config": {"core.https_address": format!("{}:{port}", m.ip)}})),
        )?;
    }
    let founder = &members[0];
    let mut c1 = Client::new(&founder.socket);
    let reply = c1.call(
        "PUT",
        "/1.0/cluster",
        Some(json!({"server_name": founder.name, "enabled": true})),
    )?;
    wait_op(&mut c1, &reply, "enabling clustering")?;
    let cert = c1.call("GET", "/1.0", None)?["metadata"]["environment"]["certificate"]
        .as_str()
        .filter(|c| !c.is_empty())
        .ok_or("GET /1.0 on the founder shows no certificate")?
        .to_string();
    for m in &members[1..] {
        let reply = c1.call(
            "POST",
            "/1.0/cluster/members",
            Some(json!({"server_name": m.name})),
        )?;
        let token = join_token(&reply["metadata"]["metadata"])
            .map_err(|e| format!("the join token for {}: {e}", m.name))?;
        let mut c = Client::new(&m.socket);
        let reply = c.call(
            "PUT",
            "/1.0/cluster",
            Some(json!({
                "server_name": m.name,
                "enabled": true,
                "server_address": format!("{}:{port}", m.ip),
                "cluster_certificate": cert,
                "cluster_token": token,
            })),
        )?;
        wait_op(&mut c, &reply, &format!("{} joining", m.name))?;
    }
    Ok(())
}

/// Incus's `ClusterMemberJoinToken` from the token operation's metadata: base64 of JSON.
fn join_token(meta: &Value) -> Result<String> {
    let field = |k: &str| {
        meta.get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .ok_or_else(|| format!("no {k} in the operation's metadata: {meta}"))
    };
    let token = json!({
        "server_name": field("serverName")?,
        "fingerprint": field("fingerprint")?,
        "addresses": field("addresses")?,
        "secret": field("secret")?,
        "expires_at": field("expiresAt")?,
    });
    Ok(base64::engine::general_purpose::STANDARD.encode(token.to_string()))
}

/// `GET /1.0/cluster/members?recursion=1` as one member sees it.
pub fn members_view(m: &Member) -> Result<Vec<Value>> {
    let mut c = Client::with_timeout(&m.socket, Duration::from_secs(5));
    let v = c.call("GET", "/1.0/cluster/members?recursion=1", None)?;
    v["metadata"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("GET /1.0/cluster/members: metadata is not a list: {v}"))
}

fn has_role(member: &Value, role: &str) -> bool {
    member["roles"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x == role))
}

/// Whether a view shows `n` members all Online, min(3, n) voters and one leader; if not,
/// what is missing.
fn settled(view: &[Value], n: usize) -> std::result::Result<(), String> {
    if view.len() != n {
        return Err(format!("{} members listed, want {n}", view.len()));
    }
    let offline: Vec<&str> = view
        .iter()
        .filter(|m| m["status"] != "Online")
        .filter_map(|m| m["server_name"].as_str())
        .collect();
    if !offline.is_empty() {
        return Err(format!("not Online: {}", offline.join(", ")));
    }
    let voters = view.iter().filter(|m| has_role(m, "database")).count();
    if voters != n.min(3) {
        return Err(format!("{voters} database members, want {}", n.min(3)));
    }
    let leaders = view
        .iter()
        .filter(|m| has_role(m, "database-leader"))
        .count();
    if leaders != 1 {
        return Err(format!("{leaders} database leaders"));
    }
    Ok(())
}

/// Waits until every member in `asked` sees the `n`-member cluster settled.
pub fn wait_settled(asked: &[&Member], n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    for m in asked {
        loop {
            let state = members_view(m).and_then(|v| settled(&v, n));
            match state {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "the cluster did not settle within {limit:?}; {} sees: {e}",
                        m.name
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

/// The name of the member `asked` sees as the Raft leader.
pub fn leader(asked: &Member) -> Result<String> {
    members_view(asked)?
        .iter()
        .find(|m| has_role(m, "database-leader"))
        .and_then(|m| m["server_name"].as_str().map(str::to_string))
        .ok_or_else(|| format!("{} sees no database-leader", asked.name))
}
