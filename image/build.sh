#!/usr/bin/env bash
# Builds the Cairn appliance disk image.
#
#   image/build.sh [--cairnd PATH] [--out DIR]
#
# Environment: CAIRND (path to a built cairnd, or `none`; default: cargo builds it, and the
# image is built without it if that fails), CAIRN_IMAGE_CACHE (default /var/cache/cairn-image: mkosi
# caches, kernel package, output), CAIRN_ZFS=0 (skip the ZFS module stage), CARGO_TARGET_DIR.
#
# The mkosi package stage is cached (Incremental=yes): a rebuild after a Rust change only
# re-copies the binaries, remakes the initrd and the erofs/verity partitions and the UKI.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${CAIRN_IMAGE_CACHE:-/var/cache/cairn-image}
out=$cache/out
cairnd=${CAIRND:-}
while [ $# -gt 0 ]; do
  case $1 in
    --cairnd) cairnd=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "usage: $0 [--cairnd PATH] [--out DIR]" >&2; exit 2;;
  esac
done
step() { echo "image: $(date +%T) $*" >&2; }
mkdir -p "$cache" "$out"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/cargo-target}

# 1. Our binaries. cairn-init is linked statically: the same file is /init of the initrd
#    and /usr/bin/cairn-init (PID 1) of the root.
step "building cairn-init (static)"
# The target dir is shared by every checkout that builds the image (CI builds from fresh
# clones): cargo may take another checkout's build of our own crates as fresh, so those are
# always rebuilt (about 20 s); their dependencies stay cached.
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo clean -q --release -p cairn-init -p cairn-seed --target x86_64-unknown-linux-gnu \
  && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -q -p cairn-init --target x86_64-unknown-linux-gnu)
init_bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/cairn-init
if [ "$cairnd" = none ]; then
  cairnd=
  step "building without cairnd (CAIRND=none)"
elif [ -z "$cairnd" ]; then
  step "building cairnd"
  if (cd "$repo" && cargo clean -q --release -p cairnd && cargo build --release -q -p cairnd); then
    cairnd=$CARGO_TARGET_DIR/release/cairnd
  else
    step "WARNING: cairnd does not build; the image will have no API daemon"
  fi
fi

