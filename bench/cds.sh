#!/usr/bin/env bash
# Class-data sharing (`[service] cds`, on by default) measured on
# examples/hello and examples/clojure-jetty, each deployed to the `local`
# stage twice, the same artifact with cds = false and then with the default
# (the archive is made beside the running release; the bench waits for it,
# up to 300 s); then RUNS starts of each release, alternating
# (`current` pointed at one, then the other). Per start: wall time of `shipjar service start` (it
# returns once /health answers 200; the archive check is included), the
# supervisor's spawn-to-healthy, and the JVM's CPU seconds (utime + stime
# from /proc) when start returned. Prints medians, the ratio with/without,
# the archive's size and what the stop of the release with cds cost.
# Benchmarks print; they do not assert. Needs the Debian packages
# ./run-tests installs as root. Usage: bench/cds.sh [RUNS]
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
runs=${1:-7}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/shipjar
work=$(mktemp -d)
services=()
cleanup() {
    for s in "${services[@]}"; do
        "$bin" service stop "${s%%:*}" --root "${s#*:}" >/dev/null 2>&1 || true
    done
    rm -rf -- "$work"
}
trap cleanup EXIT
export HELLO_DB_PASSWORD=bench-secret-value INVENTORY_DB_PASSWORD=bench-secret-value

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# One start: prints "wall_ms healthy_ms cpu_s"; the service keeps running.
start_once() {
    local name=$1 root=$2 t0 out t1
    t0=$(date +%s%N)
    out=$("$bin" service start "$name" --root "$root" --json)
    t1=$(date +%s%N)
    python3 - "$out" $(( (t1 - t0) / 1000000 )) <<'PY'
import json, os, sys
out, wall = json.loads(sys.argv[1]), sys.argv[2]
stat = open(f"/proc/{out['pid']}/stat").read().rsplit(")", 1)[1].split()
cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
print(wall, out["healthy_after_ms"], f"{cpu:.2f}")
PY
}

stop_ms() {
    "$bin" service stop "$1" --root "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["took_ms"])'
}

# Medians of the three columns of lines on stdin: "wall healthy cpu".
medians() {
    python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
print(*(statistics.median(float(r[i]) for r in rows) for i in range(3)))'
}

# bench_one EXAMPLE NAME PORT_IN_CONFIG: prints one table row per mode.
bench_one() {
    local example=$1 name=$2 old_port=$3 dir port root plain_rel cds_rel plain with dump_stop plain_stop size check_ms
    dir=$work/$example
    cp -r "examples/$example/." "$dir/"
    rm -rf -- "$dir/target" "$dir/build" "$dir/.shipjar"
    port=$(free_port)
    sed -i "s/$old_port/$port/g" "$dir/shipjar.toml"
    sed -i "0,/^jar = .*/s//&\ncds = false/" "$dir/shipjar.toml"
    root=$dir/.shipjar/local
    services+=("$name:$root")
    "$bin" -C "$dir" deploy local --version plain >/dev/null 2>&1

    plain_stop=$(stop_ms "$name" "$root")
    local lib=$root/var/lib/$name
    plain_rel=$(readlink "$lib/current")

    # The same artifact, with cds at its default: the archive is made beside it.
    sed -i "/^cds = false$/d" "$dir/shipjar.toml"
    "$bin" -C "$dir" deploy local --skip-build --version cds >/dev/null 2>&1
    cds_rel=$(readlink "$lib/current")
    for _ in $(seq 1 600); do
        [ -f "$lib/$cds_rel/cds.json" ] && break
        sleep 0.5
    done
    dump_stop=$(stop_ms "$name" "$root")
    size=$(du -k "$lib/$cds_rel/cds.jsa" | cut -f1)

    # Alternating, so a machine whose load drifts hurts both sides alike.
    : >"$work/plain"
    : >"$work/with"
    for _ in $(seq 1 "$runs"); do
        ln -sfn "$plain_rel" "$lib/current"
        start_once "$name" "$root" >>"$work/plain"
        stop_ms "$name" "$root" >/dev/null
        ln -sfn "$cds_rel" "$lib/current"
        start_once "$name" "$root" >>"$work/with"
        stop_ms "$name" "$root" >/dev/null
    done
    check_ms=$(grep -o 'checked in [0-9]* ms' "$root/var/log/$name/console.log" |
        awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    read -r -a plain <<<"$(medians <"$work/plain")"
    read -r -a with <<<"$(medians <"$work/with")"
    python3 - "$example" "${plain[@]}" "${with[@]}" "$size" "$plain_stop" "$dump_stop" "$check_ms" <<'PY'
import sys
ex, pw, ph, pc, ww, wh, wc, size, pstop, dstop, check = sys.argv[1:]
pw, ph, pc, ww, wh, wc = map(float, (pw, ph, pc, ww, wh, wc))
print(f"{ex:<14} {'without':<8} {pw:>9.0f} {ph:>11.0f} {pc:>7.2f}")
print(f"{'':<14} {'with':<8} {ww:>9.0f} {wh:>11.0f} {wc:>7.2f}")
print(f"{'':<14} {'ratio':<8} {ww / pw:>9.2f} {wh / ph:>11.2f} {wc / pc:>7.2f}"
      f"   archive {int(size) // 1024} MiB, checked in {check} ms; stop without {pstop} ms, with {dstop} ms")
PY
    "$bin" service stop "$name" --root "$root" >/dev/null 2>&1 || true
}

echo "class-data sharing, medians of $runs starts each ($(nproc) cores, $(date -u +%F))"
printf '%-14s %-8s %9s %11s %7s\n' example archive start_ms healthy_ms cpu_s
bench_one hello hello 18080
bench_one clojure-jetty inventory 18090
echo
echo "start_ms: \`service start\` until it returned (healthy); healthy_ms: the supervisor's spawn-to-healthy;"
echo "cpu_s: the JVM's CPU seconds when start returned."
