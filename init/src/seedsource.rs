//! Where the seed comes from: the copy on /var (kept from the first boot), the ESP, or the
//! QEMU fw_cfg entry `opt/cairn/seed`. The first boot copies what it found to /var.

use crate::{gpt, info};
use cairn_seed::Seed;
use nix::mount::{mount, umount, MsFlags};
use std::path::Path;

pub const KEPT: &str = "/var/lib/cairn/seed.yaml";
const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/cairn/seed/raw";
const ESP_MOUNT: &str = "/run/cairn/esp";

/// The seed and whether it was imported on this boot (first boot).
pub struct Loaded {
    pub seed: Seed,
    pub imported_from: Option<&'static str>,
}

fn parse(text: &str, from: &str) -> Option<Seed> {
    match Seed::parse(text) {
        Ok(s) => Some(s),
        Err(e) => {
            info!("seed from {from} is invalid, ignoring it: {e}");
            None
        }
    }
}

fn from_esp(disk: &str) -> Option<String> {
    let parts = gpt::read_disk(&Path::new("/dev").join(disk)).ok()?;
    let esp = parts.iter().find(|p| p.type_guid == gpt::TYPE_ESP)?;
    let dev = Path::new("/dev").join(gpt::partition_name(disk, esp.number));
    let _ = std::fs::create_dir_all(ESP_MOUNT);
    mount(
        Some(&dev),
        ESP_MOUNT,
        Some("vfat"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .ok()?;
    let text = std::fs::read_to_string(Path::new(ESP_MOUNT).join("cairn/seed.yaml")).ok();
    let _ = umount(ESP_MOUNT);
    text
}

/// Loads the seed; writes the imported one to /var on first boot. Never fails: with no
/// valid seed anywhere the defaults apply.
pub fn load(boot_disk: Option<&str>) -> Loaded {
    // A blank copy is what a power cut during an older first boot could leave: import again.
    if let Some(text) = std::fs::read_to_string(KEPT)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        if let Some(seed) = parse(&text, KEPT) {
            return Loaded {
                seed,
                imported_from: None,
            };
        }
    }
    let mut found: Option<(Seed, &'static str)> = None;
    if let Ok(text) = std::fs::read_to_string(FW_CFG) {
        found = parse(&text, "fw_cfg").map(|s| (s, "fw_cfg"));
    }
    if found.is_none() {
        if let Some(text) = boot_disk.and_then(from_esp) {
            found = parse(&text, "ESP").map(|s| (s, "ESP"));
        }
    }
    let (seed, from) = found.unwrap_or_else(|| (Seed::default(), "defaults"));
    match seed.to_yaml() {
        Ok(y) => {
            // Owner-only: the seed carries the cluster's join secret.
            if let Err(e) = crate::write_durably_with_mode(Path::new(KEPT), y.as_bytes(), 0o600) {
                info!("keeping the seed in {KEPT}: {e}");
            }
        }
        Err(e) => info!("serialising the seed: {e}"),
    }
    info!("seed imported from {from}");
    Loaded {
        seed,
        imported_from: Some(from),
    }
}

/// The preseed cairnd applies on start (then renames): the HTTPS address and the trusted
/// client certificates from the seed, in the shape of `incus admin init --preseed`.
pub fn preseed_yaml(
    seed: &Seed,
    management_nic: Option<&str>,
    pool: Option<&crate::storage::DefaultPool>,
) -> String {
    #[derive(serde::Serialize)]
    struct Cert<'a> {
        name: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        certificate: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Preseed<'a> {
        config: std::collections::BTreeMap<&'a str, &'a str>,
        certificates: Vec<Cert<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        server_name: Option<&'a str>,
        /// Zero-touch cluster formation: cairnd announces itself and forms or joins.
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<cairn_seed::Cluster>,
        /// The `default` pool cairnd makes at its first start.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        storage_pools: Vec<Pool<'a>>,
        /// The instances' network cairnd makes at its first start (the default profile's
        /// eth0 goes on it).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        networks: Vec<Net>,
        /// The network the default profile's eth0 goes on (the OVN one in a cluster).
        #[serde(skip_serializing_if = "Option::is_none")]
        default_network: Option<&'a str>,
        /// In a cluster: cairnd runs this member's part of the cluster's OVN.
        #[serde(skip_serializing_if = "Option::is_none")]
        ovn: Option<Ovn>,
    }
    #[derive(serde::Serialize)]
    struct Ovn {}
    #[derive(serde::Serialize)]
    struct Pool<'a> {
        name: &'a str,
        driver: &'a str,
        config: std::collections::BTreeMap<&'a str, &'a str>,
    }
    let p = Preseed {
        config: [("core.https_address", seed.trust.https_address.as_str())]
            .into_iter()
            .collect(),
        certificates: seed
            .trust
            .client_certificates
            .iter()
            .map(|c| Cert {
                name: &c.name,
                kind: "client",
                certificate: &c.certificate,
            })
            .collect(),
        server_name: seed.hostname.as_deref(),
        cluster: seed.cluster.clone().map(|mut c| {
            if c.interface.is_none() {
                c.interface = management_nic.map(String::from);
            }
            c
        }),
        storage_pools: pool
            .map(|p| Pool {
                name: "default",
                driver: &p.driver,
                config: p
                    .config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            })
            .into_iter()
            .collect(),
        networks: instance_networks(seed),
        default_network: match seed.network.instances.resolved_kind(seed.cluster.is_some()) {
            "ovn" => Some(seed.network.instances.ovn.name.as_str()),
            _ => None,
        },
        ovn: seed.cluster.as_ref().map(|_| Ovn {}),
    };
    serde_yaml::to_string(&p).unwrap_or_default()
}

