#!/usr/bin/env bash
# Installs what building and testing cairnd needs on a Debian 12 host: liblxc and its headers
# (bindgen reads them), libclang, busybox-static (test images), lxcfs, uidmap, dnsmasq-base
# (the DHCP server of the DHCP client test and of managed bridge networks), nftables (their
# NAT), btrfs-progs (the btrfs storage driver), fdisk (sfdisk: a zfs pool's disk is
# partitioned by cairnd), ethtool (the OVN cluster test turns a container's checksum offload
# off for TCP over OVS's userspace datapath), a root subordinate id range, the real incus
# CLI (Debian trixie's incus-client), pylxd in a venv, and OVN with Open vSwitch
# (ovn-central, ovn-host, openvswitch-switch: the OVN tests run their own daemons; the
# packages' services are not started).
# Idempotent; safe to run on every CI start.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CAIRN_CACHE:-/var/cache/cairn}
mkdir -p "$cache"

pkgs=(lxc lxc-dev liblxc1 libclang-dev clang busybox-static lxcfs uidmap iproute2 pkg-config
      ca-certificates curl python3 openssh-client dnsmasq-base nftables btrfs-progs
      fdisk ethtool)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ovn-central (ovsdb-server, ovn-northd, ovn-nbctl), ovn-host (ovn-controller) and
# openvswitch-switch (ovs-vswitchd) for the OVN tests, which run their own daemons on unix
# sockets in a temporary directory inside a network namespace: the packages' services must
# not start on this host, so invoke-rc.d is told no for the install (unless a policy exists).
ovn_missing=()
for p in ovn-central ovn-host openvswitch-switch; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || ovn_missing+=("$p")
done
if [ ${#ovn_missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${ovn_missing[*]} (their services left stopped)"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${ovn_missing[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# liblxc insists on a subordinate range for root once newuidmap is installed.
for f in /etc/subuid /etc/subgid; do
  grep -q '^root:' "$f" 2>/dev/null || echo 'root:1000000:1000000000' >> "$f"
done

"$here/incus-client.sh" >/dev/null

# pylxd in its own venv: Debian's python refuses system-wide pip installs.
venv=$cache/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pylxd' 2>/dev/null; then
  python3 -m venv "$venv" 2>/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q --disable-pip-version-check pylxd
fi
echo "install-deps: done"
