//! `/`, `/1.0` (server environment and configuration), projects, and the unix-socket-only
//! `/internal/ready` and `/internal/shutdown`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::response::{check_if_match, empty, sync, sync_etag};
use super::{ApiError, ApiJson, ApiResult, AppState};
use crate::db::Command;

/// The API extensions cairnd really implements; clients switch behaviour on these.
pub const API_EXTENSIONS: &[&str] = &[
    "etag",
    "patch",
    "directory_manipulation",
    "file_delete",
    "file_append",
    "file_symlinks",
    "container_exec_signal_handling",
    "container_exec_user_group_cwd",
    "event_lifecycle",
    "operation_description",
    "instances",
    "container_full",
    "container_only_migration",
    "instance_create_start",
    "instances_state_selective_recursion",
    "explicit_trust_token",
    "api_filtering",
    "certificate_update",
    "certificate_token",
    "storage",
    "storage_api_volume_rename",
    "storage_volume_state",
    "storage_api_local_volume_handling",
    "storage_api_volume_snapshots",
    "network",
    "network_state",
    "network_leases",
    "network_type_ovn",
    "network_type_physical",
    "network_ovn_nat",
    "network_state_ovn",
    "network_state_ovn_lr",
    "network_ovn_isolated",
    "instance_nic_network",
    "container_backup",
    "clustering",
    "clustering_join",
    "clustering_join_token",
    "clustering_roles",
    "clustering_edit_roles",
    "clustering_failure_domains",
    "clustering_evacuation",
    "clustering_description",
    "clustering_config",
    "clustering_architecture",
    "clustering_server_address",
    "cluster_member_state",
    "cluster_internal_copy",
    "event_location",
    "resources",
    "resources_cpu_socket",
    "resources_gpu",
    "resources_numa",
    "resources_v2",
    "resources_disk_sata",
    "resources_disk_id",
    "resources_usb_pci",
    "resources_cpu_threads_numa",
    "resources_cpu_core_die",
    "resources_system",
    "resources_cpu_isolated",
    "resources_pci_iommu",
    "resources_disk_address",
    "resources_load",
    "resources_cpu_flags",
];

pub async fn root() -> ApiResult {
    sync(["/1.0"])
}

fn kernel() -> (String, String) {
    let u = nix::sys::utsname::uname().ok();
    let release = u
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let arch = u
        .as_ref()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_default();
    (release, arch)
}

pub(super) fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("NAME"), get("VERSION_ID"))
}

