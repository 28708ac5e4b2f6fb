#!/usr/bin/env bash
# Storage benchmark on the appliance's ZFS default pool (issue 10): boots one node under
# QEMU (cairn-lab; TCG on this host, so absolute times are the emulator's), then through
# the real incus CLI: launch p50/p95 of a small image and of a ~500 MB image, and snapshot
# create p50. Prints figures; asserts nothing. Needs the built image (image/build.sh).
# Usage: bash scripts/bench-storage-zfs.sh [launches per case, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
[ "$(id -u)" = 0 ] || { echo "bench-storage-zfs: needs root (QEMU, the lab's dirs)" >&2; exit 1; }
incus=$(bash scripts/incus-client.sh)
root=$(mktemp -d /var/tmp/cairn-bench-zfs.XXXXXX)
export CAIRN_LAB_DIR=$root/lab INCUS_CONF=$root/incus
cleanup() { set +e; cargo run -q -p cairn-lab -- down >/dev/null 2>&1; rm -rf "$root"; }
trap cleanup EXIT

line=$(cargo run -q -p cairn-lab -- up --nodes 1 --detach --no-build | tail -1)
api=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["nodes"][0]["api"])' "$line")
token=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["nodes"][0]["token"])' "$line")
"$incus" remote add bench "$api" --token "$token" --accept-certificate >/dev/null
"$incus" storage list bench: --format csv

bash tests/fixtures/make-busybox-image.sh "$root/small.tar.gz" >/dev/null
bash tests/fixtures/make-bulk-image.sh "$root/small.tar.gz" "$root/big.tar.gz"
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
pct() { sort -n | awk '{a[NR]=$1} END {p50=a[int((NR+1)/2)]; i=int(NR*0.95+0.999); if (i>NR) i=NR; printf "p50 %d ms, p95 %d ms (n=%d)", p50, a[i], NR}'; }
t=$(date +%s%N); "$incus" image import "$root/small.tar.gz" bench: --alias small >/dev/null
echo "import small image: $(ms "$t") ms"
t=$(date +%s%N); "$incus" image import "$root/big.tar.gz" bench: --alias big >/dev/null
echo "import ~500 MB image (upload and unpack into the zfs pool): $(ms "$t") ms"

declare -A p50
for img in small big; do
  t=$(date +%s%N)
  "$incus" launch "bench:$img" "bench:first-$img" >/dev/null
  first=$(ms "$t")
  times=()
  for i in $(seq "$n"); do
    t=$(date +%s%N)
    "$incus" launch "bench:$img" "bench:l$i-$img" >/dev/null
    times+=("$(ms "$t")")
  done
  l=$(printf '%s\n' "${times[@]}" | pct)
  p50[$img]=$(echo "$l" | awk '{print $2}')
  printf 'launch %-5s image on zfs: first %5d ms (clones the image for the id map); then %s\n' "$img" "$first" "$l"
  for i in $(seq "$n"); do "$incus" delete -f "bench:l$i-$img" >/dev/null; done
done
times=()
for i in $(seq 10); do
  t=$(date +%s%N)
  "$incus" snapshot create bench:first-big "s$i" >/dev/null
  times+=("$(ms "$t")")
done
printf 'snapshot create of the big instance on zfs: %s\n' "$(printf '%s\n' "${times[@]}" | pct)"
awk -v b="${p50[big]}" -v s="${p50[small]}" 'BEGIN { printf "big/small launch p50 on zfs: %.2fx (target <= 1.2x)\n", b/s }'
echo "(QEMU under TCG; the CLI round trips over QEMU's user networking are included)"
