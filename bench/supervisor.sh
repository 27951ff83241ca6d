#!/usr/bin/env bash
# Measures the host supervisor with the examples/hello JVM and prints tables:
#   - per run: the supervisor's own memory once the service is healthy, in kB,
#     from /proc/PID/smaps_rollup: RSS; PSS (shared pages split among the
#     processes mapping them); USS (Private_Clean + Private_Dirty: what its
#     exit would free); anon (heap and stacks); readiness-detection
#     latency (the supervisor's "healthy" event minus the moment hello flipped
#     to healthy, and minus hello's first healthy answer, both from the log)
#     and when `service start` returned; then median and max, for a hello
#     that is healthy as soon as it listens and one healthy 1 s later;
#   - probe pacing: the health requests hello logs during a 30 s start that
#     never gets healthy;
#   - liveness: from hello turning unhealthy (UNHEALTHY_AFTER_S) to the
#     supervisor restarting it, against interval x (failures + 1);
#   - crash restarts: the delay from each crash to the next start, against
#     the configured back-off;
#   - isolated crashes: hello SIGKILLed after a healthy run longer than
#     `reset_after`, and the time from the kill to the new process and to
#     healthy again, against hello's own start-to-healthy.
# Targets: supervisor PSS under 1 MB, readiness noticed within 50 ms, at
# most about 100 probes in a 30 s never-healthy start, healthy again after an
# isolated crash within hello's own start time + 100 ms.
# Benchmarks print; they do not assert. Usage: bench/supervisor.sh [RUNS]
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
runs=${1:-20}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/shipjar
# In /dev/shm (tmpfs) like a host's /run, where the supervisor's state and
# pidfile live: their fsyncs cost nothing there, as on a real host.
work=$(mktemp -d -p /dev/shm)
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

log=$root/var/log/bench/console.log

# Parses the log of one start: readiness latencies, appended to $results.
results=$work/results
readiness_run() {
    local i=$1
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
    python3 - "$i" "$t0" "$t1" "$log" "$mem" "$stop" "$results" <<'PY'
import datetime, json, sys
run, t0, t1, log, mem, stop, results = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(), json.loads(sys.argv[6]), sys.argv[7]
def ms(stamp):  # "2026-11-26 14:55:47.446" or "2026-11-26T14:55:47.446Z", UTC
    stamp = stamp.replace("T", " ").rstrip("Z")
    t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
ready = answered = noticed = None
for line in open(log, errors="replace"):
    if ready is None and "start-up complete, healthy" in line:
        ready = ms(line[:23])
    if answered is None and "first healthy answer to /health" in line:
        answered = ms(line[:23])
    if noticed is None and "[shipjar] healthy after" in line:
        noticed = ms(line[:24])
detect = noticed - ready if ready and noticed else None
answer = noticed - answered if answered and noticed else None
show = lambda v: "?" if v is None else f"{v:.0f}"
returned = f"{t1 / 1e6 - ready:.0f}" if ready else "?"
print(f"{run:<4} {(t1 - t0) / 1e6:>9.0f} {mem[0]:>7} {mem[1]:>7} {mem[2]:>7} {mem[3]:>7} {show(detect):>9} {show(answer):>9} {returned:>9} "
      f"{stop['how']} in {stop['took_ms']} ms")
with open(results, "a") as f:
    f.write(json.dumps({"detect": detect, "answer": answer, "rss": int(mem[0]), "pss": int(mem[1]), "uss": int(mem[2])}) + "\n")
PY
}

summary() {
    python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for key, what in [("detect", "ready flag -> noticed"), ("answer", "first healthy answer -> noticed")]:
    vals = [r[key] for r in rows if r[key] is not None]
    if vals:
        print(f"{what:<34} median {statistics.median(vals):4.0f} ms, max {max(vals):4.0f} ms ({len(vals)} runs)")
for key in ["rss", "pss", "uss"]:
    vals = [r[key] for r in rows]
    print(f"{'supervisor ' + key.upper():<34} median {statistics.median(vals):4.0f} kB, max {max(vals):4.0f} kB")
PY
}

header() {
    printf '%-4s %9s %7s %7s %7s %7s %9s %9s %9s %s\n' \
        run start_ms rss_kb pss_kb uss_kb anon_kb detect_ms answer_ms return_ms stop
}

for delay in 0 1000; do
    echo "== readiness and memory ($runs starts; hello turns healthy ${delay} ms after it listens)"
    echo "   detect_ms: from hello's ready flag; answer_ms: from hello's first healthy answer"
    header
    release "{\"STARTUP_DELAY_MS\": \"$delay\"}" '{}'
    rm -f -- "$results"
    for i in $(seq 1 "$runs"); do
        readiness_run "$i"
    done
    summary
    echo
done

