#!/usr/bin/env bash
# shipjar against the floor (bench/floor.sh), side by side in one run: the
# Clojure example's uberjar deployed as a new artifact, then rolled back, on
# test fleets (network namespaces with their own sshd; needs root) of 1, 10
# and 30 hosts, every host at once. Prints medians (3 runs, 2 at 30+ hosts)
# as a Markdown table, with the operator's and the whole machine's CPU.
# Usage: bench/fleet-deploy.sh [SIZES], e.g. "1,10,30"; FLEET_RUNS and
# FLEET_RUNS_LARGE set the run counts; FLEET_CDS=1 turns on `[service] cds`
# (a rollback then starts from the release's class-data archive).
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
FLEET_SIZES=${1:-1,10,30} cargo bench --quiet --bench fleet
