#!/usr/bin/env bash
# The reference case, measured: examples/clojure-jetty built with Maven, then
# deployed to the `local` stage (per-phase table), and its start-to-healthy
# under shipjar's supervisor against `java -jar` started by hand and polled
# the same way. Needs the Debian packages ./run-tests installs as root.
# Usage: bench/clojure-jetty.sh [RUNS]   (writes a table to stdout)
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
runs=${1:-5}

cargo build --release --quiet
bin=$PWD/target/release/shipjar
work=$(mktemp -d)
jvm=""
cleanup() {
    "$bin" service stop inventory --root "$work/.shipjar/local" >/dev/null 2>&1 || true
    if [ -n "$jvm" ]; then kill "$jvm" 2>/dev/null || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT

cp -r examples/clojure-jetty/. "$work/"
rm -rf "$work/target" "$work/.shipjar"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -i "s/18090/$port/g" "$work/shipjar.toml"
export INVENTORY_DB_PASSWORD=bench-secret-value

start=$(date +%s%N)
"$bin" -C "$work" build --version bench >/dev/null 2>&1
build_ms=$(( ($(date +%s%N) - start) / 1000000 ))
jar=$(find "$work/target" -maxdepth 1 -name 'inventory-*-standalone.jar' | head -n 1)
echo "build (Maven, offline): ${build_ms} ms; $(du -h "$jar" | cut -f1) uberjar"
echo

printf '%-4s %9s %8s %8s %9s %9s %12s %11s\n' run total_ms lock_ms prep_ms switch_ms finish_ms healthy_ms stopped_ms
for i in $(seq 1 "$runs"); do
    out=$("$bin" -C "$work" --json deploy local --skip-build --version "bench-$i" 2>/dev/null | tail -n 1)
    python3 - "$i" "$out" <<'PY'
import json, sys
run, out = sys.argv[1], json.loads(sys.argv[2])
p = out["phases_ms"]
a = out["hosts"][0]["activation"] or {}
total = sum(p.values())
print(f"{run:<4} {total:>9} {p.get('lock',0):>8} {p.get('prepare',0):>8} {p.get('switch',0):>9} "
      f"{p.get('finish',0):>9} {a.get('healthy_after_ms') or 0:>12} {a.get('stopped_after_ms') or 0:>11}")
PY
done
"$bin" service stop inventory --root "$work/.shipjar/local" >/dev/null 2>&1

# By hand: the same JVM options and config, polled every 10 ms until /health is 200.
current="$work/.shipjar/local/var/lib/inventory/current"
echo
printf '%-4s %16s\n' run by_hand_ms
for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    (cd "$current" && SHIPJAR_CONFIG_DIR="$current/config" PORT=$port BIND=127.0.0.1 \
        exec java -Xmx256m -XX:+ExitOnOutOfMemoryError -Dclojure.spec.skip-macros=true \
        "-Dlogback.configurationFile=$current/config/logback.xml" -jar inventory.jar) >/dev/null 2>&1 &
    jvm=$!
    # One poller process (no fork per probe): the JVM gets the CPU, as under shipjar.
    python3 - "$port" <<'PY'
import sys, time, urllib.request
while True:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).status == 200:
            break
    except Exception:
        pass
    time.sleep(0.01)
PY
    printf '%-4s %16s\n' "$i" $(( ($(date +%s%N) - start) / 1000000 ))
    kill "$jvm"; wait "$jvm" 2>/dev/null || true; jvm=""
done
echo
echo "healthy_ms: the supervisor's spawn-to-healthy; by_hand_ms: fork of java to the first 200 from /health, polled every 10 ms by one process."
