#!/usr/bin/env bash
# shipjar against the floor (bench/floor.sh: one ssh master per host, the jar
# streamed, a restart through an init script, ONE poller process for all
# hosts every 0.1 s), side by side in one run: the Clojure example's uberjar
# deployed as a new artifact three consecutive times per size, then rolled
# back twice, on test fleets (network namespaces with their own sshd; needs
# root) of 1, 10 and 30 hosts, every host at once. Prints every run (not
# only medians) as a Markdown table, with the machine's CPU during each run
# split by process kind — JVMs, class-data dumps, shipjar (operator, agents,
# supervisors), ssh + sshd, the floor's poller, other, rest — from /proc:
# a thread reads /proc/*/stat every 20 ms and adds each process's utime +
# stime growth to its kind (processes in the fleet's network namespaces or
# descended from the bench, a child subreaper); `rest` is /proc/stat's busy
# time minus all that (other work on the machine, and the last unsampled
# <= 20 ms of processes that exited). Method in benches/support/fleet_cpu.rs.
# Usage: bench/fleet-deploy.sh [SIZES], e.g. "1,10,30"; FLEET_RUNS and
# FLEET_RUNS_LARGE (30+ hosts) set the deploys per size (3 each);
# FLEET_CDS=0 sets `[service] cds = false` (archives are on by default).
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
FLEET_SIZES=${1:-1,10,30} cargo bench --quiet --bench fleet
