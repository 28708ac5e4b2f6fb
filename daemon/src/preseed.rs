//! `<state>/preseed.yaml`: configuration handed to cairnd before it starts, with no API call
//! (cairn-init writes it from the seed on the appliance). Applied at every start; applying it
//! again changes nothing.
//!
//! ```yaml
//! config:
//!   core.https_address: ":8443"
//! certificates:
//!   - name: admin
//!     type: client
//!     certificate: "-----BEGIN CERTIFICATE-----…"
//! storage_pools:                # made at the first start only (instead of the dir default)
//!   - name: default
//!     driver: zfs
//!     config: {source: /dev/nvme1n1}
//! networks:                     # made at the first start, in this order
//!   - name: cairnbr0
//!     type: bridge
//!     config: {ipv4.address: auto, ipv4.nat: "true", ipv6.address: none}
//!   - name: UPLINK              # on a bridge above, with no ipv4.gateway: gateway, DNS
//!     type: physical            # and ipv4.ovn.ranges taken from the bridge
//!     config: {parent: cairnbr0}
//!   - name: ovn0
//!     type: ovn
//!     config: {network: UPLINK}
//! default_network: ovn0         # the default profile's eth0 (default: the first bridge or
//!                               # ovn network above; none: a bare p2p veth)
//! ovn: {}                       # in a cluster: run this member's part of the OVN control
//!                               # plane (network::ovn_services)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::daemon::Daemon;
use crate::db::Command;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Preseed {
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub certificates: Vec<PreseedCert>,
    /// This member's name in a cluster (default: the hostname).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Zero-touch cluster formation (the seed's `cluster:` section).
    #[serde(default)]
    pub cluster: Option<cairn_seed::Cluster>,
    /// Pools made at the first start, before any other (the appliance's ZFS `default`).
    #[serde(default)]
    pub storage_pools: Vec<PreseedPool>,
    /// Networks made at the first start (the appliance's `cairnbr0`).
    #[serde(default)]
    pub networks: Vec<PreseedNetwork>,
    /// The network the default profile's eth0 goes on (default: the first of `networks`
    /// that takes NICs).
    #[serde(default)]
    pub default_network: Option<String>,
    /// The appliance's OVN: present, this member runs its part of the cluster's OVN
    /// control plane (`network::ovn_services`).
    #[serde(default)]
    pub ovn: Option<PreseedOvn>,
}

/// The preseed's `ovn:` part.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct PreseedOvn {}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PreseedNetwork {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PreseedPool {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreseedCert {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub certificate: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PreseedError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, serde_yaml::Error),
    #[error("preseed: {0}")]
    Invalid(String),
}

const KNOWN_KEYS: &[&str] = &["core.https_address"];

pub fn load(path: &Path) -> Result<Option<Preseed>, PreseedError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PreseedError::Read(path.display().to_string(), e)),
    };
    let p: Preseed = serde_yaml::from_str(&text)
        .map_err(|e| PreseedError::Parse(path.display().to_string(), e))?;
    for k in p.config.keys() {
        crate::validate::config_key_name(k).map_err(|e| PreseedError::Invalid(e.to_string()))?;
        if !KNOWN_KEYS.contains(&k.as_str()) && !k.starts_with("user.") {
            return Err(PreseedError::Invalid(format!(
                "unknown configuration key {k}"
            )));
        }
    }
    for pool in &p.storage_pools {
        crate::validate::object_name(&pool.name)
            .map_err(|e| PreseedError::Invalid(format!("storage pool: {e}")))?;
        let kind = crate::storage::kind(&pool.driver)
            .map_err(|e| PreseedError::Invalid(format!("storage pool {}: {e}", pool.name)))?;
        (kind.validate)(&pool.config)
            .map_err(|e| PreseedError::Invalid(format!("storage pool {}: {e}", pool.name)))?;
    }
    for n in &p.networks {
        crate::network::manage::check_preseed(&n.name, &n.kind, &n.config)
            .map_err(|e| PreseedError::Invalid(format!("network {}: {e}", n.name)))?;
    }
    if let Some(w) = &p.default_network {
        if !p
            .networks
            .iter()
            .any(|n| &n.name == w && n.kind != "physical")
        {
            return Err(PreseedError::Invalid(format!(
                "default_network {w:?} is not one of the preseed's bridge or ovn networks"
            )));
        }
    }
    if let Some(c) = &p.cluster {
        c.validate()
            .map_err(|e| PreseedError::Invalid(e.to_string()))?;
    }
    Ok(Some(p))
}