pub async fn get_server(
    State(d): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult {
    if !caller.trusted {
        return sync(json!({
            "config": {},
            "api_extensions": API_EXTENSIONS,
            "api_status": "stable",
            "api_version": "1.0",
            "auth": "untrusted",
            "public": false,
            "auth_methods": ["tls"],
            "auth_user_name": "",
            "auth_user_method": "",
            "environment": {
                "addresses": null, "architectures": null, "certificate": "",
                "certificate_fingerprint": "", "driver": "", "driver_version": "",
                "firewall": "", "kernel": "", "kernel_architecture": "", "kernel_features": null,
                "kernel_version": "", "lxc_features": null, "os_name": "", "os_version": "",
                "project": "", "server": "", "server_clustered": false, "server_event_mode": "",
                "server_name": "", "server_pid": 0, "server_version": "", "storage": "",
                "storage_version": "", "storage_supported_drivers": null
            }
        }));
    }
    let config = server_config(&d)?;
    let (kernel_version, arch) = kernel();
    let (os_name, os_version) = os_release();
    let addresses: Vec<String> = d.https.address().into_iter().collect();
    let storage_in_use: Vec<String> =
        d.db.pools()?
            .into_iter()
            .map(|p| p.driver)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
    let body = json!({
        "config": config,
        "api_extensions": API_EXTENSIONS,
        "api_status": "stable",
        "api_version": "1.0",
        "auth": "trusted",
        "public": false,
        "auth_methods": ["tls"],
        "auth_user_name": if caller.method == "unix" { "root".to_string() } else { caller.fingerprint.clone().unwrap_or_default() },
        "auth_user_method": caller.method,
        "environment": {
            "addresses": addresses,
            "architectures": [arch.clone()],
            "certificate": d.cert().pem(),
            "certificate_fingerprint": d.cert().fingerprint(),
            "driver": "lxc",
            "driver_version": crate::instance::lxc::version(),
            "firewall": "nftables",
            "kernel": "Linux",
            "kernel_architecture": arch,
            "kernel_features": {},
            "kernel_version": kernel_version,
            "lxc_features": {"cgroup2": if d.host.cgroup2_only { "true" } else { "false" }},
            "os_name": os_name,
            "os_version": os_version,
            "project": "default",
            "server": "cairn",
            "server_clustered": d.cluster().is_some(),
            "server_event_mode": "full-mesh",
            "server_name": d.server_name(),
            "server_pid": std::process::id(),
            "server_version": env!("CARGO_PKG_VERSION"),
            "storage": storage_in_use.join(" | "),
            "storage_version": storage_in_use.iter().map(|n| driver_version(n)).collect::<Vec<_>>().join(" | "),
            "storage_supported_drivers": crate::storage::available().iter().map(|n| json!({
                "Name": n, "Version": driver_version(n), "Remote": false,
            })).collect::<Vec<_>>(),
        }
    });
    sync_etag(body, &config)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPut {
    #[serde(default, deserialize_with = "crate::api::nullable")]
    config: BTreeMap<String, serde_json::Value>,
}

/// Server keys cairnd knows; anything else is refused.
fn check_server_key(key: &str, value: &str) -> Result<(), ApiError> {
    match key {
        "core.https_address" | "cluster.https_address" => {
            if value.contains(char::is_whitespace) {
                return Err(ApiError::bad_request(format!(
                    "Invalid value for core.https_address: {value:?}"
                )));
            }
            Ok(())
        }
        // Server `user.*` keys never reach LXC, but they are listed and exported: the
        // instance keys' grammar keeps control characters out of key names there too
        // (values may span lines, as in Incus).
        k if k.starts_with("user.") => {
            crate::validate::config_key_name(k).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        "core.https_tls12" => match value {
            "" | "true" | "false" => Ok(()),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value for core.https_tls12: {value:?} (true or false)"
            ))),
        },
        crate::network::ovn::NB_KEY => {
            crate::network::ovn::check_nb_connection(value).map_err(ApiError::bad_request)
        }
        "cluster.max_voters" => match value.parse::<u64>() {
            Ok(v) if v >= 3 && v % 2 == 1 => Ok(()),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value for cluster.max_voters: {value:?} (an odd number, at least 3)"
            ))),
        },
        "cluster.max_standby" => match value.parse::<u64>() {
            Ok(v) if v <= 5 => Ok(()),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value for cluster.max_standby: {value:?} (0 to 5)"
            ))),
        },
        "cluster.offline_threshold" => match value.parse::<u64>() {
            Ok(v) if v >= 1 => Ok(()),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value for cluster.offline_threshold: {value:?} (seconds, at least 1)"
            ))),
        },
        crate::image::MAX_UNPACKED_SIZE_KEY => crate::image::parse_max_unpacked_size(value)
            .map(|_| ())
            .map_err(ApiError::bad_request),
        "images.auto_update_interval" | "images.remote_cache_expiry" => value
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| ApiError::bad_request(format!("Invalid value for {key}: {value:?}"))),
        _ => Err(ApiError::bad_request(format!(
            "Unknown configuration key: {key}"
        ))),
    }
}

/// Go clients send numbers and booleans in config maps as JSON strings, but tools may not.
fn as_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The server's configuration as the API shows it: the (possibly replicated) database's
/// keys and this member's node-local ones. A node-local key still in the database (left
/// by an older cairnd, see `LocalConfig::open`) is ignored: `local.json` owns it.
pub fn server_config(d: &AppState) -> Result<BTreeMap<String, String>, ApiError> {
    let mut config = d.db.server_config()?;
    config.retain(|k, _| !crate::local_config::is_local_key(k));
    config.extend(d.local.all());
    Ok(config)
}

