#!/bin/sh
# Builds the hello example into $BUILD_DIR/hello.jar (default: build/ next to this script).
# A relative BUILD_DIR is relative to this script's directory. Quiet on success: compiler
# output is shown only when the build fails. Copies with different BUILD_DIRs may run at once.
set -eu

cd -- "$(dirname -- "$0")"
build_dir=${BUILD_DIR:-build}
classes=$build_dir/classes

rm -rf -- "$classes"
mkdir -p -- "$classes"

# javac warns about sun.misc.Signal even with -nowarn; keep its output for failures only.
log=$build_dir/javac.log
if ! javac --release 17 -nowarn -encoding UTF-8 -d "$classes" src/*.java >"$log" 2>&1; then
    cat -- "$log" >&2
    exit 1
fi
rm -f -- "$log"

# Write under a temporary name and rename, so nobody ever sees a half-written jar.
jar --create --file "$build_dir/hello.jar.tmp" --main-class Hello -C "$classes" .
mv -f -- "$build_dir/hello.jar.tmp" "$build_dir/hello.jar"
