#!/usr/bin/env bash
# Installs what building the Cairn image and booting it under QEMU needs on a Debian 12
# (bookworm) host. Idempotent: re-running it only installs what is missing.
#
# mkosi 24.3, systemd/systemd-boot/ukify (>= 254, for bootctl and the UKI stub), udev and
# qemu-system-x86 10 come from bookworm-backports: bookworm's own mkosi (14) is too old and
# its qemu-system 7.2 conflicts with the backports qemu-utils that mkosi pulls in.
set -euo pipefail

log() { echo "install-deps: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  log "must run as root"; exit 1
fi

bpo=/etc/apt/sources.list.d/cairn-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 | awk '{print $2}')
  uri=${uri:-http://deb.debian.org/debian}
  log "adding bookworm-backports ($uri)"
  cat > "$bpo" <<SRC
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

bpo_pkgs=(mkosi systemd systemd-boot systemd-boot-efi systemd-ukify systemd-container systemd-repart
          udev libudev1 libsystemd0 libsystemd-shared qemu-system-x86 qemu-utils qemu-system-data)
std_pkgs=(ovmf erofs-utils squashfs-tools dosfstools mtools cpio zstd xz-utils bubblewrap kmod
          python3-pefile e2fsprogs cryptsetup-bin libcryptsetup12 openssl curl ca-certificates
          debian-archive-keyring apt dpkg-dev socat gdisk fdisk)

missing=()
for p in "${bpo_pkgs[@]}" "${std_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# An installed mkosi older than 24 (bookworm's 14) must be replaced by the backport.
if command -v mkosi >/dev/null && ! mkosi --version 2>/dev/null | grep -Eq 'mkosi (2[4-9]|[3-9][0-9])'; then
  missing+=(mkosi)
fi

# Fresh machines may have no package lists yet.
if [ ${#missing[@]} -gt 0 ] && [ -z "$(apt-cache madison mkosi 2>/dev/null)" ]; then
  apt-get update -qq || true
fi
# Package names differ between releases (ukify and repart are split out in some): only
# what this host's apt knows is asked for.
avail=()
for p in "${missing[@]}"; do
  if [ -n "$(apt-cache madison "$p" 2>/dev/null)" ]; then avail+=("$p"); fi
done
if [ ${#avail[@]} -eq 0 ]; then
  log "all host packages present"
else
  log "installing: ${avail[*]}"
  apt-get update -qq || true
  apt-get install -y -q -t bookworm-backports --no-install-recommends "${avail[@]}"
fi

for t in mkosi qemu-system-x86_64 qemu-img bootctl systemd-repart mkfs.erofs mcopy zstd curl openssl; do
  command -v "$t" >/dev/null || { log "missing tool after install: $t"; exit 1; }
done
command -v ukify >/dev/null || [ -x /usr/lib/systemd/ukify ] || { log "missing tool after install: ukify"; exit 1; }
log "mkosi $(mkosi --version | awk '{print $2}'), $(qemu-system-x86_64 --version | head -1)"