echo "== probe pacing (a 30 s start that never gets healthy; hello logs every request)"
release '{"HANG_ON_START": "1", "ACCESS_LOG": "1"}' '{}'
rm -f -- "$log"
t0=$(date +%s%N)
"$bin" service start bench --root "$root" >"$work/out" 2>&1 || true
t1=$(date +%s%N)
probes=$(grep -c 'GET /health -> ' "$log" || true)
echo "start failed after $(( (t1 - t0) / 1000000 )) ms with $probes health requests to hello"
grep -o 'error: .*' "$work/out" | head -1

echo
echo "== liveness (UNHEALTHY_AFTER_S=2; interval 1 s, 3 failures, probe timeout 1 s)"
release '{"UNHEALTHY_AFTER_S": "2"}' \
    '{"health": {"check": {"kind": "http", "url": "http://127.0.0.1:'"$port"'/health"}, "start_timeout_ms": 30000, "interval_ms": 1000, "failures": 3, "probe_timeout_ms": 1000}, "restart": {"initial_delay_ms": 500, "factor": 2.0, "max_delay_ms": 10000, "reset_after_ms": 60000, "max_failures": 3, "window_ms": 300000}}'
rm -f -- "$log"
"$bin" service start bench --root "$root" >/dev/null
for _ in $(seq 1 300); do
    [ "$(grep -c '\[shipjar\] healthy after' "$log" || true)" -ge 2 ] && break
    sleep 0.1
done
"$bin" service stop bench --root "$root" >/dev/null
python3 - "$log" <<'PY'
import datetime, sys
def ms(stamp):
    stamp = stamp.replace("T", " ").rstrip("Z")
    t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
ready = given_up = restarted = None
for line in open(sys.argv[1], errors="replace"):
    if ready is None and "start-up complete, healthy" in line:
        ready = ms(line[:23])
    if "[shipjar] health check failed" in line or "[shipjar] unhealthy" in line:
        print("  " + line.rstrip()[24:])
    if given_up is None and "[shipjar] unhealthy:" in line:
        given_up = ms(line[:24])
    if given_up and restarted is None and "[shipjar] healthy after" in line:
        restarted = ms(line[:24])
if ready and given_up:
    print(f"unhealthy at +2000 ms, restart decided {given_up - ready - 2000:.0f} ms later "
          f"(bound: interval x (failures + 1) = 4000 ms)")
if given_up and restarted:
    print(f"healthy again {restarted - given_up:.0f} ms after that (stop, 500 ms back-off, start)")
PY

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

echo
echo "== isolated crashes (healthy 3 s > reset_after 2 s, then SIGKILL; 5 times)"
release '{}' \
    '{"restart": {"initial_delay_ms": 1000, "factor": 2.0, "max_delay_ms": 10000, "reset_after_ms": 2000, "max_failures": 10, "window_ms": 300000}}'
rm -f -- "$log"
"$bin" service start bench --root "$root" >/dev/null
kills=$work/kills
: >"$kills"
for _ in 1 2 3 4 5; do
    sleep 3
    # status exits 3 while a restart is under way: not an error here.
    pid=$("$bin" service status bench --root "$root" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' || true)
    date -u +%Y-%m-%dT%H:%M:%S.%3NZ >>"$kills"
    kill -KILL "$pid"
    for _ in $(seq 1 100); do
        sleep 0.1
        new=$("$bin" service status bench --root "$root" --json |
            python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["pid"] if s["state"] == "running" else "")' ||
            true)
        [ -n "$new" ] && [ "$new" != "$pid" ] && break
    done
done
"$bin" service stop bench --root "$root" >/dev/null
python3 - "$log" "$kills" <<'PY'
import datetime, re, statistics, sys
def ms(stamp):
    t = datetime.datetime.strptime(stamp.strip().rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() * 1000
events = [(ms(l[:24]), l[35:].strip()) for l in open(sys.argv[1], errors="replace") if " [shipjar] " in l]
kills = [ms(l) for l in open(sys.argv[2]) if l.strip()]
own = [int(m.group(1)) for _, e in events for m in [re.search(r"healthy after (\d+) ms", e)] if m]
print(f"{'crash':<6} {'kill_to_start_ms':>17} {'kill_to_healthy_ms':>19} {'own_start_ms':>13}")
rows = []
for i, k in enumerate(kills):
    start = next((t for t, e in events if t >= k and e.startswith("started pid")), None)
    healthy = next((t for t, e in events if t >= k and "healthy after" in e), None)
    if start is None or healthy is None:
        print(f"{i + 1:<6} no restart seen")
        continue
    rows.append((start - k, healthy - k))
    print(f"{i + 1:<6} {start - k:>17.0f} {healthy - k:>19.0f} {own[i + 1] if i + 1 < len(own) else '?':>13}")
if rows and own:
    print(f"median: new process {statistics.median(r[0] for r in rows):.0f} ms after the kill, healthy "
          f"{statistics.median(r[1] for r in rows):.0f} ms after it; hello's own start-to-healthy "
          f"median {statistics.median(own):.0f} ms")
PY
