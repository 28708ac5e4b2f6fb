#!/usr/bin/env bash
# Storage benchmark (issue 10): launch p50/p95 of a small image and of a ~500 MB image on a
# dir pool and on a btrfs pool (a loop file), and snapshot create p50 on each, all through
# the real incus CLI against a release cairnd in a temporary state dir. Prints figures; it
# asserts nothing. Usage: bash scripts/bench-storage.sh [launches per case, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8}
[ "$(id -u)" = 0 ] || { echo "bench-storage: needs root (containers, loop devices)" >&2; exit 1; }
command -v mkfs.btrfs >/dev/null || { echo "bench-storage: btrfs-progs missing (scripts/install-deps.sh)" >&2; exit 1; }

cargo build -q --release -p cairnd
incus=$(bash scripts/incus-client.sh)
root=$(mktemp -d /var/tmp/cairn-bench-storage.XXXXXX)
chmod 711 "$root"
state=$root/state
export INCUS_DIR=$state HOME=$root/home INCUS_CONF=$root/home/.config/incus
mkdir -p "$HOME"
cleanup() {
  set +e
  for c in $(ls "$state/lxc" 2>/dev/null); do lxc-stop -P "$state/lxc" -n "$c" -k >/dev/null 2>&1; done
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  umount -l "$state/storage-pools/fast" 2>/dev/null
  rm -rf "$root"
}
trap cleanup EXIT

target/release/cairnd --state-dir "$state" >"$root/cairnd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$state/unix.socket" ] && "$incus" admin waitready --timeout 5 >/dev/null 2>&1 && break; sleep 0.1; done

# The images: the test busybox image, and the same with ~500 MB in 500 files of 1 MB.
bash tests/fixtures/make-busybox-image.sh "$root/small.tar.gz" >/dev/null
bash tests/fixtures/make-bulk-image.sh "$root/small.tar.gz" "$root/big.tar.gz"
"$incus" image import "$root/small.tar.gz" --alias small >/dev/null
"$incus" image import "$root/big.tar.gz" --alias big >/dev/null
"$incus" storage create fast btrfs size=10GiB >/dev/null

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# p50 and p95 of the numbers on stdin.
pct() { sort -n | awk '{a[NR]=$1} END {p50=a[int((NR+1)/2)]; i=int(NR*0.95+0.999); if (i>NR) i=NR; printf "p50 %d ms, p95 %d ms (n=%d)", p50, a[i], NR}'; }

declare -A p50
for pool in default fast; do
  driver=$("$incus" storage show "$pool" | awk '/^driver:/ {print $2}')
  for img in small big; do
    t=$(date +%s%N)
    "$incus" launch "$img" "first-$img-$pool" -s "$pool" >/dev/null
    first=$(ms "$t")
    times=()
    for i in $(seq "$n"); do
      t=$(date +%s%N)
      "$incus" launch "$img" "l$i-$img-$pool" -s "$pool" >/dev/null
      times+=("$(ms "$t")")
    done
    line=$(printf '%s\n' "${times[@]}" | pct)
    p50[$driver-$img]=$(echo "$line" | awk '{print $2}')
    printf 'launch %-5s image on %-5s: first %5d ms (unpacks the image into the pool); then %s\n' "$img" "$driver" "$first" "$line"
    for i in $(seq "$n"); do "$incus" delete -f "l$i-$img-$pool" >/dev/null; done
  done
  times=()
  for i in $(seq 20); do
    t=$(date +%s%N)
    "$incus" snapshot create "first-big-$pool" "s$i" >/dev/null
    times+=("$(ms "$t")")
  done
  printf 'snapshot create of the big instance on %-5s: %s\n' "$driver" "$(printf '%s\n' "${times[@]}" | pct)"
  "$incus" delete -f "first-small-$pool" "first-big-$pool" >/dev/null
done
awk -v d="${p50[dir-big]}" -v ds="${p50[dir-small]}" -v b="${p50[btrfs-big]}" -v bs="${p50[btrfs-small]}" 'BEGIN {
  printf "big/small launch p50: dir %.2fx, btrfs %.2fx (target on btrfs <= 1.2x)\n", d/ds, b/bs
  printf "btrfs small launch p50 / dir small launch p50: %.2f (target <= 1)\n", bs/ds }'
echo "(the CLI round trips are included: each figure is what an operator waits for)"
"$incus" storage delete fast >/dev/null
