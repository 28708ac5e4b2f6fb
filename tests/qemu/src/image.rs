//! Finding (or building) the appliance image, and the client credentials the lab uses.

use crate::accel::Accel;
use crate::{io_err, progress, LabError, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (this crate lives in tests/qemu).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The image to boot: `$CAIRN_IMAGE`, else the build output under `$CAIRN_IMAGE_CACHE`
/// (default /var/cache/cairn-image).
pub fn default_image() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_IMAGE") {
        return p.into();
    }
    let cache = std::env::var_os("CAIRN_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/cairn-image".into());
    cache.join("out/cairn.raw")
}

/// Builds the image with image/build.sh (progress on stderr); returns its path.
pub fn build() -> Result<PathBuf> {
    progress("checking host packages (tests/qemu/install-deps.sh)");
    let deps = repo_root().join("tests/qemu/install-deps.sh");
    let st = Command::new("bash")
        .arg(&deps)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(io_err(format!("running {}", deps.display())))?;
    if !st.success() {
        return Err(LabError::Command {
            what: "tests/qemu/install-deps.sh".into(),
            detail: st.to_string(),
        });
    }
    progress("building the image (image/build.sh)");
    let script = repo_root().join("image/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(io_err(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: "image/build.sh".into(),
            detail: format!("{}", out.status),
        });
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    Ok(if path.is_empty() {
        default_image()
    } else {
        PathBuf::from(path)
    })
}

/// Whether the built image contains cairnd (build.sh records it next to the image).
pub fn has_cairnd(image: &Path) -> bool {
    let manifest = image.with_file_name("manifest");
    std::fs::read_to_string(manifest).is_ok_and(|m| m.lines().any(|l| l == "cairnd=yes"))
}

/// A client certificate and key for talking to nodes (made once with openssl).
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    pub fn pem(&self) -> Result<String> {
        std::fs::read_to_string(&self.cert)
            .map_err(io_err(format!("reading {}", self.cert.display())))
    }
}

pub fn client_cert(dir: &Path) -> Result<ClientCert> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let c = ClientCert {
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
    };
    if c.cert.exists() && c.key.exists() {
        return Ok(c);
    }
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:secp384r1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=cairn-lab",
        ])
        .arg("-keyout")
        .arg(&c.key)
        .arg("-out")
        .arg(&c.cert)
        .output()
        .map_err(io_err("running openssl"))?;
    if !out.status.success() {
        return Err(LabError::Command {
            what: "openssl req".into(),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(c)
}

/// The seed for a lab node: its hostname, DHCP on the first NIC, and the lab's client
/// certificate trusted from the first boot.
pub fn seed_for(name: &str, cert: &ClientCert) -> Result<String> {
    seed_with_network(name, cert, "    - dhcp: true\n")
}

/// The seed for a node of a lab: DHCP on the API NIC, a static address 10.77.0.<index>/24
/// on the management NIC (when it has one), both matched by MAC.
pub fn seed_for_node(cfg: &crate::node::NodeConfig, cert: &ClientCert) -> Result<String> {
    let mut net = format!("    - mac: \"{}\"\n      dhcp: true\n", cfg.api_mac());
    if cfg.mgmt_hub.is_some() {
        net.push_str(&format!(
            "    - mac: \"{}\"\n      addresses: [\"10.77.0.{}/24\"]\n",
            cfg.mgmt_mac(),
            cfg.index
        ));
    }
    seed_with_network(&cfg.name, cert, &net)
}

/// Adds a zero-touch cluster to a node's seed: every node of the lab gets the same section
/// and the nodes form the cluster by themselves on the management network.
pub fn with_cluster(seed: &str, secret: &str, founders: usize, accel: Accel) -> String {
    let heartbeat = accel
        .raft_heartbeat_ms()
        .map_or(String::new(), |ms| format!("  heartbeat_ms: {ms}\n"));
    format!(
        "{seed}cluster:\n  name: lab\n  secret: \"{secret}\"\n  founders: {founders}\n{heartbeat}"
    )
}

/// A fresh random join secret for a lab cluster.
pub fn new_cluster_secret() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io_err("reading /dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn seed_with_network(name: &str, cert: &ClientCert, interfaces: &str) -> Result<String> {
    let pem = cert.pem()?;
    let indented: String = pem.lines().map(|l| format!("        {l}\n")).collect();
    Ok(format!(
        "hostname: {name}\nnetwork:\n  interfaces:\n{interfaces}trust:\n  https_address: \":8443\"\n  client_certificates:\n    - name: cairn-lab\n      certificate: |\n{indented}"
    ))
}

/// The real incus CLI (Debian trixie's incus-client), fetched once into a cache with the
/// image's private trixie apt state. `$CAIRN_INCUS` overrides.
pub fn incus_client() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_INCUS") {
        return Ok(p.into());
    }
    let cache = PathBuf::from("/var/cache/cairn/incus-client");
    let bin = cache.join("usr/bin/incus");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&cache).map_err(io_err("creating the incus-client cache"))?;
    let apt = repo_root().join("image/trixie-apt.sh");
    for args in [
        vec!["update"],
        vec!["download", "incus-client", cache.to_str().unwrap_or("/tmp")],
    ] {
        let st = Command::new("bash")
            .arg(&apt)
            .args(&args)
            .status()
            .map_err(io_err("running trixie-apt.sh"))?;
        if !st.success() {
            return Err(LabError::Command {
                what: format!("trixie-apt.sh {}", args.join(" ")),
                detail: st.to_string(),
            });
        }
    }
    let deb = std::fs::read_dir(&cache)
        .map_err(io_err("listing the incus-client cache"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| LabError::Other("incus-client .deb was not downloaded".into()))?;
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&cache)
        .status()
        .map_err(io_err("dpkg-deb"))?;
    if !st.success() || !bin.exists() {
        return Err(LabError::Other("extracting incus-client failed".into()));
    }
    Ok(bin)
}
