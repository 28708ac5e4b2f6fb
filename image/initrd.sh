#!/usr/bin/env bash
# Makes the lean initrd: cairn-init (static) as /init, and the kernel modules needed to find
# and verify the root (NVMe, virtio, device-mapper + dm-verity, erofs), decompressed and
# listed in load order in /etc/cairn/initrd-modules.
#   initrd.sh INIT_BINARY KERNEL_TREE KVER OUTPUT
set -euo pipefail
init_bin=$1 ktree=$2 kver=$3 output=$4
mdir=$ktree/usr/lib/modules/$kver
[ -d "$mdir" ] || mdir=$ktree/lib/modules/$kver
# libcrc32c (erofs) needs a crc32c implementation at init: its softdep, loaded first.
# The root's needs, then what PID 1 needs before udev and modprobe are worth starting: the
# data filesystem (ext4, and loop for its first-boot creation), the seed's sources
# (qemu_fw_cfg, vfat), lxcfs's fuse, a virtual NIC and the ACPI power button (button,
# evdev: a power-off asked for right after boot must not be lost while the host modules
# load). Loaded here with finit_module, each costs milliseconds; an exec of modprobe in the
# root costs most of a second under TCG.
want=(nvme virtio_blk virtio_pci crc32c_generic crc32c_intel dm_verity erofs
      ext4 loop qemu_fw_cfg vfat fuse virtio_net button evdev)
# Debian's package ships no modules.dep: make it (the host's depmod reads trixie's modules).
if [ ! -s "$mdir/modules.dep" ]; then
  depmod -b "$ktree/usr" "$kver" 2>/dev/null || depmod -b "$ktree" "$kver"
fi
[ -s "$mdir/modules.dep" ] || { echo "initrd: no modules.dep in $mdir" >&2; exit 1; }

stage=$(mktemp -d); trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,sysroot,run,etc/cairn,lib/modules}
install -m 0755 "$init_bin" "$stage/init"
: > "$stage/etc/initrd-release"

# Resolve dependencies from modules.dep, depth first, so each module comes after its deps.
declare -A seen
order=()
resolve() {
  local name=$1 line path deps d
  line=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$mdir/modules.dep" | head -1 || true)
  if [ -z "$line" ]; then
    grep -qE "/${name//_/[_-]}\.ko$" "$mdir/modules.builtin" || echo "initrd: module $name not found" >&2
    return 0
  fi
  path=${line%%:*}
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  deps=${line#*:}
  for d in $deps; do
    d=$(basename "$d"); d=${d%%.ko*}
    resolve "$d"
  done
  order+=("$path")
}
for m in "${want[@]}"; do resolve "$m"; done

for path in "${order[@]}"; do
  base=$(basename "$path")
  case $base in
    *.ko.xz) xz -dc "$mdir/$path" > "$stage/lib/modules/${base%.xz}";;
    *.ko.zst) zstd -qdc "$mdir/$path" > "$stage/lib/modules/${base%.zst}";;
    *.ko.gz) gzip -dc "$mdir/$path" > "$stage/lib/modules/${base%.gz}";;
    *) cp "$mdir/$path" "$stage/lib/modules/$base";;
  esac
  b=${base%%.ko*}
  echo "$b.ko" >> "$stage/etc/cairn/initrd-modules"
done
echo "initrd: modules: $(tr '\n' ' ' < "$stage/etc/cairn/initrd-modules")" >&2
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | zstd -q -19 -T0 -f -o "$output"
echo "initrd: $(du -h --apparent-size "$output" | cut -f1) $output" >&2
