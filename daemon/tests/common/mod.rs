//! Test fixtures: a cairnd in its own state dir, the real incus CLI pointed at it, and a
//! busybox image built from Debian's busybox-static. Everything made here is removed when
//! the fixture drops, containers included.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon crate sits in the workspace")
        .to_path_buf()
}

/// The real incus CLI: `$CAIRN_INCUS`, else fetched by scripts/incus-client.sh.
pub fn incus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CAIRN_INCUS") {
            return PathBuf::from(p);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/incus-client.sh"))
            .output()
            .expect("running scripts/incus-client.sh");
        assert!(
            out.status.success(),
            "fetching the incus CLI failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A temporary directory under /var/tmp whose parents unprivileged containers can traverse.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let base = PathBuf::from("/var/tmp");
        let p = base.join(format!("{prefix}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).expect("creating test dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{}", t, N.fetch_add(1, Ordering::Relaxed))
}

/// The busybox image tarball, built once per test binary.
pub fn busybox_image() -> &'static Path {
    static IMG: OnceLock<(TempDirKeep, PathBuf)> = OnceLock::new();
    &IMG.get_or_init(|| {
        let dir = TempDirKeep::new();
        let out = dir.0.join("busybox.tar.gz");
        let st = Command::new("bash")
            .arg(repo_root().join("tests/fixtures/make-busybox-image.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("running make-busybox-image.sh");
        assert!(st.success(), "building the busybox image failed");
        (dir, out)
    })
    .1
}

/// A directory that lives as long as the test process (statics are never dropped), removed
/// at exit by the OS's /tmp cleaning at worst; kept small.
pub struct TempDirKeep(pub PathBuf);
impl TempDirKeep {
    fn new() -> TempDirKeep {
        let p = std::env::temp_dir().join(format!(
            "cairn-img-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDirKeep(p)
    }
}

pub struct TestDaemon {
    pub root: TempDir,
    pub state: PathBuf,
    pub home: PathBuf,
    /// Run cairnd inside this network namespace (`ip netns exec`), so what it does to
    /// links, routes and nftables stays there.
    pub netns: Option<String>,
    /// Extra environment of cairnd (`OVS_RUNDIR` for a member's own Open vSwitch).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl TestDaemon {
    pub fn start() -> TestDaemon {
        Self::start_in(None)
    }

    /// A cairnd in network namespace `ns` (which the test made and deletes).
    pub fn start_in_netns(ns: &str) -> TestDaemon {
        Self::start_in(Some(ns.to_string()))
    }

    /// A cairnd in network namespace `ns` whose first start reads `preseed` (what cairn-init
    /// writes on the appliance).
    pub fn start_in_netns_with_preseed(ns: &str, preseed: &str) -> TestDaemon {
        Self::start_with(Some(ns.to_string()), Some(preseed))
    }

    fn start_in(netns: Option<String>) -> TestDaemon {
        Self::start_with(netns, None)
    }

    fn start_with(netns: Option<String>, preseed: Option<&str>) -> TestDaemon {
        Self::start_full(netns, preseed, vec![])
    }

    /// A cairnd in namespace `ns`, with an optional preseed and extra environment.
    pub fn start_in_netns_full(
        ns: &str,
        preseed: Option<&str>,
        env: Vec<(String, String)>,
    ) -> TestDaemon {
        Self::start_full(Some(ns.to_string()), preseed, env)
    }

    fn start_full(
        netns: Option<String>,
        preseed: Option<&str>,
        env: Vec<(String, String)>,
    ) -> TestDaemon {
        let root = TempDir::new("cairn-test");
        let state = root.path().join("state");
        let home = root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        if let Some(p) = preseed {
            std::fs::create_dir_all(&state).unwrap();
            std::fs::write(state.join("preseed.yaml"), p).unwrap();
        }
        let mut d = TestDaemon {
            root,
            state,
            home,
            netns,
            env,
            child: None,
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("cairnd.log"))
            .unwrap();
        // `ip netns exec` execs cairnd in place: the child's pid is cairnd's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns])
                    .arg(env!("CARGO_BIN_EXE_cairnd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_cairnd")),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd
            .arg("--state-dir")
            .arg(&self.state)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting cairnd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.state.join("unix.socket").exists() {
                let out = self.incus(&["admin", "waitready", "--timeout", "5"]);
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cairnd did not become ready; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("cairnd.log")).unwrap_or_default()
    }

    /// kill -9, as a crash or a power cut of the daemon would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running cairnd's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("cairnd is running")
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn incus_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(incus_bin());
        c.args(args);
        self.client_env(&mut c);
        c
    }

    /// Like [`incus_cmd`](Self::incus_cmd), killed after `secs` by coreutils' `timeout`
    /// (exit status 124): a wedged daemon then fails the test instead of hanging it. With
    /// a namespace, the client runs in it too: a cluster join dials the other members.
    pub fn incus_cmd_timeout(&self, secs: u64, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "timeout"]);
                c
            }
            None => Command::new("timeout"),
        };
        c.arg(secs.to_string()).arg(incus_bin()).args(args);
        self.client_env(&mut c);
        c
    }

    fn client_env(&self, c: &mut Command) {
        c.env("INCUS_DIR", &self.state)
            .env("HOME", &self.home)
            .env("INCUS_CONF", self.home.join(".config/incus"))
            .stdin(Stdio::null());
    }

    pub fn incus(&self, args: &[&str]) -> Output {
        self.incus_cmd(args).output().expect("running incus")
    }

    /// Runs incus and returns stdout; fails the test with stderr and the daemon log if it fails.
    pub fn incus_ok(&self, args: &[&str]) -> String {
        let out = self.incus(args);
        assert!(
            out.status.success(),
            "incus {args:?} failed: {}\n--- cairnd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs incus expecting failure; returns stderr.
    pub fn incus_err(&self, args: &[&str]) -> String {
        let out = self.incus(args);
        assert!(
            !out.status.success(),
            "incus {args:?} should have failed but printed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A raw HTTP request over the unix socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        self.http_with(method, path, body, &[])
    }

    /// Like [`http`](Self::http), with extra request headers ("Name: value").
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[&str],
    ) -> (u16, String) {
        let mut c = Command::new("curl");
        for h in headers {
            c.arg("-H").arg(h);
        }
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(self.state.join("unix.socket"))
            .args(["-X", method])
            .arg(format!("http://cairn{path}"));
        if let Some(b) = body {
            let f = self.root.path().join(format!("body-{}", rand_suffix()));
            std::fs::write(&f, b).unwrap();
            c.arg("--data-binary").arg(format!("@{}", f.display()));
        }
        let out = c.output().expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// A response header of a GET over the unix socket.
    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--unix-socket"])
            .arg(self.state.join("unix.socket"))
            .arg(format!("http://cairn{path}"))
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    pub fn import_busybox(&self, alias: &str) {
        let img = busybox_image().to_string_lossy().into_owned();
        self.incus_ok(&["image", "import", &img, "--alias", alias]);
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Containers outlive the daemon by design: stop them by liblxc's own tools, from
        // the daemon's namespace (liblxc's command socket is an abstract socket, seen only
        // there). A container left running past its deleted rootfs spins its init.
        let lxc = self.state.join("lxc");
        if let Ok(it) = std::fs::read_dir(&lxc) {
            for e in it.flatten() {
                let mut cmd = match &self.netns {
                    Some(ns) => {
                        let mut c = Command::new("ip");
                        c.args(["netns", "exec", ns, "lxc-stop"]);
                        c
                    }
                    None => Command::new("lxc-stop"),
                };
                let _ = cmd
                    .arg("-P")
                    .arg(&lxc)
                    .arg("-n")
                    .arg(e.file_name())
                    .arg("-k")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        self.kill9();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Unmounts a pool's mount (`umount -l`) when a test fails before deleting the pool, so
/// its temp dir can go.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Fails loudly (never skips) without root or btrfs-progs.
pub fn require_btrfs(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (loop devices, mounts); scripts/test.sh runs as root"
    );
    let found = Command::new("sh")
        .args(["-c", "command -v mkfs.btrfs && command -v btrfs"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "btrfs-progs is missing: run scripts/install-deps.sh");
}