async fn apply_config(d: &AppState, new: BTreeMap<String, String>, replace: bool) -> ApiResult {
    let old = server_config(d)?;
    for (k, v) in &new {
        check_server_key(k, v)?;
    }
    let mut cmds = Vec::new();
    for (k, v) in &new {
        if old.get(k) != Some(v) {
            cmds.push(Command::SetServerConfig {
                key: k.clone(),
                value: (!v.is_empty()).then(|| v.clone()),
            });
        }
    }
    if replace {
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            cmds.push(Command::SetServerConfig {
                key: k.clone(),
                value: None,
            });
        }
    }
    let tls12_changed = cmds
        .iter()
        .any(|c| matches!(c, Command::SetServerConfig { key, .. } if key == "core.https_tls12"));
    let https_changed = cmds
        .iter()
        .any(|c| matches!(c, Command::SetServerConfig { key, .. } if key == "core.https_address"));
    if https_changed {
        // Bind first: a bad address must fail the request and change nothing.
        let want = if replace {
            new.get("core.https_address").cloned()
        } else {
            new.get("core.https_address")
                .cloned()
                .or_else(|| old.get("core.https_address").cloned())
        };
        crate::listener::apply_https_address(&d.daemon, want.as_deref())
            .await
            .map_err(ApiError::bad_request)?;
    }
    let (local, shared): (Vec<Command>, Vec<Command>) = cmds.into_iter().partition(
        |c| matches!(c, Command::SetServerConfig { key, .. } if crate::local_config::is_local_key(key)),
    );
    for c in local {
        if let Command::SetServerConfig { key, value } = c {
            d.local
                .set(&key, value.as_deref())
                .map_err(|e| ApiError::internal(format!("saving {key}: {e}")))?;
        }
    }
    if !shared.is_empty() {
        d.write(shared).await?;
    }
    if tls12_changed {
        let tls12 = d.local.get("core.https_tls12").as_deref() == Some("true");
        d.https
            .set_tls12(tls12, &d.cert())
            .map_err(|e| ApiError::internal(format!("applying core.https_tls12: {e}")))?;
    }
    empty()
}

/// PUT replaces the whole server config, PATCH changes only the keys it names.
async fn update_config(
    d: AppState,
    headers: HeaderMap,
    req: ServerPut,
    replace: bool,
) -> ApiResult {
    check_if_match(&headers, &server_config(&d)?)?;
    let new = req
        .config
        .iter()
        .map(|(k, v)| (k.clone(), as_string(v)))
        .collect();
    apply_config(&d, new, replace).await
}

pub async fn put_server(
    State(d): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ServerPut>,
) -> ApiResult {
    update_config(d, headers, req, true).await
}

pub async fn patch_server(
    State(d): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ServerPut>,
) -> ApiResult {
    update_config(d, headers, req, false).await
}

pub async fn projects() -> ApiResult {
    sync(["/1.0/projects/default"])
}

pub async fn project(Path(name): Path<String>) -> ApiResult {
    if name != "default" {
        return Err(ApiError::not_found("Project not found"));
    }
    sync(json!({
        "name": "default",
        "description": "Default Cairn project",
        "config": {"features.images": "true", "features.profiles": "true", "features.storage.volumes": "true"},
        "used_by": [],
    }))
}

pub async fn ready() -> ApiResult {
    empty()
}

/// `incus admin shutdown`: stops the containers, answers, then the daemon exits. The client
/// waits for this answer as the sign that the daemon is done.
pub async fn shutdown(State(d): State<AppState>) -> ApiResult {
    crate::cli::stop_all(&d.daemon).await;
    d.shutdown.send_replace(true);
    empty()
}

/// A storage driver's version as Incus reports it: the tool's for btrfs (`btrfs-progs
/// v6.2` → `6.2`), asked once; the layout's for dir.
fn driver_version(driver: &str) -> String {
    static BTRFS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match driver {
        "btrfs" => BTRFS
            .get_or_init(|| {
                crate::runner::run("btrfs", ["--version"])
                    .ok()
                    .and_then(|out| {
                        out.split_whitespace()
                            .find_map(|w| w.strip_prefix('v').map(str::to_string))
                    })
                    .unwrap_or_default()
            })
            .clone(),
        // The loaded module's version, as Incus reports it.
        "zfs" => std::fs::read_to_string("/sys/module/zfs/version")
            .map(|v| v.trim().to_string())
            .unwrap_or_default(),
        _ => "1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::check_server_key;

    #[test]
    fn server_user_keys_follow_the_key_grammar() {
        assert!(check_server_key("user.note", "two\nlines").is_ok());
        assert!(check_server_key("user.a\nb", "x").is_err());
        assert!(check_server_key("user.", "x").is_err());
        assert!(check_server_key("user.a\u{7f}", "x").is_err());
    }

    #[test]
    fn max_unpacked_size_is_a_size_string() {
        for ok in ["", "10GiB", "500MB", "1073741824", "256 MiB"] {
            assert!(
                check_server_key("images.max_unpacked_size", ok).is_ok(),
                "{ok:?}"
            );
        }
        for bad in ["lots", "0", "0GiB", "-1GiB", "1.5GiB", "10 gigs"] {
            let e = check_server_key("images.max_unpacked_size", bad).unwrap_err();
            assert!(
                e.to_string()
                    .contains("Invalid value for images.max_unpacked_size"),
                "{bad:?}: {e}"
            );
        }
    }
}
