//! Decompression bombs against the unpack budget: `images.max_unpacked_size` and a pool's
//! free space stop an image that expands too far, with a clear error, and leave nothing
//! behind (no image volume, no staging directory, no stored tarball, no record).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{MountGuard, TempDir, TestDaemon};

const MIB: u64 = 1 << 20;

/// A unified image tarball (gzip -1) whose rootfs holds files of zeros of the given sizes.
/// The files are sparse in the staging directory, so making the image writes only its few
/// compressed MB; GNU tar (without -S) still stores every zero.
fn zeros_image(dir: &Path, name: &str, files: &[(&str, u64)]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(src.join("rootfs")).unwrap();
    std::fs::write(
        src.join("metadata.yaml"),
        "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: zeros\n",
    )
    .unwrap();
    for (file, size) in files {
        std::fs::File::create(src.join("rootfs").join(file))
            .unwrap()
            .set_len(*size)
            .unwrap();
    }
    let out = dir.join(format!("{name}.tar.gz"));
    let st = Command::new("sh")
        .arg("-c")
        .arg(
            "tar --sort=name --owner=0 --group=0 --numeric-owner -cf - -C \"$1\" metadata.yaml rootfs \
             | gzip -1 > \"$2\"",
        )
        .arg("sh")
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "building {name}");
    std::fs::remove_dir_all(&src).unwrap();
    out
}

