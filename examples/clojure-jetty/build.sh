#!/bin/sh
# Builds target/inventory-1.0.0-standalone.jar with Maven, offline, from Debian's
# packaged libraries in /usr/share/maven-repo (see settings.xml). Quiet on success:
# Maven's output is shown only when the build fails.
set -eu

cd -- "$(dirname -- "$0")"
mkdir -p target
log=target/build.log
# -o plus the file protocol allowed offline: nothing is fetched from the network;
# artifacts are copied from the system repository into ~/.m2 as from any mirror.
if ! mvn -o -s settings.xml -Daether.offline.protocols=file -q package >"$log" 2>&1; then
    cat -- "$log" >&2
    exit 1
fi
rm -f -- "$log"
