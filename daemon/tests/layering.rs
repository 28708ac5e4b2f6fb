//! The layering rules of ARCHITECTURE.md, checked on the source text so that breaking one
//! fails a test instead of waiting for a review.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, as (path relative to `src/`, text).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}")) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "found only {} files under {src:?}",
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, text)
        })
        .collect()
}

/// Test code may build databases and fixtures any way it likes: a file's lines from its
/// first `#[cfg(test)]` on, and files that only exist for tests, are not checked.
fn non_test_lines(rel: &str, text: &str) -> Vec<(usize, String)> {
    let test_file = rel.ends_with("tests.rs")
        || rel.contains("/tests/")
        || rel.starts_with("tests/")
        || rel.ends_with("test_support.rs");
    if test_file {
        return Vec::new();
    }
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

/// Whether `line` applies a `Command` to a database without going through the write path.
fn applies_command(line: &str) -> bool {
    if line.contains("apply_unreplicated") || line.contains(".apply_all(") {
        return true;
    }
    line.match_indices(".apply(").any(|(i, m)| {
        let arg = line[i + m.len()..].trim_start_matches(['&', '[', ' ']);
        let arg = arg.strip_prefix("vec![").unwrap_or(arg);
        arg.starts_with("Command::")
            || arg.starts_with("db::Command::")
            || arg.starts_with("crate::db::Command::")
    })
}

#[test]
fn commands_are_applied_only_by_the_db_and_the_daemons_write_path() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        if rel.starts_with("db/") || rel == "daemon.rs" {
            continue;
        }
        for (n, line) in non_test_lines(&rel, &text) {
            if applies_command(&line) {
                bad.push(format!("src/{rel}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "replicated state changes only through Daemon::write; these apply commands to \
         one member's database:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_apply_check_sees_what_it_must() {
    assert!(applies_command("d.db.apply_unreplicated(&cmds)?;"));
    assert!(applies_command("d2.db.apply(&Command::UpdateImage(r))"));
    assert!(applies_command("db.apply_all(&cmds)?;"));
    assert!(!applies_command("crate::preseed::apply(&d).await"));
    assert!(!applies_command(
        "d.write(vec![Command::UpdateImage(r)]).await"
    ));
}

/// Whether `path` (relative to `src/`) may serve HTTP: the handlers and the listeners.
fn serves_http(rel: &str) -> bool {
    rel.starts_with("api/") || rel == "listener.rs"
}

/// Server-side HTTP types: axum (all of it) and hyper's server, service and upgrade parts.
/// The member-to-member client (`cluster/peer.rs`) may use `http`, `http_body_util` and
/// hyper's client types.
const SERVER_HTTP: &[&str] = &[
    "axum",
    "hyper::server",
    "hyper::service",
    "hyper::upgrade",
    "hyper_util::server",
    "hyper_util::service",
];

#[test]
fn http_server_types_stay_in_api_and_the_listener() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        if serves_http(&rel) {
            continue;
        }
        for (n, line) in non_test_lines(&rel, &text) {
            if let Some(t) = SERVER_HTTP.iter().find(|t| line.contains(*t)) {
                bad.push(format!("src/{rel}:{n}: {t}: {}", line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "services and the cluster core never see the HTTP server's types (give them a \
         byte stream, a typed request or an error enum, and convert in api/):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_wiring_imports_the_api() {
    let mut bad = Vec::new();
    for (rel, text) in sources() {
        if rel.starts_with("api/") || rel == "cli.rs" || rel == "main.rs" {
            continue;
        }
        for (n, line) in non_test_lines(&rel, &text) {
            let imports_api = line.contains("crate::api")
                || (line.contains("use crate::{") && line.contains("api"));
            if imports_api {
                bad.push(format!("src/{rel}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the API layer depends on the services, never the other way round:\n{}",
        bad.join("\n")
    );
}
