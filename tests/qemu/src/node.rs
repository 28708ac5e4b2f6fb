//! One Cairn node under QEMU: its disks (qcow2 overlays over the built image), firmware
//! variables, seed, serial console log, QMP socket, and the host port forwarded to its API.

use crate::accel::Accel;
use crate::qmp::Qmp;
use crate::{io_err, LabError, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// How to make a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// The built disk image (raw); the node boots a qcow2 overlay of it.
    pub image: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub system_disk_gib: u32,
    pub data_disk_gib: u32,
    /// The seed YAML handed to the node through QEMU fw_cfg (`opt/cairn/seed`).
    pub seed: String,
    /// Extra QEMU arguments.
    pub extra_args: Vec<String>,
    /// The node's number in its lab (1-based): it picks the NICs' MAC addresses.
    pub index: u8,
    /// The management L2 hub socket to plug a second NIC into (see [`crate::hub`]).
    pub mgmt_hub: Option<PathBuf>,
}

impl NodeConfig {
    pub fn new(name: &str, image: &Path, accel: Accel) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            image: image.into(),
            accel,
            memory_mib: 2048,
            cpus: 2,
            system_disk_gib: 8,
            data_disk_gib: 8,
            seed: format!("hostname: {name}\n"),
            extra_args: Vec::new(),
            index: 1,
            mgmt_hub: None,
        }
    }

    /// MAC of the API NIC (user networking).
    pub fn api_mac(&self) -> String {
        format!("52:54:00:ca:00:{:02x}", self.index)
    }

    /// MAC of the management NIC (the lab's hub).
    pub fn mgmt_mac(&self) -> String {
        format!("52:54:00:cb:00:{:02x}", self.index)
    }
}

/// A console line and when it arrived, in seconds since QEMU started.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub t: f64,
    pub text: String,
}

