#!/usr/bin/env bash
# Where a JVM's start-up CPU goes, with and without a class-data archive:
# the Clojure example's uberjar started by hand to healthy, then its CPU
# per thread kind from /proc/PID/task/*/stat (main thread, C2 and C1
# compilers, GC, Jetty's pool, the rest). Makes its own class list and
# static archive first, as shipjar's dump does. Prints one line per start,
# alternating without and with the archive.
# Usage: bench/jvm-start.sh [STARTS] (3 of each by default).
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
starts=${1:-3}
jar=examples/clojure-jetty/target/inventory-1.0.0-standalone.jar
[[ -f $jar ]] || (cd examples/clojure-jetty && sh build.sh >/dev/null)
work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf -- "$work"
}
trap cleanup EXIT
port=$(( 20000 + RANDOM % 20000 ))
opts=(-Xmx256m -XX:+ExitOnOutOfMemoryError -Dclojure.spec.skip-macros=true)
tick=$(getconf CLK_TCK)

# Starts the service with extra options "$@", waits for /health (60 s at
# most), and prints its CPU by thread kind.
start() {
    PORT=$port BIND=127.0.0.1 java "${opts[@]}" "$@" -jar "$jar" >/dev/null 2>&1 &
    pid=$!
    local t0 deadline
    t0=$(date +%s%N)
    deadline=$(( t0 + 60000000000 ))
    until curl -fs -o /dev/null "http://127.0.0.1:$port/health"; do
        (( $(date +%s%N) < deadline )) || { echo "not healthy in 60 s" >&2; exit 1; }
        sleep 0.02
    done
    local wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local task comm fields kind
    declare -A cpu=()
    for task in /proc/"$pid"/task/*; do
        comm=$(<"$task/comm") || continue
        fields=$(sed 's/.*) //' "$task/stat") || continue
        read -r -a f <<<"$fields"
        case $comm in
            java) kind=main ;;
            C2*) kind=C2 ;;
            C1*) kind=C1 ;;
            GC*|G1*) kind=GC ;;
            qtp*) kind=jetty ;;
            *) kind=other ;;
        esac
        cpu[$kind]=$(( ${cpu[$kind]:-0} + f[11] + f[12] ))
    done
    local total=0 k line=""
    for k in main C2 C1 GC jetty other; do
        total=$(( total + ${cpu[$k]:-0} ))
        line+=$(printf ' %s %d.%02d' "$k" $(( ${cpu[$k]:-0} / tick )) $(( ${cpu[$k]:-0} * 100 / tick % 100 )))
    done
    printf '%s to healthy %d ms, CPU %d.%02d s:%s\n' "$label" "$wall_ms" \
        $(( total / tick )) $(( total * 100 / tick % 100 )) "$line"
    sleep "$linger"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# The class list of one run (5 s after healthy, as the supervisor keeps
# it), and the archive made from it.
label="recording run" linger=5
start "-XX:DumpLoadedClassList=$work/classes.lst" >/dev/null
linger=0
java "${opts[@]}" -Xshare:dump "-XX:SharedClassListFile=$work/classes.lst" \
    "-XX:SharedArchiveFile=$work/app.jsa" -cp "$jar" >/dev/null
for _ in $(seq "$starts"); do
    label="no archive  "
    start
    label="with archive"
    start -Xshare:auto "-XX:SharedArchiveFile=$work/app.jsa"
done
