#!/usr/bin/env bash
# How one operator scales: deploys a light `command` service (a small python
# HTTP server) to test fleets of 10, 30, 100 and 300 hosts (network namespaces
# with their own sshd; needs root) and prints per size and deploy the wall
# time, the operator's CPU (shipjar's own and its ssh processes' apart, per
# host too), its peak memory (RSS of shipjar + its ssh processes every
# SAMPLE_MS, PSS every 25th sample), the peak of ssh processes alive and of
# shipjar's threads; then `status` of each fleet right after the deploy
# against one fresh `ssh HOST true`.
# Usage: bench/fleet-scale.sh [SIZES] [PARALLEL], e.g. "10,30" 64.
# KEX=curve25519-sha256 sets the hosts' KexAlgorithms in the bench's ssh
# config (OpenSSH 9.2 negotiates sntrup761x25519-sha512 by default); MUX=1
# adds persistent multiplexing there (ControlMaster auto, ControlPersist 60),
# as a user's own ssh config would; SHIPJAR_BIN=PATH measures another build.
# Ctrl-C stops after the step in flight and removes the fleets.
set -euo pipefail
cd -- "$(dirname -- "$0")/.."
FLEET_SIZES=${1:-10,30,100,300} PARALLEL=${2:-} cargo bench --quiet --bench fleet_scale
