#!/usr/bin/env bash
# shellcheck disable=SC2034  # the pids below are read through ${!who}
# What one build of shipjar costs where it runs, to choose its profile
# (opt-level, LTO) with numbers: the binary's size; the memory (PSS and RSS, from
# /proc/PID/smaps_rollup, in kB) of the supervisor of an idle examples/hello
# without `[proxy]` (stage `plain`) and of the instance's supervisor, the
# proxy keeper and the proxy worker with it (stage `proxied`), sampled
# SAMPLES times a second apart, min/median/max; and the proxy worker's CPU
# time per request (utime+stime from /proc over a wrk run, divided by the
# requests wrk saw) at 4 and 16 connections, ROUNDS runs of SECS seconds
# each, every run printed, then the median. The supervisor and the proxy
# are the same binary: a faster proxy must not cost every host's supervisor.
# Usage: [SHIPJAR_BIN=PATH] bench/proxy-build.sh [SECS] [ROUNDS] [SAMPLES]
# Run it alone on the machine: other work running beside it changes its CPU figures.
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
secs=${1:-10}
rounds=${2:-3}
samples=${3:-10}

# shellcheck source=bench/lib/proxied-stage.sh
. bench/lib/proxied-stage.sh

json_pid() { # FILE KEY
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["pid"])' "$1" "$2"
}
proxied_run=$work/.shipjar/proxied/run/hello
supervisor_plain=$(json_pid "$work/.shipjar/plain/run/hello/supervisor.json" supervisor)
supervisor_proxied=$(json_pid "$proxied_run/instance-$(active)/supervisor.json" supervisor)
keeper=$(json_pid "$proxied_run/proxy/keeper.json" keeper)
worker=$(json_pid "$proxied_run/proxy/keeper.json" worker)

# "PSS RSS" in kB: PSS splits the binary's code pages among the processes
# here that map it; alone on a host (one service, no proxy) a supervisor's
# PSS comes near its RSS.
mem() { awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print p, r}' "/proc/$1/smaps_rollup"; }
# "min median max" of the numbers on stdin.
spread() { sort -n | awk '{v[NR]=$1} END{printf "%s %s %s\n", v[1], v[int((NR+1)/2)], v[NR]}'; }

echo "$(date -u +'%F %H:%M') build $bin ($(stat -c %s "$bin") bytes), load $(cut -d' ' -f1-3 /proc/loadavg)"
# Idle: the supervisors settle after the deploy before anything counts.
sleep 5
printf '%-20s %-4s %8s %8s %8s\n' process kB min median max
for who in supervisor_plain supervisor_proxied keeper worker; do
    pid=${!who}
    for _ in $(seq 1 "$samples"); do mem "$pid" >>"$work/mem-$who"; sleep 1; done
    for column in 1 2; do
        cut -d' ' -f"$column" "$work/mem-$who" | spread | {
            read -r lo mid hi
            printf '%-20s %-4s %8s %8s %8s\n' "$who" "$([ "$column" = 1 ] && echo PSS || echo RSS)" "$lo" "$mid" "$hi"
        }
    done
done

tick_us=$((1000000 / $(getconf CLK_TCK)))
# The worker's CPU ticks so far: "user system".
ticks() { awk '{print $14, $15}' "/proc/$worker/stat"; }
# "req/s cpu_us_per_request user_us_per_request" of one wrk run through the
# proxy: the build's code shows in the user part; the system part is the
# kernel's TCP and wake-ups, the same for any build.
measure() { # CONNS SECS
    local before after out
    before=$(ticks)
    out=$(wrk -t1 -c "$1" -d "$2s" "http://127.0.0.1:$listen/version")
    after=$(ticks)
    awk -v before="$before" -v after="$after" -v tick_us="$tick_us" '
        /requests in/ { n = $1 } /^Requests\/sec/ { rps = $2 }
        END {
            split(before, b, " "); split(after, a, " ")
            user = a[1] - b[1]; sys = a[2] - b[2]
            printf "%.0f %.1f %.1f\n", rps, n ? (user + sys) * tick_us / n : 0, n ? user * tick_us / n : 0
        }' <<<"$out"
}
measure 16 3 >/dev/null
printf '%-6s %-5s %9s %10s %11s\n' round conns req_s cpu_us_req user_us_req
for conns in 4 16; do
    : >"$work/cpu-$conns"
    : >"$work/user-$conns"
    for round in $(seq 1 "$rounds"); do
        read -r rps cpu user < <(measure "$conns" "$secs")
        printf '%-6s %-5s %9s %10s %11s\n' "$round" "$conns" "$rps" "$cpu" "$user"
        echo "$cpu" >>"$work/cpu-$conns"
        echo "$user" >>"$work/user-$conns"
    done
done
for conns in 4 16; do
    echo "median at $conns connections: cpu_us_req $(spread <"$work/cpu-$conns" | cut -d' ' -f2), user_us_req $(spread <"$work/user-$conns" | cut -d' ' -f2)"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
