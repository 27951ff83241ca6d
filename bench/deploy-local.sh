#!/usr/bin/env bash
# Times `shipjar deploy local --skip-build` of examples/hello and splits each
# deploy into the service's own time (stopping the old JVM, starting the new
# one until healthy) and shipjar's part (everything else). Target for
# shipjar's part: under 200 ms. Usage: bench/deploy-local.sh [RUNS]
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
runs=${1:-10}

cargo build --release --quiet
bin=$PWD/target/release/shipjar
work=$(mktemp -d)
trap '"$bin" service stop hello --root "$work/.shipjar/local" >/dev/null 2>&1 || true; rm -rf -- "$work"' EXIT

cp -r examples/hello/deploy "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed "s/18080/$port/g; s|command = \"sh build.sh\"|command = \"BUILD_DIR='$work/build' sh '$PWD/examples/hello/build.sh'\"|" \
    examples/hello/shipjar.toml >"$work/shipjar.toml"
export HELLO_DB_PASSWORD=bench-secret
"$bin" -C "$work" build --version bench >/dev/null 2>&1

printf '%-4s %10s %14s %14s %14s\n' run total_ms svc_start_ms svc_stop_ms shipjar_ms
for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    out=$("$bin" -C "$work" --json deploy local --skip-build --version "bench-$i" 2>/dev/null | tail -n 1)
    end=$(date +%s%N)
    total=$(( (end - start) / 1000000 ))
    python3 - "$i" "$total" "$out" <<'PY'
import json, sys
run, total, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
a = out["hosts"][0]["activation"] or {}
start = a.get("healthy_after_ms") or 0
stop = a.get("stopped_after_ms") or 0
print(f"{run:<4} {total:>10} {start:>14} {stop:>14} {total - start - stop:>14}")
PY
done