/// A network of the preseed (cairnd's `PreseedNetwork`).
#[derive(serde::Serialize, Debug)]
struct Net {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    config: std::collections::BTreeMap<&'static str, String>,
}

/// The seed's instance networks as cairnd makes them at its first start: the NAT bridge;
/// for OVN also an `UPLINK` (on that bridge, or the seed's physical uplink) and the OVN
/// network on it.
fn instance_networks(seed: &Seed) -> Vec<Net> {
    let n = &seed.network.instances;
    let kind = n.resolved_kind(seed.cluster.is_some());
    if kind == "none" {
        return vec![];
    }
    let mut out = vec![Net {
        name: n.name.clone(),
        kind: "bridge",
        config: [
            ("ipv4.address", n.ipv4_address.clone()),
            ("ipv4.nat", "true".into()),
            ("ipv6.address", "none".into()),
        ]
        .into_iter()
        .collect(),
    }];
    if kind != "ovn" {
        return out;
    }
    let uplink = match &n.ovn.uplink {
        // Gateway, DNS and the routers' range come from the bridge at the first start.
        None => [("parent", n.name.clone())].into_iter().collect(),
        Some(u) => {
            let mut c: std::collections::BTreeMap<&'static str, String> = [
                ("parent", u.parent.clone()),
                ("ipv4.gateway", u.gateway.clone()),
                ("ipv4.ovn.ranges", u.ranges.clone()),
            ]
            .into_iter()
            .collect();
            if !u.nameservers.is_empty() {
                let list: Vec<String> = u.nameservers.iter().map(|a| a.to_string()).collect();
                c.insert("dns.nameservers", list.join(","));
            }
            c
        }
    };
    out.push(Net {
        name: "UPLINK".into(),
        kind: "physical",
        config: uplink,
    });
    out.push(Net {
        name: n.ovn.name.clone(),
        kind: "ovn",
        config: [("network", "UPLINK".to_string())].into_iter().collect(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preseed_has_address_and_certificates() {
        let seed = Seed::parse(
            "trust:\n  client_certificates:\n    - name: lab\n      certificate: \"-----BEGIN CERTIFICATE-----\\nMII\\n-----END CERTIFICATE-----\"\n",
        )
        .unwrap();
        let y = preseed_yaml(&seed, None, None);
        let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
        assert_eq!(v["config"]["core.https_address"], ":8443");
        assert_eq!(v["certificates"][0]["name"], "lab");
        assert_eq!(v["certificates"][0]["type"], "client");
        // Standalone: no OVN control plane.
        assert!(v.get("ovn").is_none(), "{y}");
        // With nothing in the seed, the instances get a NAT bridge.
        assert_eq!(v["networks"][0]["name"], "cairnbr0");
        assert_eq!(v["networks"][0]["config"]["ipv4.address"], "auto");
        assert_eq!(v["networks"][0]["config"]["ipv4.nat"], "true");
        let none = Seed::parse("network:\n  instances:\n    type: none\n").unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&preseed_yaml(&none, None, None)).unwrap();
        assert!(v.get("networks").is_none(), "{v:?}");
    }

    #[test]
    fn a_cluster_seed_announces_on_the_management_nic_unless_it_names_one() {
        let seed = Seed::parse(
            "hostname: n1\ncluster:\n  name: lab\n  secret: \"0123456789abcdef\"\n  founders: 3\n",
        )
        .unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&preseed_yaml(&seed, Some("enp0s4"), None)).unwrap();
        assert_eq!(v["server_name"], "n1");
        assert_eq!(v["cluster"]["interface"], "enp0s4");
        assert_eq!(v["cluster"]["founders"], 3);
        // A cluster runs its OVN control plane, and its instances are on an OVN network
        // over an uplink on the NAT bridge.
        assert!(v["ovn"].is_mapping(), "{v:?}");
        assert_eq!(v["networks"][0]["name"], "cairnbr0");
        assert_eq!(v["networks"][1]["name"], "UPLINK");
        assert_eq!(v["networks"][1]["type"], "physical");
        assert_eq!(v["networks"][1]["config"]["parent"], "cairnbr0");
        assert_eq!(v["networks"][2]["type"], "ovn");
        assert_eq!(v["networks"][2]["config"]["network"], "UPLINK");
        assert_eq!(v["default_network"], "ovn0");
        let bridge = Seed::parse(
            "cluster:\n  name: lab\n  secret: \"0123456789abcdef\"\n  founders: 3\nnetwork:\n  instances:\n    type: bridge\n",
        )
        .unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&preseed_yaml(&bridge, None, None)).unwrap();
        assert_eq!(v["networks"].as_sequence().map(Vec::len), Some(1), "{v:?}");
        assert!(v.get("default_network").is_none());
        let named = Seed::parse(
            "cluster:\n  name: lab\n  secret: \"0123456789abcdef\"\n  founders: 1\n  interface: eth9\n",
        )
        .unwrap();
        let v: serde_yaml::Value =
            serde_yaml::from_str(&preseed_yaml(&named, Some("enp0s4"), None)).unwrap();
        assert_eq!(v["cluster"]["interface"], "eth9");
        assert!(v.get("server_name").is_none());
    }
}
