//! What both benchmark binaries (bench, cluster_bench) need around the daemons they start:
//! finding the release cairnd, and cleaning up when interrupted.

use std::path::{Path, PathBuf};

/// The workspace root (the daemon crate sits in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// `$CAIRND`, else the cairnd built beside this example, else target/release/cairnd.
pub fn cairnd_path() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CAIRND") {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("cairnd")));
    let candidates = beside
        .into_iter()
        .chain([repo_root().join("target/release/cairnd")]);
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    Err("no release cairnd found: run `cargo build --release -p cairnd` or set CAIRND".into())
}

/// On Ctrl-C or SIGTERM: runs `cleanup`, then exits 130.
pub fn on_interrupt(cleanup: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                std::future::pending::<()>().await;
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("# interrupted: cleaning up");
        cleanup();
        std::process::exit(130);
    });
}
