#!/usr/bin/env bash
# Measures the host supervisor with the examples/hello JVM and prints tables:
#   - per run: the supervisor's own memory once the service is healthy, in kB,
#     from /proc/PID/smaps_rollup: RSS; PSS (shared pages split among the
#     processes mapping them); USS (Private_Clean + Private_Dirty: what its
#     exit would free); anon, the part of USS that is heap and stacks (the
#     rest is clean pages of the shipjar binary that only it maps: page
#     cache, which the kernel can drop under pressure);
#     readiness-detection latency (the supervisor's "healthy" event minus the
#     moment hello flipped to healthy, both from the log) and when
#     `service start` returned;
#   - crash restarts: the delay from each crash to the next start, against
#     the configured back-off.
# Target: readiness noticed within 50 ms.
# Benchmarks print; they do not assert. Usage: bench/supervisor.sh [RUNS]
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
runs=${1:-5}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/shipjar
work=$(mktemp -d)
root=$work/root
cleanup() {
    "$bin" service stop bench --root "$root" >/dev/null 2>&1 || true
    rm -rf -- "$work"
}
trap cleanup EXIT

BUILD_DIR=$work/build sh examples/hello/build.sh
jar=$work/build/hello.jar
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# A hand-made release of hello under $root; extra env and manifest keys as JSON.
release() {
    python3 - "$root" "$jar" "$port" "$1" "$2" <<'PY'
import json, os, sys
root, jar, port, env, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
lib = os.path.join(root, "var/lib/bench")
rel = os.path.join(lib, "releases/r1")
os.makedirs(os.path.join(rel, "config"), exist_ok=True)
env.update({"PORT": port, "BIND": "127.0.0.1", "TZ": "UTC"})
manifest = {
    "format": 1, "id": "r1", "service": "bench", "version": "bench",
    "artifact_sha256": "0" * 64, "jar": "hello.jar", "git_commit": None,
    "build_time": "2026-01-01T00:00:00Z", "deployed_at": "2026-01-01T00:00:00Z",
    "deployer": "bench@localhost", "stage": "local", "host": "local",
    "run": {"argv": ["java", "-Xmx64m", "-XX:TieredStopAtLevel=1", "-Xshare:auto", "-jar", jar],
            "env": env, "user": None},
    "health": {"check": {"kind": "http", "url": f"http://127.0.0.1:{port}/health"},
               "start_timeout_ms": 30000, "interval_ms": 5000},
    "version_check": None, "stop": {"timeout_ms": 10000}, "files": [],
}
manifest.update(extra)
with open(os.path.join(rel, "RELEASE"), "w") as f:
    json.dump(manifest, f)
link = os.path.join(lib, "current")
if not os.path.islink(link):
    os.symlink("releases/r1", link)
PY
}

log=$root/var/log/bench/bench.log

echo "== readiness and memory ($runs runs; hello turns healthy 1 s after it listens)"
printf '%-4s %9s %9s %9s %9s %9s %9s %9s %13s\n' \
    run start_ms rss_kb pss_kb uss_kb anon_kb detect_ms return_ms stop
release '{"STARTUP_DELAY_MS": "1000"}' '{}'
for i in $(seq 1 "$runs"); do
    rm -f -- "$log"
    t0=$(date +%s%N)
    "$bin" service start bench --root "$root" >/dev/null
    t1=$(date +%s%N)
    sleep 2
    sup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["supervisor"]["pid"])' \
        "$root/run/bench/supervisor.json")
    mem=$(awk '/^Rss:/{r=$2} /^Pss:/{p=$2} /^Private_(Clean|Dirty):/{u+=$2} /^Anonymous:/{a=$2} END{print r, p, u, a}' \
        "/proc/$sup/smaps_rollup")
    stop=$("$bin" service stop bench --root "$root" --json)
    python3 - "$i" "$t0" "$t1" "$log" "$mem" "$stop" <<'PY'
import datetime, json, sys
run, t0, t1, log, mem, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(), json.loads(sys.argv[6])
def ms(stamp):  # "2026-11-26 14:55:47.446" or "2026-11-26T14:55:47.446Z", UTC
    stamp = stamp.replace("T", " ").rstrip("Z")
    t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
ready = noticed = None
for line in open(log, errors="replace"):
    if ready is None and "start-up complete, healthy" in line:
        ready = ms(line[:23])
    if noticed is None and "[shipjar] healthy after" in line:
        noticed = ms(line[:24])
detect = f"{noticed - ready:.0f}" if ready and noticed else "?"
returned = f"{t1 / 1e6 - ready:.0f}" if ready else "?"
print(f"{run:<4} {(t1 - t0) / 1e6:>9.0f} {mem[0]:>9} {mem[1]:>9} {mem[2]:>9} {mem[3]:>9} {detect:>9} {returned:>9} "
      f"{stop['how']} in {stop['took_ms']} ms")
PY
done

echo
echo "== crash restarts (CRASH_AFTER_S=1; back-off 500 ms x2, give up at the 4th failure)"
release '{"CRASH_AFTER_S": "1"}' \
    '{"restart": {"initial_delay_ms": 500, "factor": 2.0, "max_delay_ms": 10000, "reset_after_ms": 60000, "max_failures": 4, "window_ms": 300000}}'
rm -f -- "$log"
"$bin" service start bench --root "$root" >/dev/null
for _ in $(seq 1 300); do
    "$bin" service status bench --root "$root" --json | grep -q '"state":"failed"' && break
    sleep 0.1
done
python3 - "$log" <<'PY'
import datetime, re, sys
def ms(stamp):
    t = datetime.datetime.strptime(stamp.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
events = [(ms(l[:24]), l[35:].strip()) for l in open(sys.argv[1], errors="replace") if " [shipjar] " in l]
print(f"{'restart':<8} {'configured':>11} {'crash_to_start_ms':>18}")
crash = None
n = 0
for t, e in events:
    if e.startswith("exited with code"):
        crash = t
    m = re.match(r"restarting in (.+) \(restart (\d+)\)", e)
    if m:
        configured = m.group(1)
    if e.startswith("started pid") and crash is not None:
        n += 1
        print(f"{n:<8} {configured:>11} {t - crash:>18.0f}")
        crash = None
    if e.startswith("giving up"):
        print(e)
PY
