//! Hostile entries: escaping paths, symlink tricks, hard links out of the tree, device nodes.

use super::*;

#[test]
fn absolute_paths_are_refused_and_nothing_lands_outside() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned");
    let name = target.to_str().unwrap().to_string();
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .file(&name, 0o644, b"x")
        .finish();
    let (_dir, result) = unpack(&gzip(&tar));
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(!target.exists());
}

#[test]
fn dotdot_components_are_refused() {
    for name in [
        "rootfs/../../escape",
        "../escape",
        "rootfs/a/../b",
        "./rootfs/..",
    ] {
        let tar = Tarball::new().metadata().file(name, 0o644, b"x").finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::HostilePath { .. }),
            "{name}: {err}"
        );
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}

#[test]
fn writing_through_a_symlink_entry_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .symlink("rootfs/evil", outside.path().to_str().unwrap())
        .file("rootfs/evil/pwned", 0o644, b"owned")
        .finish();
    let (dir, result) = unpack(&gzip(&tar));
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
    assert!(err.to_string().contains("rootfs/evil/pwned"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // The symlink entry itself is kept as written.
    assert_eq!(
        std::fs::read_link(dir.path().join("rootfs/evil")).unwrap(),
        outside.path()
    );
}

#[test]
fn directory_entry_through_a_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .symlink("rootfs/evil", outside.path().to_str().unwrap())
        .dir("rootfs/evil/sub/", 0o755)
        .finish();
    let (_dir, result) = unpack(&tar);
    assert!(matches!(
        result.unwrap_err(),
        UnpackError::HostilePath { .. }
    ));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_symlinked_tree_top_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let tar = Tarball::new()
        .metadata()
        .symlink("rootfs", outside.path().to_str().unwrap())
        .file("rootfs/pwned", 0o644, b"x")
        .finish();
    let (_dir, result) = unpack(&tar);
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::Refused { .. }), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"original").unwrap();
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .symlink("rootfs/etc-passwd", victim.to_str().unwrap())
        .file("rootfs/etc-passwd", 0o644, b"overwritten")
        .finish();
    let (dir, result) = unpack(&tar);
    result.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"original");
    assert_eq!(
        std::fs::read(dir.path().join("rootfs/etc-passwd")).unwrap(),
        b"overwritten"
    );
}

#[test]
fn hard_links_out_of_the_tree_are_refused() {
    let cases = [
        ("/etc/passwd", "absolute"),
        ("../../etc/passwd", "`..`"),
        ("rootfs/../metadata.yaml", "`..`"),
        ("metadata.yaml", "outside"),
        ("templates/t.tpl", "outside"),
    ];
    for (target, expected) in cases {
        let tar = Tarball::new()
            .metadata()
            .dir("templates/", 0o755)
            .file("templates/t.tpl", 0o644, b"t")
            .dir("rootfs/", 0o755)
            .hardlink("rootfs/link", target)
            .finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::HostilePath { .. }),
            "{target}: {err}"
        );
        assert!(err.to_string().contains(expected), "{target}: {err}");
        assert!(!dir.path().join("rootfs/link").exists());
    }
}

#[test]
fn hard_link_through_a_symlink_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .symlink("rootfs/evil", outside.path().to_str().unwrap())
        .hardlink("rootfs/stolen", "rootfs/evil/secret")
        .finish();
    let (dir, result) = unpack(&tar);
    let err = result.unwrap_err();
    assert!(matches!(err, UnpackError::HostilePath { .. }), "{err}");
    assert!(!dir.path().join("rootfs/stolen").exists());
    assert_eq!(
        std::fs::metadata(outside.path().join("secret"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn hard_link_to_a_missing_entry_is_refused() {
    let tar = Tarball::new()
        .metadata()
        .dir("rootfs/", 0o755)
        .hardlink("rootfs/link", "rootfs/nowhere/file")
        .finish();
    let (_dir, result) = unpack(&tar);
    assert!(matches!(result.unwrap_err(), UnpackError::Refused { .. }));
}

#[test]
fn device_nodes_are_refused_even_outside_the_trees() {
    for (name, kind) in [
        ("rootfs/dev/sda", tar::EntryType::Block),
        ("rootfs/dev/mem", tar::EntryType::Char),
        ("stray-device", tar::EntryType::Char),
    ] {
        let tar = Tarball::new()
            .metadata()
            .dir("rootfs/", 0o755)
            .node(name, kind)
            .finish();
        let (dir, result) = unpack(&tar);
        let err = result.unwrap_err();
        assert!(
            matches!(err, UnpackError::DeviceNode { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
        assert!(!dir.path().join(name).exists());
    }
}
