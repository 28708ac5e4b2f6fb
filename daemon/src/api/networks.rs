//! `/1.0/networks`: the host's interfaces, read from sysfs. Managed networks come later.

use axum::extract::{Path, Query, State};
use serde::Serialize;

use super::response::sync;
use super::{ApiError, ApiResult, AppState, RecursionQuery};

#[derive(Serialize)]
struct NetworkView {
    name: String,
    description: String,
    #[serde(rename = "type")]
    kind: String,
    managed: bool,
    status: String,
    config: std::collections::BTreeMap<String, String>,
    used_by: Vec<String>,
    locations: Vec<String>,
    project: String,
}

fn kind_of(name: &str) -> String {
    let base = std::path::Path::new("/sys/class/net").join(name);
    if name == "lo" {
        "loopback".into()
    } else if base.join("bridge").exists() {
        "bridge".into()
    } else if base.join("bonding").exists() {
        "bond".into()
    } else if base.join("device").exists() {
        "physical".into()
    } else {
        "unknown".into()
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 15 && !n.contains('/') && n != "." && n != ".."
}

fn names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn used_by(d: &AppState, name: &str) -> Vec<String> {
    d.db.instances()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| {
            crate::instance::expand(d, i).is_ok_and(|(_, ed)| {
                ed.values()
                    .any(|dev| dev.get("parent").map(String::as_str) == Some(name))
            })
        })
        .map(|i| crate::instance::url(&i.name))
        .collect()
}

fn view(d: &AppState, name: &str) -> NetworkView {
    NetworkView {
        name: name.to_string(),
        description: String::new(),
        kind: kind_of(name),
        managed: false,
        status: String::new(),
        config: Default::default(),
        used_by: used_by(d, name),
        locations: vec![],
        project: "default".into(),
    }
}

pub async fn list(State(d): State<AppState>, Query(q): Query<RecursionQuery>) -> ApiResult {
    let names = names();
    if q.recursive() {
        return sync(names.iter().map(|n| view(&d, n)).collect::<Vec<_>>());
    }
    sync(
        names
            .iter()
            .map(|n| format!("/1.0/networks/{n}"))
            .collect::<Vec<_>>(),
    )
}

pub async fn get_one(State(d): State<AppState>, Path(name): Path<String>) -> ApiResult {
    if !valid_name(&name) || !names().contains(&name) {
        return Err(ApiError::not_found("Network not found"));
    }
    sync(view(&d, &name))
}
