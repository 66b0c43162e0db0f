#!/usr/bin/env bash
# Quick single-run throughput check (the full side-by-side harness is issue 4):
# one file of SIZE_MB sent by release builds on loopback, direct or through the gate
# simulator, with full CRC, BLAKE3 digest and durable commit. Prints MB/s, CPU seconds per
# GiB and peak RSS of each daemon.
#   usage: bash tests/bench-quick.sh [profile] [size_mb] [direct|sim]
set -euo pipefail
profile=${1:-loopback}; size_mb=${2:-1024}; via=${3:-direct}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build -q --release --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
t=$(mktemp -d /var/tmp/gapsync-bench.XXXXXX)
trap 'kill $rp $sp ${gp:-} 2>/dev/null || true; rm -rf "$t"' EXIT
mkdir -p "$t/spool" "$t/dest"
head -c $((size_mb * 1048576)) /dev/urandom > "$t/file.bin"; sync
want=$(sha256sum < "$t/file.bin")
cat > "$t/r.toml" <<EOT
node = "o"
profile = "$profile"
profiles_dir = "$root/hardware-profiles"
listen = "127.0.0.1:0"
allow = ["127.0.0.0/8"]
state_dir = "$t/rstate"
log_dir = "$t/rlogs"
[[pipe]]
name = "p"
from = "s"
dest = "$t/dest"
EOT
"$bin/gapsync-receiver" run -c "$t/r.toml" & rp=$!
for _ in $(seq 50); do grep -qs ' listening ' "$t"/rlogs/* && break; sleep 0.1; done
addr=$(grep -ho 'addr=[0-9.:]*' "$t"/rlogs/* | head -1 | cut -d= -f2)
if [ "$via" = sim ]; then
  "$bin/gapsync-gate-sim" --listen 127.0.0.1:0 --forward "$addr" 2> "$t/sim.err" & gp=$!
  for _ in $(seq 50); do grep -qs 'listening on' "$t/sim.err" && break; sleep 0.1; done
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$t/sim.err")
fi
cat > "$t/s.toml" <<EOT
node = "s"
profile = "$profile"
profiles_dir = "$root/hardware-profiles"
state_dir = "$t/sstate"
log_dir = "$t/slogs"
[[pipe]]
name = "p"
spool = "$t/spool"
gate = "$addr"
EOT
"$bin/gapsync-sender" run -c "$t/s.toml" & sp=$!
for _ in $(seq 50); do grep -qs ' connected ' "$t"/slogs/* && break; sleep 0.1; done
start=$(date +%s.%N)
mv "$t/file.bin" "$t/spool/file.bin"
until grep -qs ' delivered ' "$t"/rlogs/*; do sleep 0.02; done
end=$(date +%s.%N)
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14+$15)/hz}' "/proc/$1/stat"; }
rss() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
gib=$(echo "$size_mb / 1024" | bc -l)
printf 'profile=%s via=%s size=%s MiB  %.1f MB/s  cpu s/GiB: sender %.2f receiver %.2f  peak RSS MiB: sender %s receiver %s\n' \
  "$profile" "$via" "$size_mb" "$(echo "$size_mb * 1.048576 / ($end - $start)" | bc -l)" \
  "$(echo "$(cpu $sp) / $gib" | bc -l)" "$(echo "$(cpu $rp) / $gib" | bc -l)" "$(rss $sp)" "$(rss $rp)"
[ "$(sha256sum < "$t/dest/file.bin")" = "$want" ] || { echo "landed file differs from the source" >&2; exit 1; }
echo "verified: landed file identical (sha256)"
