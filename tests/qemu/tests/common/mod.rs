//! What the QEMU-tier tests share: the lab (image, client certificate, a directory per
//! test), the real incus CLI with the lab's own configuration, booting a node.

#![allow(dead_code)]

use cairn_lab::image::{self, ClientCert};
use cairn_lab::node::{Node, NodeConfig};
use cairn_lab::{accel, api, lab_dir};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub const BOOT: Duration = Duration::from_secs(300);

pub struct Lab {
    pub image: PathBuf,
    pub cert: ClientCert,
    pub dir: PathBuf,
    pub api: bool,
}

pub fn lab(test: &str) -> Lab {
    let image = image::default_image();
    assert!(
        image.exists(),
        "no image at {}: build it with image/build.sh first",
        image.display()
    );
    let dir = lab_dir().join("tests").join(test);
    let cert = image::client_cert(&lab_dir().join("client")).expect("client certificate");
    Lab {
        api: image::has_cairnd(&image),
        image,
        cert,
        dir,
    }
}

impl Lab {
    /// The real incus CLI with this lab's own client configuration (fresh each time):
    /// runs a command, asserts it succeeded and returns its output.
    pub fn incus(&self) -> impl Fn(&[&str]) -> String {
        let incus = image::incus_client().expect("incus client");
        let conf = self.dir.join("incus-config");
        let _ = std::fs::remove_dir_all(&conf);
        move |args: &[&str]| {
            let out = Command::new(&incus)
                .args(args)
                .env("INCUS_CONF", &conf)
                .output()
                .expect("running incus");
            assert!(
                out.status.success(),
                "incus {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    /// The incus CLI, for a command that may fail: whether it succeeded, and what it
    /// printed (stdout then stderr).
    pub fn incus_status(&self, args: &[&str]) -> (bool, String) {
        let incus = image::incus_client().expect("incus client");
        let out = Command::new(&incus)
            .args(args)
            .env("INCUS_CONF", self.dir.join("incus-config"))
            .output()
            .expect("running incus");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// A busybox container image (tests/fixtures/make-busybox-image.sh) in the lab's dir.
    pub fn busybox_image(&self) -> PathBuf {
        let tarball = self.dir.join("busybox.tar.gz");
        let st = Command::new("bash")
            .arg(image::repo_root().join("tests/fixtures/make-busybox-image.sh"))
            .arg(&tarball)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("making the busybox image");
        assert!(st.success(), "make-busybox-image.sh failed");
        tarball
    }

    pub fn node(&self, name: &str) -> Node {
        let mut cfg = NodeConfig::new(name, &self.image, accel::detect());
        cfg.seed = image::seed_for(name, &self.cert).expect("seed");
        Node::create(cfg, &self.dir).expect("create node")
    }

    /// Boots until the node is up: "API ready" when the image has cairnd, otherwise all
    /// services started.
    pub fn boot(&self, node: &mut Node) {
        node.start().expect("start QEMU");
        let marker = if self.api {
            "cairn: API ready"
        } else {
            "stage=services-started"
        };
        node.wait_for(marker, BOOT)
            .unwrap_or_else(|e| panic!("{e}"));
        if self.api {
            api::wait_trusted(&self.cert, &node.api_url(), Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// Polls `incus list NAME -c 4` through `run` until the instance shows an IPv4 address
/// (its DHCP client has a lease from the node's bridge), within `limit`.
pub fn wait_for_ipv4(run: &dyn Fn(&[&str]) -> String, name: &str, limit: Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let got = run(&["list", name, "-c", "4", "--format", "csv"]);
        if got.contains("(eth0)") {
            return got.trim().to_string();
        }
        assert!(
            start.elapsed() < limit,
            "{name} has no IPv4 address after {limit:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
