#!/usr/bin/env bash
# shipjar's proxy beside HAProxy and nginx, in one run, in front of the same
# examples/hello instance on 127.0.0.1: the most requests per second each
# serves (wrk, one thread, keep-alive, GET /version) at 4 and at 16
# connections, with wrk's p50/p99 at that load, for the instance directly,
# shipjar's proxy, HAProxy (nbthread 1) and nginx (one worker), each keeping
# its connections to the instance alive. ROUNDS rounds of SECS seconds per
# cell, the targets interleaved within a round so drift hits all alike;
# every round is printed, then the means and the ratios to direct. Beside
# the rate, each proxy's CPU time per request (its processes' utime+stime
# from /proc over the run, divided by the requests wrk saw): what the proxy
# costs the machine, which a busy shared machine does not blur as it does
# the rate.
# Usage: bench/proxy-peers.sh [SECS] [ROUNDS]   (as root: installs what is missing)
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
secs=${1:-10}
rounds=${2:-3}

missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# shellcheck source=bench/lib/proxied-stage.sh
. bench/lib/proxied-stage.sh
instance=$(active)
haproxy_port=$(free_port)
nginx_port=$(free_port)
peers=()
stop_peers() {
    for pid in "${peers[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${peers[@]}"; do wait "$pid" 2>/dev/null || true; done
    cleanup
}
trap stop_peers EXIT

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 1024
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:$haproxy_port
    default_backend hello
backend hello
    http-reuse always
    server hello 127.0.0.1:$instance
EOF
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
peers+=($!)

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    upstream hello { server 127.0.0.1:$instance; keepalive 32; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
peers+=($!)

for port in "$haproxy_port" "$nginx_port"; do
    for _ in $(seq 1 50); do
        curl -fsS "http://127.0.0.1:$port/version" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

tick_us=$((1000000 / $(getconf CLK_TCK)))
# CPU ticks (user+system) the given processes have used so far.
ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
# "req/s p50_ms p99_ms cpu_us_per_request" from one wrk run; PIDS: the proxy's processes.
measure() { # PORT CONNS SECS [PIDS...]
    local port=$1 conns=$2 secs=$3 before out
    shift 3
    before=$(ticks "$@")
    out=$(wrk -t1 -c "$conns" -d "${secs}s" --latency "http://127.0.0.1:$port/version")
    awk -v ticks="$(($(ticks "$@") - before))" -v tick_us="$tick_us" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
        /requests in/ { n = $1 }
        /^Requests\/sec/ { rps = $2 }
        END { printf "%.0f %.3f %.3f %.1f\n", rps, p50, p99, n ? ticks * tick_us / n : 0 }' <<<"$out"
}

targets=(direct shipjar haproxy nginx)
port_of() {
    case $1 in
        direct) echo "$instance" ;; shipjar) echo "$listen" ;;
        haproxy) echo "$haproxy_port" ;; nginx) echo "$nginx_port" ;;
    esac
}
shipjar_worker=$(python3 -c "import json; print(json.load(open('$work/.shipjar/proxied/run/hello/proxy/keeper.json'))['worker']['pid'])")
# The processes that do each proxy's work (none for direct).
pids_of() {
    case $1 in
        shipjar) echo "$shipjar_worker" ;; haproxy) echo "${peers[0]}" ;;
        nginx) pgrep -P "${peers[1]}" | tr '\n' ' ' ;;
    esac
}
# JIT and connection pools warm before anything counts.
for t in "${targets[@]}"; do measure "$(port_of "$t")" 16 3 >/dev/null; done

results="$work/results.txt"
: >"$results"
echo "$(date -u +%F) proxies in front of one examples/hello instance, wrk -t1, ${secs}s per cell, $rounds rounds, $(nproc) cores"
printf '%-6s %-5s %-8s %9s %8s %8s %10s\n' round conns target req_s p50_ms p99_ms cpu_us_req
for round in $(seq 1 "$rounds"); do
    for conns in 4 16; do
        for t in "${targets[@]}"; do
            # shellcheck disable=SC2046  # pids_of prints a list of pids
            read -r rps p50 p99 cpu < <(measure "$(port_of "$t")" "$conns" "$secs" $(pids_of "$t"))
            printf '%-6s %-5s %-8s %9s %8s %8s %10s\n' "$round" "$conns" "$t" "$rps" "$p50" "$p99" "$cpu"
            echo "$conns $t $rps $p50 $p99 $cpu" >>"$results"
        done
    done
done
echo
echo "means over $rounds rounds (ratio: req/s to direct)"
python3 - "$results" <<'PY'
import sys, collections
cells = collections.defaultdict(list)
for line in open(sys.argv[1]):
    conns, target, *values = line.split()
    cells[(int(conns), target)].append(tuple(float(v) for v in values))
print("| conns | target | req/s | p50 ms | p99 ms | ratio | proxy CPU µs/request |")
print("|---|---|---|---|---|---|---|")
for conns in (4, 16):
    direct = sum(v[0] for v in cells[(conns, "direct")]) / len(cells[(conns, "direct")])
    for target in ("direct", "shipjar", "haproxy", "nginx"):
        runs = cells[(conns, target)]
        mean = [sum(v[i] for v in runs) / len(runs) for i in range(4)]
        cpu = "" if target == "direct" else f"{mean[3]:.1f}"
        print(f"| {conns} | {target} | {mean[0]:,.0f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[0] / direct:.2f} | {cpu} |")
PY
