//! The OVN control plane of a cluster, run by cairnd when its preseed asks for it (the
//! appliance's `ovn:` part): the northbound and southbound databases as OVSDB clustered
//! (Raft) databases and ovn-northd on the cluster's Raft voters (Incus's `database` role),
//! and ovn-controller on every member with Geneve on the member's management address.
//! Which members hold the databases is derived from the replicated membership, so every
//! member computes the same set without asking, and the set follows the voters: a member
//! promoted joins the clustered databases, one no longer a voter leaves them
//! (`cluster/leave`) and drops its files, a voter lost without leaving is kicked by the
//! first voter, and a member removed from the cluster stops all its OVN daemons.
//!
//! The daemons run detached under OVS's own `--monitor` (restarted if they crash) and
//! outlive cairnd, like dnsmasq: a restarted cairnd finds them by their pid files and
//! only starts what is missing, or restarts ovn-northd when the database set changed.
//! Everything lives in `<state>/ovn` (databases, sockets, pid files, logs).
//!
//! The databases and their Raft links listen in plain TCP on the management addresses
//! (ports 6641/6642, Raft 6643/6644): not yet TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{ovs, NetworkError};
use crate::daemon::Daemon;
use crate::runner;

pub const NB_PORT: u16 = 6641;
pub const SB_PORT: u16 = 6642;
const NB_RAFT_PORT: u16 = 6643;
const SB_RAFT_PORT: u16 = 6644;
/// Rounds in a row a member must find itself no longer a voter before it leaves the
/// databases (leaving cannot be undone: a membership seen for a moment must not do it).
const RETIRE_AFTER: u32 = 2;

/// Who does what, from the member list.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub me: String,
    pub my_ip: String,
    /// The members holding the databases (the Raft voters), by id: `(name, management
    /// address)`.
    pub central: Vec<(String, String)>,
}

