#!/usr/bin/env bash
# Local-cluster figures (part of `make bench`; root): time-to-healthy of a 3-node
# container cluster and of a 2-node qemu one (create, then `osctl health` passing), the
# memory the container nodes use, and
# the inner loop: a source edit of machined to that machined running on all three nodes
# (`make reload`, warm build). Builds what it measures the way `make cluster` does.
#
# No anchor runs beside these: Talos's docker provider needs Docker and Talos images,
# which cannot be fetched here. Its creation of a 3-node cluster takes about a minute on
# a laptop (issue 20 quotes it; not measured here).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
osctl="$target/debug/osctl"
name=benchc
cidr=10.214.0.0/24
runs="${BENCH_RUNS:-3}"
clusters="$(mktemp -d)"
export BASALT_CLUSTERS_DIR="$clusters"
export OSCONFIG="$clusters/osconfig"
cleanup() {
  "$osctl" cluster destroy --name "$name" >/dev/null 2>&1 || true
  rm -rf "$clusters"
}
trap cleanup EXIT

cargo build -q --locked -p basalt-machined -p osctl
bash hack/image.sh build "$target/debug/machined" >/dev/null

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "time to healthy, 3-node container cluster (create + osctl health), $runs runs:"
for i in $(seq "$runs"); do
  t0="$(now)"
  "$osctl" cluster create --name "$name" --cidr "$cidr" --image _out >/dev/null
  "$osctl" health >/dev/null
  t1="$(now)"
  echo "  run $i: $(secs "$t0" "$t1") s"
  "$osctl" cluster destroy --name "$name" >/dev/null
done

"$osctl" cluster destroy --name "$name" >/dev/null 2>&1 || true
echo "time to healthy, 2-node qemu cluster under TCG (create + osctl health), $runs runs:"
for i in $(seq "$runs"); do
  t0="$(now)"
  "$osctl" cluster create --provider qemu --name "$name" --cidr "$cidr" --workers 1 --image _out >/dev/null
  "$osctl" health >/dev/null
  t1="$(now)"
  echo "  run $i: $(secs "$t0" "$t1") s"
  "$osctl" cluster destroy --name "$name" >/dev/null
done
"$osctl" cluster create --name "$name" --cidr "$cidr" --image _out >/dev/null

# Memory: the proportional set size of every process in the nodes' cgroups (shims, PID
# 1s, apid), shared pages split among them.
pss=0
count=0
for dir in /proc/[0-9]*; do
  grep -q "/basalt/$name/" "$dir/cgroup" 2>/dev/null || continue
  kb="$(awk '/^Pss:/ { print $2 }' "$dir/smaps_rollup" 2>/dev/null || true)"
  pss=$((pss + ${kb:-0}))
  count=$((count + 1))
done
echo "memory of the 3-node cluster: $((pss / 1024)) MiB PSS over $count processes"

# The inner loop: an edit of machined's source (its mtime), then make reload.
echo "inner loop: edit -> the edited machined running on 3 nodes (make reload), $runs runs:"
for i in $(seq "$runs"); do
  touch machined/src/lib.rs
  t0="$(now)"
  make -s reload RELOAD_ARGS="--name $name" >/dev/null
  t1="$(now)"
  echo "  run $i: $(secs "$t0" "$t1") s"
done
