#!/usr/bin/env bash
# The floor a deploy tool is measured against: what a careful hand-written
# script does with the same ssh, on every host at once. Per host it opens one
# ssh master connection, streams the jar and the service's config files
# through it, and restarts the service through an init script
# (/srv/floor/init: SIGTERM the old JVM and wait for it to exit, start the
# new one in the background with the same java options, environment and
# config files as the example's shipjar.toml gives it). Then ONE poller
# process for all hosts ($FLOOR_POLLER, the fleet bench binary in its poll
# mode: no process per poll) asks every host's /health and /version every
# 0.1 s until each answers 200 and the new version. No lock, no checks, no
# rollback. The wall time counts everything, ssh connection set-up included.
#
#   bench/floor.sh setup    SSH_CONFIG PORT HOST...             (once, not timed)
#   bench/floor.sh deploy   SSH_CONFIG PORT VERSION JAR HOST...
#   bench/floor.sh rollback SSH_CONFIG PORT VERSION HOST...     (a jar already there)
#
# The service is the Clojure example (examples/clojure-jetty); it lives in
# /srv/floor on each host and listens on the host's address, PORT.
# FLOOR_POLLER must name the poller (benches/fleet.rs sets it to itself; it
# is run as `$FLOOR_POLLER --floor-poll PORT VERSION ADDRESS...`). Exits
# non-zero if any host failed.
set -euo pipefail

usage() {
    echo "usage: $0 setup|deploy|rollback SSH_CONFIG PORT [VERSION] [JAR] HOST..." >&2
    exit 2
}
[ $# -ge 4 ] || usage
mode=$1 cfg=$2 port=$3
shift 3
here=$(cd -- "$(dirname -- "$0")" && pwd)

# The init script on each host: `init restart VERSION PORT` returns once the
# new JVM is spawned; readiness is the poller's job.
# shellcheck disable=SC2016 # expanded on the host, not here
init='#!/bin/sh
set -eu
d=/srv/floor
stop() {
    if [ -f "$d/pid" ]; then
        old=$(cat "$d/pid")
        if kill -TERM "$old" 2>/dev/null; then
            while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
        fi
        rm -f "$d/pid"
    fi
}
start() {
    v=$1 port=$2
    printf "version=%s\n" "$v" >"$d/conf/service.properties"
    cd "$d"
    SHIPJAR_CONFIG_DIR=$d/conf PORT=$port BIND=0.0.0.0 setsid java -Xmx256m \
        -XX:+ExitOnOutOfMemoryError -Dclojure.spec.skip-macros=true \
        -Dlogback.configurationFile="$d/conf/logback.xml" -jar "$d/app-$v.jar" \
        >"$d/console.log" 2>&1 </dev/null &
    echo $! >"$d/pid"
}
case $1 in
stop) stop ;;
restart) stop; start "$2" "$3" ;;
*) echo "usage: init stop|restart VERSION PORT" >&2; exit 2 ;;
esac'

masters=$(mktemp -d)
cleanup() {
    for sock in "$masters"/*; do
        if [ -e "$sock" ]; then
            ssh -F "$cfg" -o ControlPath="$sock" -O exit x 2>/dev/null || true
        fi
    done
    rm -rf -- "$masters"
}
trap cleanup EXIT
# ssh through host $1's master (opened on first use, kept for the script's run).
over() {
    local host=$1
    shift
    ssh -F "$cfg" -o ControlMaster=auto -o ControlPersist=yes \
        -o ControlPath="$masters/$host" "$host" "$@"
}
address() { ssh -G -F "$cfg" "$1" | awk '$1 == "hostname" { print $2; exit }'; }

wait_all() {
    local failed=0 job
    for job in $(jobs -p); do
        wait "$job" || failed=$((failed + 1))
    done
    [ "$failed" -eq 0 ] || { echo "floor: $failed host(s) failed" >&2; exit 1; }
}

# restart VERSION [JAR] HOST...: per host at once, stream the jar when given,
# restart; then one poller for all.
restart() {
    local version=$1 jar=$2 host
    shift 2
    for host in "$@"; do
        {
            if [ -n "$jar" ]; then
                over "$host" "cat >/srv/floor/app-$version.jar" <"$jar"
            fi
            over "$host" /srv/floor/init restart "$version" "$port"
        } &
    done
    wait_all
    local addrs=()
    for host in "$@"; do addrs+=("$(address "$host")"); done
    "${FLOOR_POLLER:?set FLOOR_POLLER to the poller (see the header)}" \
        --floor-poll "$port" "$version" "${addrs[@]}"
}

case $mode in
setup)
    logback=$(sed -e 's/{{[^}]*}}/floor/g' "$here/../examples/clojure-jetty/deploy/logback-production.xml")
    for host in "$@"; do
        {
            over "$host" "mkdir -p /srv/floor/conf && cat >/srv/floor/conf/logback.xml && : >/srv/floor/conf/database.properties" <<<"$logback"
            over "$host" "cat >/srv/floor/init && chmod 755 /srv/floor/init" <<<"$init"
        } &
    done
    wait_all
    ;;
deploy)
    [ $# -ge 3 ] || usage
    version=$1 jar=$2
    shift 2
    restart "$version" "$jar" "$@"
    ;;
rollback)
    [ $# -ge 2 ] || usage
    version=$1
    shift
    restart "$version" "" "$@"
    ;;
*) usage ;;
esac
