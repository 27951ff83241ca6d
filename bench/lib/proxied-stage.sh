# shellcheck shell=bash disable=SC2034  # sets variables for the script that sources it
# Sourced by bench/proxy.sh and bench/proxy-peers.sh: a copy of examples/hello
# with a stage behind the proxy (`proxied`) and one without (`plain`), built
# once and deployed once each (warm-1). Sets bin, load, work, direct, listen;
# defines deploy and active; stops both services and removes $work on exit.
# SHIPJAR_BIN=PATH measures another build of shipjar (e.g. other profile settings).
cargo build --release --quiet
cargo bench --quiet --bench proxy_load --no-run 2>/dev/null
load=$(find target/release/deps -maxdepth 1 -type f -executable -name 'proxy_load-*' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
bin=${SHIPJAR_BIN:-$PWD/target/release/shipjar}
work=$(mktemp -d)
cleanup() {
    "$bin" service stop hello --root "$work/.shipjar/proxied" >/dev/null 2>&1 || true
    "$bin" service stop hello --root "$work/.shipjar/plain" >/dev/null 2>&1 || true
    rm -rf -- "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
direct=$(free_port); listen=$(free_port); a=$(free_port); b=$(free_port)
cp -r examples/hello/deploy "$work/"
cp "$work/deploy/logging-local.properties" "$work/deploy/logging-proxied.properties"
cp "$work/deploy/logging-local.properties" "$work/deploy/logging-plain.properties"
# hello's JDK HTTP server writes headers and body apart: without TCP_NODELAY
# every answer waits 40 ms for a delayed ACK, which would hide everything else.
sed "s/18080/$direct/g; s/java_opts = \\[/java_opts = [\"-Dsun.net.httpserver.nodelay=true\", /; s|command = \"sh build.sh\"|command = \"BUILD_DIR='$work/build' sh '$PWD/examples/hello/build.sh'\"|" \
    examples/hello/shipjar.toml >"$work/shipjar.toml"
cat >>"$work/shipjar.toml" <<EOF

[stages.proxied]
root = ".shipjar/proxied"
vars = { db_url = "jdbc:postgresql://127.0.0.1:5432/hello", db_user = "hello" }
secrets = { db_password = { env = "HELLO_DB_PASSWORD" } }
proxy = { listen = "127.0.0.1:$listen", ports = [$a, $b] }

[stages.plain]
root = ".shipjar/plain"
vars = { db_url = "jdbc:postgresql://127.0.0.1:5432/hello", db_user = "hello" }
secrets = { db_password = { env = "HELLO_DB_PASSWORD" } }
EOF
export HELLO_DB_PASSWORD=bench-secret
"$bin" -C "$work" build --version bench >/dev/null 2>&1
deploy() { "$bin" -C "$work" deploy "$@" --skip-build >/dev/null 2>&1; }
deploy proxied --version warm-1
deploy plain --version warm-1


# The port of the instance taking traffic behind the proxy.
active() { cat "$work/.shipjar/proxied/run/hello/proxy/active"; }
