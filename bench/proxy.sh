#!/usr/bin/env bash
# Zero-downtime deploys, measured with examples/hello on 127.0.0.1:
#  1. the proxy's cost: the same fixed-rate keep-alive load against the active
#     instance directly and through the proxy (added p50/p99), the most each
#     serves with CONNS connections (throughput ratio), the proxy's RSS/PSS;
#  2. failed requests while 10 deploys, 2 rollbacks and 1 failing deploy run
#     behind the proxy (target 0);
#  3. the same during 3 `service restart` and 1 `reload` behind the proxy
#     (target 0);
#  4. the same load against a plain restart without the proxy (3 deploys):
#     failed requests and the longest time without an answer.
# The load generator is benches/proxy_load.rs (keep-alive, fixed rate,
# bounded duration). Usage: bench/proxy.sh [RATE] [CONNS]
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
rate=${1:-500}
conns=${2:-4}

# shellcheck source=bench/lib/proxied-stage.sh
. bench/lib/proxied-stage.sh

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Warm both paths (JIT) before measuring.
"$load" "$(active)" "$rate" 5 "$conns" >/dev/null
"$load" "$listen" "$rate" 5 "$conns" >/dev/null
d=$("$load" "$(active)" "$rate" 15 "$conns")
p=$("$load" "$listen" "$rate" 15 "$conns")
dmax=$("$load" "$(active)" 1000000 5 "$conns")
pmax=$("$load" "$listen" 1000000 5 "$conns")
worker=$(python3 -c "import json; print(json.load(open('$work/.shipjar/proxied/run/hello/proxy/keeper.json'))['worker']['pid'])")
rss=$(awk '/^Rss:/ {print $2}' "/proc/$worker/smaps_rollup")
pss=$(awk '/^Pss:/ {print $2}' "/proc/$worker/smaps_rollup")

echo "proxy cost ($rate req/s, $conns keep-alive connections, GET /version)"
printf '%-10s %9s %9s %12s\n' path p50_ms p99_ms max_req_s
printf '%-10s %9s %9s %12s\n' direct "$(field "$d" p50_ms)" "$(field "$d" p99_ms)" "$(field "$dmax" rps)"
printf '%-10s %9s %9s %12s\n' proxy "$(field "$p" p50_ms)" "$(field "$p" p99_ms)" "$(field "$pmax" rps)"
python3 - "$d" "$p" "$dmax" "$pmax" <<'PY'
import json, sys
d, p, dm, pm = (json.loads(a) for a in sys.argv[1:])
print(f"added p50 {p['p50_ms'] - d['p50_ms']:.3f} ms, added p99 {p['p99_ms'] - d['p99_ms']:.3f} ms, "
      f"throughput ratio {pm['rps'] / dm['rps']:.2f}")
PY
echo "proxy worker: RSS ${rss} kB, PSS ${pss} kB"
echo

run_under_load() { # PORT SECONDS -- commands...
    local port=$1 secs=$2; shift 2
    "$load" "$port" "$rate" "$secs" "$conns" >"$work/load.json" &
    local pid=$!
    sleep 1
    "$@"
    local done_at=$SECONDS
    wait "$pid"
    echo "$(cat "$work/load.json") commands_done_after_s=$done_at"
}

proxied_round() {
    SECONDS=0
    for i in $(seq 1 10); do
        deploy proxied --version "bench-$i" || echo "deploy $i FAILED" >&2
        if [ "$i" = 4 ] || [ "$i" = 8 ]; then
            "$bin" -C "$work" rollback proxied >/dev/null 2>&1 || echo "rollback FAILED" >&2
        fi
    done
    if deploy proxied --version bench-bad --env FAIL_ON_START=1; then
        echo "the failing deploy succeeded?" >&2
    fi
}
echo "behind the proxy: 10 deploys, 2 rollbacks, 1 failing deploy under $rate req/s"
run_under_load "$listen" 40 proxied_round

restart_round() {
    SECONDS=0
    local root="$work/.shipjar/proxied"
    for verb in restart restart reload restart; do
        "$bin" service "$verb" hello --root "$root" >/dev/null 2>&1 || echo "service $verb FAILED" >&2
    done
}
echo "behind the proxy: 3 service restarts and 1 reload under $rate req/s"
run_under_load "$listen" 20 restart_round

plain_round() {
    SECONDS=0
    for i in 1 2 3; do deploy plain --version "plain-$i"; done
}
echo "plain restart (no proxy): 3 deploys under $rate req/s"
run_under_load "$direct" 20 plain_round