/// Bytes allocated under `p` (`du -s -B1`): what the image would really cost on disk.
fn du(p: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(p)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn an_image_over_max_unpacked_size_is_refused_and_leaves_nothing() {
    let started = Instant::now();
    let d = TestDaemon::start();
    let tmp = TempDir::new("cairn-unpack");
    d.import_busybox("bb");

    // A bad value is a 400 naming the key; nothing is stored.
    let (code, body) = d.http(
        "PATCH",
        "/1.0",
        Some(br#"{"config":{"images.max_unpacked_size":"lots"}}"#),
    );
    assert_eq!(code, 400, "{body}");
    let err = json(&body)["error"].as_str().unwrap_or("").to_string();
    assert!(
        err.starts_with("Invalid value for images.max_unpacked_size: \"lots\""),
        "{err}"
    );
    let e = d.incus_err(&["config", "set", "images.max_unpacked_size", "0"]);
    assert!(e.contains("must be more than 0"), "{e}");
    d.incus_ok(&["config", "set", "images.max_unpacked_size", "256MiB"]);
    assert_eq!(
        d.incus_ok(&["config", "get", "images.max_unpacked_size"])
            .trim(),
        "256MiB"
    );

    // 100 MiB that fits (written, then removed) and 2 GiB that does not.
    let t = Instant::now();
    let bomb = zeros_image(
        tmp.path(),
        "bomb",
        &[("a-fits", 100 * MIB), ("b-zeros", 2048 * MIB)],
    );
    let bomb_size = std::fs::metadata(&bomb).unwrap().len();
    eprintln!(
        "bomb: {:.1} MiB compressed, 2148 MiB unpacked, built in {:.1} s",
        bomb_size as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );
    assert!(bomb_size < 16 * MIB, "{bomb_size}");

    let pool_images = d.state.join("storage-pools/default/images");
    let before_pool = names(&pool_images);
    let before_store = names(&d.state.join("images"));
    let before = du(&d.state);

    // Through the incus CLI, as a user would.
    let t = Instant::now();
    let e = d.incus_err(&["image", "import", bomb.to_str().unwrap(), "--alias", "bomb"]);
    assert!(
        e.contains("Image unpacks to more than images.max_unpacked_size (256.00MiB)"),
        "{e}"
    );
    eprintln!(
        "refused in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        e.trim()
    );

    // Through the API: the upload is accepted as an operation, which fails (status 400,
    // as for every image the unpacker refuses) with the same message.
    let upload = std::fs::read(&bomb).unwrap();
    let (code, body) = d.http("POST", "/1.0/images", Some(&upload));
    assert_eq!(code, 202, "{body}");
    let op = json(&body)["operation"].as_str().unwrap().to_string();
    let (code, body) = d.http("GET", &format!("{op}/wait?timeout=60"), None);
    assert_eq!(code, 200, "{body}");
    let meta = &json(&body)["metadata"];
    assert_eq!(meta["status"], "Failure", "{body}");
    assert_eq!(meta["status_code"], 400, "{body}");
    assert_eq!(
        meta["err"], "Image unpacks to more than images.max_unpacked_size (256.00MiB)",
        "{body}"
    );

    // Nothing left: no volume or staging dir in the pool, no upload in the store, and the
    // state dir uses what it used before (1 MiB of slack for the database and logs).
    assert_eq!(names(&pool_images), before_pool, "pool leftovers");
    assert_eq!(
        names(&d.state.join("images")),
        before_store,
        "store leftovers"
    );
    let after = du(&d.state);
    eprintln!(
        "state dir: {:.1} MiB before, {:.1} MiB after",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64
    );
    assert!(
        after <= before + MIB,
        "state dir grew from {before} to {after} bytes"
    );

    // The daemon still serves, the earlier image is intact and usable, the bomb unrecorded.
    let list = d.incus_ok(&["image", "list", "--format", "csv", "-c", "lfd"]);
    assert!(list.contains("bb,"), "{list}");
    assert!(!list.contains("zeros"), "{list}");
    assert_eq!(list.lines().count(), 1, "{list}");
    d.incus_ok(&["init", "bb", "c1"]);
    d.incus_ok(&["delete", "c1"]);

    // Unset, the key is gone from the config and the default applies again.
    d.incus_ok(&["config", "unset", "images.max_unpacked_size"]);
    let (_, body) = d.http("GET", "/1.0", None);
    assert!(json(&body)["metadata"]["config"]
        .get("images.max_unpacked_size")
        .is_none());
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}

/// The other unpack path: an image already stored, unpacked into a second pool on first
/// use there. That pool's free space (less its reserve) bounds the unpack.
#[test]
fn an_image_that_does_not_fit_a_pool_is_refused_there_and_leaves_nothing() {
    let started = Instant::now();
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (a btrfs loop pool); scripts/test.sh runs as root"
    );
    let d = TestDaemon::start();
    let _guard = MountGuard(d.state.join("storage-pools/small"));
    let tmp = TempDir::new("cairn-unpack");

    // 1 GiB of zeros fits the default (dir) pool but not a 512 MiB btrfs pool.
    let image = zeros_image(tmp.path(), "gig", &[("zeros", 1024 * MIB)]);
    let t = Instant::now();
    d.incus_ok(&["image", "import", image.to_str().unwrap(), "--alias", "gig"]);
    // Really unpacked, every zero on disk: this is what a bomb would cost without a limit.
    let in_default = du(&d.state.join("storage-pools/default/images"));
    eprintln!(
        "imported in {:.1} s, {:.1} MiB in the default pool",
        t.elapsed().as_secs_f64(),
        in_default as f64 / MIB as f64
    );
    assert!(in_default >= 1024 * MIB, "{in_default}");
    d.incus_ok(&["storage", "create", "small", "btrfs", "size=512MiB"]);
    let space = || {
        let res = json(&d.incus_ok(&["query", "/1.0/storage-pools/small/resources"]));
        res["space"]["used"].as_u64().unwrap()
    };
    let used_before = space();
    let small_images = d.state.join("storage-pools/small/images");
    let before = names(&small_images);

    let t = Instant::now();
    let e = d.incus_err(&["init", "gig", "c1", "--storage", "small"]);
    assert!(
        e.contains("Image would not fit in storage pool \"small\": it unpacks to more than")
            && e.contains("kept in reserve)"),
        "{e}"
    );
    eprintln!(
        "refused in {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        e.trim()
    );

    // No volume or staging subvolume in the pool, no instance, the image still recorded and
    // still in the default pool.
    assert_eq!(names(&small_images), before, "pool leftovers");
    let used_after = space();
    eprintln!(
        "pool small: {:.1} MiB used before, {:.1} MiB after",
        used_before as f64 / MIB as f64,
        used_after as f64 / MIB as f64
    );
    assert!(
        used_after <= used_before + 4 * MIB,
        "pool grew from {used_before} to {used_after} bytes"
    );
    assert_eq!(d.incus_ok(&["list", "--format", "csv"]).trim(), "");
    assert!(d
        .incus_ok(&["image", "list", "--format", "csv"])
        .contains("gig,"));

    d.incus_ok(&["image", "delete", "gig"]);
    d.incus_ok(&["storage", "delete", "small"]);
    eprintln!("test took {:.1} s", started.elapsed().as_secs_f64());
}