pub struct Node {
    pub config: NodeConfig,
    pub dir: PathBuf,
    pub api_port: u16,
    child: Option<Child>,
    started: Instant,
    serial_offset: u64,
    partial: String,
    lines: Vec<ConsoleLine>,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(io_err(format!("running {what}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: what.into(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl Node {
    /// Prepares the node's directory under `lab_dir` (fresh disks, firmware variables, seed).
    pub fn create(config: NodeConfig, lab_dir: &Path) -> Result<Node> {
        let dir = lab_dir.join(&config.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let image = config
            .image
            .canonicalize()
            .map_err(io_err(format!("image {}", config.image.display())))?;
        run(
            "qemu-img create (system disk)",
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&image)
                .arg(dir.join("system.qcow2"))
                .arg(format!("{}G", config.system_disk_gib)),
        )?;
        run(
            "qemu-img create (data disk)",
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(dir.join("data.qcow2"))
                .arg(format!("{}G", config.data_disk_gib)),
        )?;
        std::fs::copy(OVMF_VARS, dir.join("OVMF_VARS.fd"))
            .map_err(io_err(format!("copying {OVMF_VARS}")))?;
        std::fs::write(dir.join("seed.yaml"), &config.seed).map_err(io_err("writing the seed"))?;
        let api_port = free_port()?;
        std::fs::write(dir.join("api-port"), api_port.to_string())
            .map_err(io_err("writing api-port"))?;
        Ok(Node {
            config,
            dir,
            api_port,
            child: None,
            started: Instant::now(),
            serial_offset: 0,
            partial: String::new(),
            lines: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    fn qemu_args(&self) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let c = &self.config;
        let mut a: Vec<String> = vec!["-name".into(), c.name.clone()];
        a.extend(c.accel.qemu_args());
        a.extend(
            [
                "-machine",
                "q35",
                "-smp",
                &c.cpus.to_string(),
                "-m",
                &c.memory_mib.to_string(),
                "-nodefaults",
                "-display",
                "none",
                "-no-user-config",
                "-drive",
                &format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                "-drive",
                &format!("if=pflash,format=raw,file={}", d("OVMF_VARS.fd")),
                "-drive",
                &format!("if=none,id=sys,format=qcow2,file={}", d("system.qcow2")),
                "-device",
                "nvme,serial=cairn-system,drive=sys,bootindex=1",
                "-drive",
                &format!("if=none,id=data,format=qcow2,file={}", d("data.qcow2")),
                "-device",
                "nvme,serial=cairn-data,drive=data",
                "-netdev",
                &format!(
                    "user,id=api,restrict=on,hostfwd=tcp:127.0.0.1:{}-:8443",
                    self.api_port
                ),
                "-device",
                &format!("virtio-net-pci,netdev=api,mac={},romfile=", c.api_mac()),
                "-chardev",
                &format!("file,id=ser,path={},append=on", d("serial.log")),
                "-serial",
                "chardev:ser",
                "-qmp",
                &format!("unix:{},server=on,wait=off", d("qmp.sock")),
                "-fw_cfg",
                &format!("name=opt/cairn/seed,file={}", d("seed.yaml")),
                "-pidfile",
                &d("qemu.pid"),
            ]
            .map(String::from),
        );
        if let Some(hub) = &c.mgmt_hub {
            a.extend([
                "-netdev".to_string(),
                format!(
                    "stream,id=mgmt,server=off,addr.type=unix,addr.path={}",
                    hub.display()
                ),
                "-device".to_string(),
                format!("virtio-net-pci,netdev=mgmt,mac={},romfile=", c.mgmt_mac()),
            ]);
        }
        a.extend(c.extra_args.iter().cloned());
        a
    }

    /// Starts QEMU. The node keeps running if this process exits (its own session).
    pub fn start(&mut self) -> Result<()> {
        let log = File::create(self.dir.join("qemu.log")).map_err(io_err("creating qemu.log"))?;
        let log2 = log.try_clone().map_err(io_err("qemu.log"))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(self.qemu_args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.serial_offset = std::fs::metadata(self.serial_log())
            .map(|m| m.len())
            .unwrap_or(0);
        self.partial.clear();
        self.lines.clear();
        self.started = Instant::now();
        let child = cmd.spawn().map_err(io_err("starting qemu-system-x86_64"))?;
        std::fs::write(
            self.dir.join("started-at"),
            format!("{:?}", std::time::SystemTime::now()),
        )
        .ok();
        self.child = Some(child);
        Ok(())
    }

    /// Seconds since QEMU was started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Reads new console output; returns the lines seen so far in this run of QEMU.
    pub fn poll_console(&mut self) -> &[ConsoleLine] {
        if let Ok(mut f) = File::open(self.serial_log()) {
            if f.seek(SeekFrom::Start(self.serial_offset)).is_ok() {
                let mut r = BufReader::new(f);
                let mut buf = Vec::new();
                while let Ok(n) = r.read_until(b'\n', &mut buf) {
                    if n == 0 {
                        break;
                    }
                    self.serial_offset += n as u64;
                    let chunk = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    self.partial.push_str(&chunk);
                    if self.partial.ends_with('\n') {
                        let t = self.started.elapsed().as_secs_f64();
                        let text = self.partial.trim_end().to_string();
                        self.partial.clear();
                        self.lines.push(ConsoleLine { t, text });
                    }
                }
            }
        }
        &self.lines
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for a console line containing `needle` (seen at any time since QEMU started);
    /// fails early if QEMU exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<ConsoleLine> {
        self.wait_for_from(0, needle, timeout)
    }

    /// The number of console lines seen so far: pass it to [`Node::wait_for_from`] to wait
    /// only for lines that come later (e.g. after a reboot inside the same QEMU).
    pub fn mark(&mut self) -> usize {
        self.poll_console().len()
    }

    /// Like [`Node::wait_for`], considering only lines from index `from` on.
    pub fn wait_for_from(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<ConsoleLine> {
        let deadline = Instant::now() + timeout;
        let mut checked = from;
        loop {
            let lines = self.poll_console();
            checked = checked.min(lines.len());
            if let Some(l) = lines[checked..].iter().find(|l| l.text.contains(needle)) {
                return Ok(l.clone());
            }
            checked = lines.len();
            if !self.running() {
                self.poll_console();
                return Err(LabError::Other(format!(
                    "node {}: QEMU exited while waiting for {needle:?}; {}",
                    self.name(),
                    self.diagnosis()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    node: self.name().into(),
                    secs: timeout.as_secs(),
                    what: format!("{needle:?}; {}", self.diagnosis()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` console lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..]
            .iter()
            .map(|l| format!("  [{:7.2}] {}", l.t, l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What a failed wait reports: cairn-init's and cairnd's own lines of this run (the
    /// boot's story, without the chatter of other services) and the last console lines.
    fn diagnosis(&self) -> String {
        let own: Vec<String> = self
            .lines
            .iter()
            .filter(|l| l.text.starts_with("cairn: ") || l.text.starts_with("[cairnd]"))
            .map(|l| format!("  [{:7.2}] {}", l.t, l.text))
            .collect();
        let start = own.len().saturating_sub(60);
        format!(
            "cairn-init and cairnd lines:\n{}\nlast console lines:\n{}",
            own[start..].join("\n"),
            self.tail(15)
        )
    }

    /// Whether a line containing `needle` has been seen in this run.
    pub fn saw(&mut self, needle: &str) -> bool {
        self.poll_console().iter().any(|l| l.text.contains(needle))
    }

    fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(self.name(), &self.qmp_socket())
    }

    /// Presses the ACPI power button (QEMU `system_powerdown`).
    pub fn acpi_powerdown(&self) -> Result<()> {
        self.qmp()?
            .execute("system_powerdown", serde_json::Value::Null)
            .map(|_| ())
    }

    /// Ctrl-Alt-Del: a clean reboot through PID 1 (SIGINT).
    pub fn ctrl_alt_del(&self) -> Result<()> {
        self.qmp()?
            .execute(
                "send-key",
                serde_json::json!({"keys": [
                    {"type": "qcode", "data": "ctrl"},
                    {"type": "qcode", "data": "alt"},
                    {"type": "qcode", "data": "delete"}]}),
            )
            .map(|_| ())
    }

    /// Hard reset (no shutdown).
    pub fn reset(&self) -> Result<()> {
        self.qmp()?
            .execute("system_reset", serde_json::Value::Null)
            .map(|_| ())
    }

    /// Power cut: SIGKILL to QEMU.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
    }

    /// Waits for QEMU to exit; returns how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        while self.running() {
            if t0.elapsed() > timeout {
                self.poll_console();
                return Err(LabError::Timeout {
                    node: self.name().into(),
                    secs: timeout.as_secs(),
                    what: format!("QEMU to exit; last console lines:\n{}", self.tail(15)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.poll_console();
        Ok(t0.elapsed())
    }

    /// Powers off through ACPI, and kills QEMU if that does not finish within `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<Duration> {
        if !self.running() {
            return Ok(Duration::ZERO);
        }
        self.acpi_powerdown()?;
        match self.wait_exit(timeout) {
            Ok(d) => Ok(d),
            Err(e) => {
                self.kill9();
                Err(e)
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Tests must not leave QEMU behind; `cairn-lab up` detaches before dropping.
        if std::env::var_os("CAIRN_LAB_KEEP").is_none() {
            self.kill9();
        }
    }
}

impl Node {
    /// Lets QEMU outlive this value (used by `cairn-lab up`).
    pub fn detach(mut self) {
        self.child = None;
    }
}