# 2. The kernel: the current trixie linux-image, pinned so the initrd's modules match.
step "resolving the trixie kernel"
kdeb_dir=$cache/kernel
"$here/trixie-apt.sh" update
kpkg=$("$here/trixie-apt.sh" depends linux-image-amd64 | grep -o 'linux-image-[0-9][^ ,]*-amd64' | head -1)
kver=${kpkg#linux-image-}
mkdir -p "$kdeb_dir"
if [ ! -d "$kdeb_dir/$kver/usr/lib/modules/$kver" ]; then
  step "fetching $kpkg"
  "$here/trixie-apt.sh" download "$kpkg" "$kdeb_dir"
  rm -rf "$kdeb_dir/$kver.tmp"; mkdir -p "$kdeb_dir/$kver.tmp"
  dpkg-deb -x "$kdeb_dir"/"$kpkg"_*.deb "$kdeb_dir/$kver.tmp"
  rm -rf "$kdeb_dir/$kver"; mv "$kdeb_dir/$kver.tmp" "$kdeb_dir/$kver"
fi

# 3. The lean initrd: cairn-init as /init plus the few modules needed to reach the root.
step "making the initrd for $kver"
"$here/initrd.sh" "$init_bin" "$kdeb_dir/$kver" "$kver" "$cache/initrd.cpio.zst"

# 3b. ZFS modules, built once per kernel in a separate throw-away tree (zfs-dkms needs
#     compilers and headers that must not be in the appliance). CAIRN_ZFS=0 skips it.
zfs_dir=$cache/zfs/$kver
if [ "${CAIRN_ZFS:-1}" != 0 ] && [ ! -f "$zfs_dir/done" ]; then
  step "building the ZFS modules for $kver (zfs-dkms: ~6-10 minutes, once per kernel)"
  mkdir -p "$cache/zfs-work" "$cache/mkosi-pkgs"
  rm -rf "$cache/zfs-out"
  mkosi -C "$here/zfs-builder" --force \
    --package-cache-dir "$cache/mkosi-pkgs" --workspace-dir "$cache/zfs-work" \
    --output-dir "$cache/zfs-out" --package "linux-headers-$kver" \
    build > "$cache/zfs-build.log" 2>&1 || { tail -30 "$cache/zfs-build.log" >&2; exit 1; }
  built=$(find "$cache/zfs-out/zfs-builder/usr/lib/modules/$kver" -name 'zfs.ko*' | head -1)
  [ -n "$built" ] || { echo "image: zfs-dkms built no zfs.ko for $kver (see $cache/zfs-build.log)" >&2; exit 1; }
  rm -rf "$zfs_dir"; mkdir -p "$zfs_dir"
  cp "$(dirname "$built")"/*.ko* "$zfs_dir/"
  touch "$zfs_dir/done"
  rm -rf "$cache/zfs-out"
fi

# 4. What our repository adds to the root.
extra=$cache/extra
rm -rf "$extra"; mkdir -p "$extra/usr/bin" "$extra/usr/lib/cairn/repart.d" "$extra/etc/kernel"
install -m 0755 "$init_bin" "$extra/usr/bin/cairn-init"
if [ -n "$cairnd" ]; then install -m 0755 "$cairnd" "$extra/usr/bin/cairnd"; fi
install -m 0644 "$repo"/firmware-config/repart.d/firstboot/*.conf "$extra/usr/lib/cairn/repart.d/"
with_zfs=no
if [ -f "$zfs_dir/done" ]; then
  mkdir -p "$extra/usr/lib/modules/$kver/updates/zfs"
  cp "$zfs_dir"/*.ko* "$extra/usr/lib/modules/$kver/updates/zfs/"
  with_zfs=yes
fi
if [ -f "$repo/firmware-config/kernel-tries" ]; then
  install -m 0644 "$repo/firmware-config/kernel-tries" "$extra/etc/kernel/tries"
fi

# 5. mkosi.
step "running mkosi (first run downloads and installs packages: a few minutes)"
mkdir -p "$cache/mkosi-cache" "$cache/mkosi-pkgs" "$cache/mkosi-work"
mkosi -C "$here" --force --incremental=yes \
  --cache-dir "$cache/mkosi-cache" --package-cache-dir "$cache/mkosi-pkgs" \
  --workspace-dir "$cache/mkosi-work" --output-dir "$out" \
  --package "$kpkg" $( [ $with_zfs = yes ] && echo --package zfsutils-linux ) --initrd "$cache/initrd.cpio.zst" --extra-tree "$extra" \
  build >&2

# 6. Sizes.
raw=$out/cairn.raw
root_part=$out/cairn.root-a.raw
{
  echo "kernel=$kver"
  if [ -n "$cairnd" ]; then echo "cairnd=yes"; else echo "cairnd=no"; fi
  echo "zfs=$with_zfs"
  echo "built=$(date -u +%FT%TZ)"
} > "$out/manifest"
step "done: $raw"
{
  echo "image: disk $(du -h --apparent-size "$raw" | cut -f1) apparent, $(du -h "$raw" | cut -f1) allocated"
  [ -f "$root_part" ] && echo "image: root slot A (erofs, verity-protected): partition $(du -h --apparent-size "$root_part" | cut -f1), filesystem $(du -h "$root_part" | cut -f1)"
  echo "image: initrd $(du -h --apparent-size "$cache/initrd.cpio.zst" | cut -f1)"
  ls -l "$out"/*.efi 2>/dev/null | awk '{print "image: UKI " $5 " bytes " $9}'
} >&2
echo "$raw"
