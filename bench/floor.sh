#!/usr/bin/env bash
# The floor a deploy tool is measured against: what a hand-written script does
# with the same ssh, on every host at once: scp the jar, then one ssh that
# stops the old JVM (SIGTERM, wait for it to exit), starts the new one and
# polls its version URL every 0.1 s until it reports the new version. No lock,
# no checks, no rollback.
#
#   bench/floor.sh setup    SSH_CONFIG PORT HOST...        (once per host, not timed)
#   bench/floor.sh deploy   SSH_CONFIG PORT VERSION JAR HOST...
#   bench/floor.sh rollback SSH_CONFIG PORT VERSION HOST... (restart a jar already there)
#
# The service is the Clojure example (examples/clojure-jetty) with the java
# options and config files its shipjar.toml gives it; it lives in /srv/floor on
# each host and listens on 127.0.0.1:PORT there. Exits non-zero if any host failed.
set -euo pipefail

usage() {
    echo "usage: $0 setup|deploy|rollback SSH_CONFIG PORT [VERSION] [JAR] HOST..." >&2
    exit 2
}
[ $# -ge 4 ] || usage
mode=$1 cfg=$2 port=$3
shift 3
here=$(cd -- "$(dirname -- "$0")" && pwd)

# What runs on a host for `deploy` and `rollback`: $1 = version, $2 = port.
# shellcheck disable=SC2016 # expanded on the host, not here
restart='set -eu
v=$1 port=$2 d=/srv/floor
printf "version=%s\n" "$v" >"$d/conf/service.properties"
if [ -f "$d/pid" ]; then
    old=$(cat "$d/pid")
    if kill -TERM "$old" 2>/dev/null; then
        while kill -0 "$old" 2>/dev/null; do sleep 0.1; done
    fi
fi
cd "$d"
SHIPJAR_CONFIG_DIR=$d/conf PORT=$port BIND=127.0.0.1 setsid java -Xmx256m \
    -XX:+ExitOnOutOfMemoryError -Dclojure.spec.skip-macros=true \
    -Dlogback.configurationFile="$d/conf/logback.xml" -jar "$d/app-$v.jar" \
    >"$d/console.log" 2>&1 </dev/null &
echo $! >"$d/pid"
n=0
until curl -fsS "http://127.0.0.1:$port/version" 2>/dev/null | grep -q "\"$v\""; do
    n=$((n + 1))
    if [ "$n" -gt 3000 ]; then echo "not on $v after 300 s" >&2; exit 1; fi
    sleep 0.1
done'

case $mode in
setup)
    logback=$(sed -e 's/{{[^}]*}}/floor/g' "$here/../examples/clojure-jetty/deploy/logback-production.xml")
    for host in "$@"; do
        ssh -F "$cfg" "$host" "mkdir -p /srv/floor/conf && cat >/srv/floor/conf/logback.xml && : >/srv/floor/conf/database.properties" <<<"$logback" &
    done
    ;;
deploy)
    [ $# -ge 3 ] || usage
    version=$1 jar=$2
    shift 2
    for host in "$@"; do
        {
            scp -q -F "$cfg" "$jar" "$host:/srv/floor/app-$version.jar"
            ssh -F "$cfg" "$host" sh -s -- "$version" "$port" <<<"$restart"
        } &
    done
    ;;
rollback)
    [ $# -ge 2 ] || usage
    version=$1
    shift
    for host in "$@"; do
        ssh -F "$cfg" "$host" sh -s -- "$version" "$port" <<<"$restart" &
    done
    ;;
*) usage ;;
esac

failed=0
for job in $(jobs -p); do
    wait "$job" || failed=$((failed + 1))
done
[ "$failed" -eq 0 ] || { echo "floor: $failed host(s) failed" >&2; exit 1; }