/// Applies the node-local half of the preseed (`core.https_address`…, kept in
/// `local.json`) and returns the preseed: its replicated half ([`apply_shared`]) waits until
/// cluster membership resumed, and its cluster section is acted on once the daemon runs.
pub fn apply_local(d: &Daemon) -> Result<Option<Preseed>, PreseedError> {
    let Some(p) = load(&d.paths.state.join("preseed.yaml"))? else {
        return Ok(None);
    };
    for (k, v) in &p.config {
        if crate::local_config::is_local_key(k) && d.local.get(k).as_ref() != Some(v) {
            d.local
                .set(k, Some(v))
                .map_err(|e| PreseedError::Invalid(format!("setting {k}: {e}")))?;
        }
    }
    Ok(Some(p))
}

/// Applies the replicated half of the preseed (server keys, trusted certificates) through
/// [`Daemon::write`]: run after membership resumed, so that on a cluster member it goes
/// through the Raft log like any other write instead of into this member's replica alone.
pub async fn apply_shared(d: &Daemon, p: &Preseed) -> Result<(), PreseedError> {
    let current =
        d.db.server_config()
            .map_err(|e| PreseedError::Invalid(e.to_string()))?;
    for (k, v) in &p.config {
        if !crate::local_config::is_local_key(k) && current.get(k) != Some(v) {
            d.write(vec![Command::SetServerConfig {
                key: k.clone(),
                value: Some(v.clone()),
            }])
            .await
            .map_err(|e| PreseedError::Invalid(e.to_string()))?;
        }
    }
    for c in &p.certificates {
        if c.kind.as_deref().is_some_and(|k| k != "client") {
            return Err(PreseedError::Invalid(format!(
                "certificate {}: only client certificates",
                c.name
            )));
        }
        let der = crate::trust::parse_certificate(&c.certificate)
            .map_err(|e| PreseedError::Invalid(format!("certificate {}: {e}", c.name)))?;
        match crate::trust::add_certificate(d, &der, &c.name, false, vec![], &c.description).await {
            Ok(_) | Err(crate::trust::TrustError::Exists) => {}
            // Not a reason to refuse the whole preseed (and so the daemon's start): the
            // certificate could not be used anyway.
            Err(crate::trust::TrustError::Unusable(e)) => {
                tracing::warn!("preseed certificate {} not trusted: {e}", c.name)
            }
            Err(e) => return Err(PreseedError::Invalid(e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("preseed.yaml");
        std::fs::write(&p, "config:\n  core.https_address: \":8443\"\n").unwrap();
        assert_eq!(
            load(&p).unwrap().unwrap().config["core.https_address"],
            ":8443"
        );
        std::fs::write(&p, "config:\n  core.bogus: x\n").unwrap();
        assert!(load(&p).is_err());
        std::fs::write(
            &p,
            "storage_pools:\n- {name: default, driver: zfs, config: {source: /dev/vdb}}\n",
        )
        .unwrap();
        let pools = load(&p).unwrap().unwrap().storage_pools;
        assert_eq!(
            (pools[0].name.as_str(), pools[0].driver.as_str()),
            ("default", "zfs")
        );
        for bad in [
            "storage_pools:\n- {name: default, driver: lvm}\n",
            "storage_pools:\n- {name: default, driver: zfs, config: {bogus: x}}\n",
            "storage_pools:\n- {name: \"a/b\", driver: dir}\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(load(&p).is_err(), "{bad}");
        }
        std::fs::write(&p, "nonsense: [").unwrap();
        assert!(load(&p).is_err());
        assert!(load(&dir.path().join("missing.yaml")).unwrap().is_none());
    }
}
