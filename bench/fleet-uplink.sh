#!/usr/bin/env bash
# Through a shaped uplink: the operator's link to a test fleet (network
# namespaces with their own sshd; needs root) limited to 100 Mbit/s with
# 1 ms added (a netem + tbf qdisc on the operator's end of the fleet's
# link), an artifact repository (Debian's nginx with WebDAV PUT) on a host of
# its own on the fleet's bridge, and one new 8.2 MiB jar (the hello example's
# padded with 8 MiB of random bytes) deployed three ways at each size, in one
# run: the floor (bench/floor.sh: one ssh per host streaming the jar, every
# host at once, a restart through an init script), shipjar pushing (`fetch =
# "operator"`), shipjar with hosts pulling (`shipjar publish`, then `deploy
# --version` with `fetch = "host"`). First proves the two paths (an ssh
# transfer to a host runs at the shaped rate through the qdisc; a host's
# download from the repository does not touch it), then prints per size and
# way the wall time, the bytes the operator sent (the qdisc's counter) and
# the machine's CPU by process kind (benches/support/fleet_cpu.rs), and a
# Markdown table with time(largest)/time(smallest) per way and pull/floor.
# Usage: bench/fleet-uplink.sh [SIZES], e.g. "3,10" (default 10,30,100);
# FLEET_CDS=1 keeps shipjar's class-data archives (off here: the floor makes
# none, and one way's archive dump would run on into the next way's run).
# Ctrl-C stops after the step in flight and removes the qdisc, the
# repository and the fleet.
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
FLEET_SIZES=${1:-10,30,100} cargo bench --quiet --bench fleet_uplink
