#!/usr/bin/env bash
# Deploys examples/hello to test fleets of 1, 10 and 30 hosts (network
# namespaces with their own sshd; needs root) and prints wall time per phase
# and round trips per host, for a first deploy (with upload) and a second one
# of the same artifact. Usage: bench/fleet-deploy.sh [SIZES], e.g. "1,10,30".
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
FLEET_SIZES=${1:-1,10,30} cargo bench --quiet --bench fleet