impl Plan {
    pub fn is_central(&self) -> bool {
        self.central.iter().any(|(n, _)| *n == self.me)
    }
    fn list(&self, port: u16) -> String {
        self.central
            .iter()
            .map(|(_, ip)| format!("tcp:{}:{port}", bracket(ip)))
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn nb(&self) -> String {
        self.list(NB_PORT)
    }
    pub fn sb(&self) -> String {
        self.list(SB_PORT)
    }
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The host of a member's `host:port` address (`[v6]:port` too).
fn host_of(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(address)
        .to_string()
}

/// The plan for this member, when it is in a cluster.
pub fn plan(d: &Daemon) -> Result<Option<Plan>, NetworkError> {
    let Some(rt) = d.cluster() else {
        return Ok(None);
    };
    let voters = rt.voters();
    let me = d.server_name();
    let mut members = d.db.members()?;
    members.sort_by_key(|m| m.id);
    let Some(mine) = members.iter().find(|m| m.name == me) else {
        return Ok(None);
    };
    Ok(Some(Plan {
        me: me.clone(),
        my_ip: host_of(&mine.address),
        central: members
            .iter()
            .filter(|m| voters.contains(&m.id))
            .map(|m| (m.name.clone(), host_of(&m.address)))
            .collect(),
    }))
}

/// Whether this daemon runs the OVN control plane (set once from the preseed).
pub fn enabled(d: &Daemon) -> bool {
    d.ovn_services.get().copied().unwrap_or(false)
}

fn dir(d: &Daemon) -> PathBuf {
    d.paths.state.join("ovn")
}

/// The live pid a daemon's pid file names. Its command line must name both the program and
/// that pid file: after a reboot the pid of a daemon of the last boot is often reused by
/// another of the same program (the host's own ovsdb-server starts early), which must not
/// count as ours.
fn running(pidfile: &Path, program: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmd);
    let ours = format!("--pidfile={}", pidfile.display());
    (cmd.contains(program) && cmd.contains(&ours)).then_some(pid)
}

fn run(program: &str, args: &[String], dir: &Path) -> Result<(), NetworkError> {
    run_out(program, args, dir).map(drop)
}

/// [`run`], returning the program's standard output.
fn run_out(program: &str, args: &[String], dir: &Path) -> Result<String, NetworkError> {
    let out = std::process::Command::new(program)
        .args(args)
        .env(
            "OVS_RUNDIR",
            std::env::var_os("OVS_RUNDIR").unwrap_or_else(|| "/run/openvswitch".into()),
        )
        .env("OVN_RUNDIR", dir)
        .env("OVN_LOGDIR", dir)
        .env("OVN_DBDIR", dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| NetworkError::Ovn(format!("running {program}: {e}")))?;
    if !out.status.success() {
        return Err(NetworkError::Ovn(
            runner::RunError::failed(program, args, out.status, &out.stderr).to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn daemon_args(dir: &Path, name: &str) -> Vec<String> {
    let f = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    vec![
        "--detach".into(),
        "--monitor".into(),
        format!("--pidfile={}", f("pid")),
        format!("--log-file={}", f("log")),
    ]
}

struct Db {
    name: &'static str,
    schema: &'static str,
    db_name: &'static str,
    port: u16,
    raft: u16,
}

const DBS: [Db; 2] = [
    Db {
        name: "nb",
        schema: "/usr/share/ovn/ovn-nb.ovsschema",
        db_name: "OVN_Northbound",
        port: NB_PORT,
        raft: NB_RAFT_PORT,
    },
    Db {
        name: "sb",
        schema: "/usr/share/ovn/ovn-sb.ovsschema",
        db_name: "OVN_Southbound",
        port: SB_PORT,
        raft: SB_RAFT_PORT,
    },
];

/// One clustered database here: made, then served. The first voter creates the cluster
/// unless this member ever held the database before (then the cluster exists, and a
/// member back in the voters after it left must join it again: `<db>.joined` outlives
/// the files it drops); everyone else joins the other voters.
fn ensure_db(dir: &Path, p: &Plan, db: &Db) -> Result<(), NetworkError> {
    let file = dir.join(format!("{}.db", db.name));
    let joined = dir.join(format!("{}.joined", db.name));
    let me = format!("tcp:{}:{}", bracket(&p.my_ip), db.raft);
    if file.exists() && !joined.exists() {
        // A database made before the marker existed.
        write_marker(&joined)?;
    }
    if !file.exists() {
        let first = p.central.first().is_some_and(|(n, _)| *n == p.me) && !joined.exists();
        let tmp = dir.join(format!("{}.db.new", db.name));
        let _ = std::fs::remove_file(&tmp);
        let args: Vec<String> = if first {
            vec![
                "create-cluster".into(),
                tmp.display().to_string(),
                db.schema.into(),
                me.clone(),
            ]
        } else {
            let mut a = vec![
                "join-cluster".into(),
                tmp.display().to_string(),
                db.db_name.into(),
                me.clone(),
            ];
            a.extend(
                p.central
                    .iter()
                    .filter(|(n, _)| *n != p.me)
                    .map(|(_, ip)| format!("tcp:{}:{}", bracket(ip), db.raft)),
            );
            a
        };
        run("ovsdb-tool", &args, dir)?;
        std::fs::rename(&tmp, &file)
            .map_err(|e| NetworkError::Io(format!("{}: {e}", file.display())))?;
        write_marker(&joined)?;
        tracing::info!(
            "OVN {}: {} the clustered database at {me}",
            db.db_name,
            if first { "created" } else { "joined" }
        );
    }
    let pidfile = dir.join(format!("{}.pid", db.name));
    if running(&pidfile, "ovsdb-server").is_some() {
        return Ok(());
    }
    let mut args = daemon_args(dir, db.name);
    args.extend([
        format!(
            "--unixctl={}",
            dir.join(format!("{}.ctl", db.name)).display()
        ),
        format!(
            "--remote=punix:{}",
            dir.join(format!("{}.sock", db.name)).display()
        ),
        format!("--remote=ptcp:{}:{}", db.port, p.my_ip),
        file.display().to_string(),
    ]);
    run("ovsdb-server", &args, dir)?;
    tracing::info!("OVN {}: ovsdb-server started", db.db_name);
    Ok(())
}

fn write_marker(path: &Path) -> Result<(), NetworkError> {
    std::fs::write(path, b"").map_err(|e| NetworkError::Io(format!("{}: {e}", path.display())))
}

/// Stops the daemon `pid` (SIGTERM, which its `--monitor` does not restart) and waits up
/// to 5 s for it to be gone.
fn stop(pid: i32, what: &str) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tracing::warn!("{what} (pid {pid}) still running 5 s after SIGTERM");
}

/// This member's server of `db` leaves the cluster (so the others' majority shrinks at
/// once rather than waiting for a kick), stops, and its file goes. Whether there was one.
fn retire_db(dir: &Path, db: &Db) -> Result<bool, NetworkError> {
    let file = dir.join(format!("{}.db", db.name));
    let pid = running(&dir.join(format!("{}.pid", db.name)), "ovsdb-server");
    if pid.is_none() && !file.exists() {
        return Ok(false);
    }
    if let Some(pid) = pid {
        let ctl = dir.join(format!("{}.ctl", db.name)).display().to_string();
        let appctl = |cmd: &str| {
            run_out(
                "ovs-appctl",
                &["-t".into(), ctl.clone(), cmd.into(), db.db_name.into()],
                dir,
            )
        };
        match appctl("cluster/leave") {
            Ok(_) => {
                // Left once the server no longer serves the database (or says so).
                for _ in 0..50 {
                    match appctl("cluster/status") {
                        Ok(s) if !s.contains("left") => {}
                        _ => break,
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
            // Kicked already, or no majority to leave through: the first voter kicks it.
            Err(e) => tracing::warn!("OVN {}: leaving the cluster: {e}", db.db_name),
        }
        stop(pid, "ovsdb-server");
    }
    for f in [file, dir.join(format!("{}.sock", db.name))] {
        let _ = std::fs::remove_file(f);
    }
    tracing::info!(
        "OVN {}: this member no longer holds the database; its server left",
        db.db_name
    );
    Ok(true)
}

/// This member's part of the control plane that its role no longer has: the databases and
/// ovn-northd of a member that is not a voter, and also ovn-controller of one that is
/// not in the cluster any more. ovn-controller exits through its own `exit` command, which
/// takes its chassis out of the southbound database.
fn retire(dir: &Path, member: bool) -> Result<(), NetworkError> {
    let mut any = false;
    for db in &DBS {
        any |= retire_db(dir, db)?;
    }
    if let Some(pid) = running(&dir.join("northd.pid"), "ovn-northd") {
        stop(pid, "ovn-northd");
        let _ = std::fs::remove_file(dir.join("northd.args"));
        any = true;
    }
    if !member {
        if let Some(pid) = running(&dir.join("controller.pid"), "ovn-controller") {
            let ctl = dir.join(format!("ovn-controller.{pid}.ctl"));
            if let Err(e) = run(
                "ovn-appctl",
                &["-t".into(), ctl.display().to_string(), "exit".into()],
                dir,
            ) {
                tracing::warn!("ovn-controller exit: {e}");
            }
            stop(pid, "ovn-controller");
            any = true;
        }
    }
    if any {
        tracing::info!(
            "OVN services: stopped what this member no longer runs ({})",
            if member {
                "not a database voter"
            } else {
                "not a cluster member"
            }
        );
    }
    Ok(())
}

/// The Raft addresses of the servers in `cluster/status`'s "Servers:" part.
fn server_addresses(status: &str) -> Vec<String> {
    status
        .lines()
        .skip_while(|l| !l.starts_with("Servers:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split(" at ").nth(1)?.split(')').next())
        .map(String::from)
        .collect()
}

/// A removed member's database servers taken out of the databases' Raft (ovsdb's
/// `cluster/kick`, by address), by the first central member: they would otherwise count
/// towards every majority from then on.
fn kick_departed(dir: &Path, p: &Plan, db: &Db) -> Result<(), NetworkError> {
    if p.central.first().is_none_or(|(n, _)| *n != p.me) {
        return Ok(());
    }
    let ctl = dir.join(format!("{}.ctl", db.name)).display().to_string();
    let status = run_out(
        "ovs-appctl",
        &[
            "-t".into(),
            ctl.clone(),
            "cluster/status".into(),
            db.db_name.into(),
        ],
        dir,
    )?;
    let wanted: Vec<String> = p
        .central
        .iter()
        .map(|(_, ip)| format!("tcp:{}:{}", bracket(ip), db.raft))
        .collect();
    for addr in server_addresses(&status) {
        if wanted.contains(&addr) {
            continue;
        }
        run(
            "ovs-appctl",
            &[
                "-t".into(),
                ctl.clone(),
                "cluster/kick".into(),
                db.db_name.into(),
                addr.clone(),
            ],
            dir,
        )?;
        tracing::info!(
            "OVN {}: server {addr} of a departed member kicked",
            db.db_name
        );
    }
    Ok(())
}

/// ovn-northd against the current database set, restarted when that set changed.
fn ensure_northd(dir: &Path, p: &Plan) -> Result<(), NetworkError> {
    let pidfile = dir.join("northd.pid");
    let want = format!("--ovnnb-db={} --ovnsb-db={}", p.nb(), p.sb());
    let argsfile = dir.join("northd.args");
    let had = std::fs::read_to_string(&argsfile).unwrap_or_default();
    if let Some(pid) = running(&pidfile, "ovn-northd") {
        if had == want {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut args = daemon_args(dir, "northd");
    args.extend([
        format!("--unixctl={}", dir.join("northd.ctl").display()),
        format!("--ovnnb-db={}", p.nb()),
        format!("--ovnsb-db={}", p.sb()),
    ]);
    run("ovn-northd", &args, dir)?;
    std::fs::write(&argsfile, want).map_err(|e| NetworkError::Io(e.to_string()))?;
    tracing::info!("ovn-northd started against {}", p.nb());
    Ok(())
}

/// This member as an OVN chassis: its OVS told where the southbound database is and which
/// address its Geneve tunnels use, and ovn-controller running.
fn ensure_controller(dir: &Path, p: &Plan) -> Result<(), NetworkError> {
    ovs::set_chassis(&p.me, &p.sb(), &p.my_ip)?;
    if running(&dir.join("controller.pid"), "ovn-controller").is_some() {
        return Ok(());
    }
    run("ovn-controller", &daemon_args(dir, "controller"), dir)?;
    tracing::info!(
        "ovn-controller started (chassis {}, Geneve on {})",
        p.me,
        p.my_ip
    );
    Ok(())
}

/// Converges this member's part of the control plane on the current plan, and returns
/// that plan (`None`: not a cluster member, nothing to run). Blocking.
fn ensure(d: &Daemon, done: &mut Converged) -> Result<Option<Plan>, NetworkError> {
    let dir = dir(d);
    let Some(p) = plan(d)? else {
        // In a cluster that no longer lists this member: it was removed.
        if d.cluster().is_some() && dir.exists() {
            retire(&dir, false)?;
        }
        return Ok(None);
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| NetworkError::Io(format!("{}: {e}", dir.display())))?;
    }
    if p.is_central() {
        done.not_voter = 0;
        for db in &DBS {
            ensure_db(&dir, &p, db)?;
            kick_departed(&dir, &p, db)?;
        }
        ensure_northd(&dir, &p)?;
    } else {
        done.not_voter = done.not_voter.saturating_add(1);
        if done.not_voter >= RETIRE_AFTER {
            retire(&dir, true)?;
        }
    }
    if !ovs::available() {
        return Err(NetworkError::Ovn(
            "Open vSwitch is not running on this member: no ovn-controller".into(),
        ));
    }
    ensure_controller(&dir, &p)?;
    Ok(Some(p))
}

/// What the loop last converged, so that a quiet cluster costs no `ovs-vsctl` or
/// `ovn-nbctl` call per round.
#[derive(Default)]
struct Converged {
    /// The uplinks connected to this member's OVS since cairnd started.
    uplinks: BTreeSet<String>,
    /// Per OVN network, the record and gateway chassis its northbound rows were last made
    /// from (by this member, while it led the cluster).
    rows: BTreeMap<String, String>,
    /// Rounds in a row this member found itself not a voter.
    not_voter: u32,
    /// The member names the southbound chassis were last pruned for (on the leader).
    chassis_for: Option<Vec<String>>,
}

/// On the Raft leader, once per change of the member list: the chassis of members no
/// longer in the cluster deleted from the southbound database (a member removed while
/// running takes its own out; one that died cannot), so no chassis keeps tunnels to it.
fn prune_chassis(d: &Daemon, p: &Plan, done: &mut Converged) -> Result<(), NetworkError> {
    let members: Vec<String> = d.db.members()?.into_iter().map(|m| m.name).collect();
    if done.chassis_for.as_ref() == Some(&members) {
        return Ok(());
    }
    let sb = p.sb();
    for name in cairn_ovn::southbound::chassis_names(&sb)? {
        if !members.contains(&name) {
            cairn_ovn::southbound::delete_chassis(&sb, &name)?;
            tracing::info!("OVN: chassis {name} of a departed member deleted");
        }
    }
    done.chassis_for = Some(members);
    Ok(())
}

/// The OVN networks' uplinks connected here (a veth pair into a Linux bridge does not
/// survive a reboot, and at cairnd's start OVS may not run yet); on the Raft leader, their
/// northbound rows made from the records and the current members: the appliance's first
/// start records its OVN network before any database runs, a member that joined later
/// becomes a gateway chassis, and rows lost with the databases come back. Blocking.
fn converge_networks(d: &Daemon, p: &Plan, done: &mut Converged) -> Result<(), NetworkError> {
    let recs: Vec<_> =
        d.db.networks()?
            .into_iter()
            .filter(|r| r.kind == "ovn")
            .collect();
    for rec in &recs {
        let Some(u) = rec.config.get("network").filter(|u| u.as_str() != "none") else {
            continue;
        };
        if !done.uplinks.contains(u) {
            super::ovn::restore(d, rec)?;
            done.uplinks.insert(u.clone());
        }
    }
    if !d.cluster().is_some_and(|c| c.is_leader()) {
        done.rows.clear();
        done.chassis_for = None;
        return Ok(());
    }
    prune_chassis(d, p, done)?;
    done.rows.retain(|n, _| recs.iter().any(|r| &r.name == n));
    let chassis = super::ovn::gateway_chassis(d)?;
    for rec in &recs {
        let fingerprint = format!("{:?} {chassis:?}", rec.config);
        if done.rows.get(&rec.name) == Some(&fingerprint) {
            continue;
        }
        super::ovn::apply_nb(d, rec)
            .map_err(|e| NetworkError::Ovn(format!("network {}: {e}", rec.name)))?;
        tracing::info!("network {}: northbound rows converged", rec.name);
        done.rows.insert(rec.name.clone(), fingerprint);
    }
    Ok(())
}

/// The background loop of a daemon with OVN services: converge now, then every 10 s (the
/// member list changes as members join; a daemon that died is started again).
pub async fn run_loop(d: std::sync::Arc<Daemon>) {
    let mut last_err = String::new();
    let done = std::sync::Arc::new(std::sync::Mutex::new(Converged::default()));
    loop {
        let (d2, done2) = (d.clone(), done.clone());
        // No API change of a network in between: a create that fails and undoes its rows
        // must not have them made again from its record meanwhile.
        let changes = d.networks.changes.lock().await;
        let r = tokio::task::spawn_blocking(move || {
            let mut done = done2.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = ensure(&d2, &mut done)? else {
                return Ok(());
            };
            converge_networks(&d2, &p, &mut done)
        })
        .await;
        drop(changes);
        match r {
            Ok(Ok(())) => last_err.clear(),
            Ok(Err(e)) => {
                let e = e.to_string();
                if e != last_err {
                    tracing::warn!("OVN services: {e}");
                }
                last_err = e;
            }
            Err(e) => tracing::error!("OVN services: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_from_cluster_status() {
        let status = "Name: OVN_Northbound\nAddress: tcp:10.0.0.1:6643\nServers:\n    4972 (4972 at tcp:10.0.0.1:6643) (self) next_index=2 match_index=2\n    a1b2 (a1b2 at tcp:[fd00::2]:6643) next_index=3\nElection timer: 1000\n";
        assert_eq!(
            server_addresses(status),
            ["tcp:10.0.0.1:6643", "tcp:[fd00::2]:6643"]
        );
        assert!(server_addresses("Name: x\n").is_empty());
    }

    #[test]
    fn hosts_and_lists() {
        assert_eq!(host_of("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:8443"), "fd00::1");
        let p = Plan {
            me: "b".into(),
            my_ip: "10.0.0.2".into(),
            central: vec![
                ("a".into(), "10.0.0.1".into()),
                ("b".into(), "fd00::2".into()),
            ],
        };
        assert!(p.is_central());
        assert_eq!(p.nb(), "tcp:10.0.0.1:6641,tcp:[fd00::2]:6641");
        assert_eq!(p.sb(), "tcp:10.0.0.1:6642,tcp:[fd00::2]:6642");
    }
}
