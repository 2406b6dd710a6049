#!/usr/bin/env bash
# Install wrk (the HTTP load tool of bench/) into DEST from Debian's packages `wrk` and its LuaJIT library
# `libluajit-5.1-2`, pinned to the versions given: `apt-get download` fetches the .debs (no root, no install),
# dpkg-deb unpacks them, and DEST/wrk is a wrapper that runs the binary with the unpacked library.
# Usage: tools/wrk.sh WRK_VERSION LUAJIT_VERSION DEST
set -euo pipefail
wrk_version=$1
luajit_version=$2
dest=$(mkdir -p "$3" && cd "$3" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

fetch() { # package version
  if ! apt-get download -q "$1=$2" >/dev/null 2>&1; then
    # No package lists yet (a fresh machine), or stale ones: read them once and try again.
    apt-get update -q >/dev/null 2>&1 || true
    if ! apt-get download -q "$1=$2" >/dev/null 2>&1; then
      # The archive replaced the pinned build (a point release): take its current one, and say so.
      echo "tools/wrk.sh: $1=$2 is gone from the archive; installing $(apt-cache policy "$1" | awk '/Candidate/ {print $2}') (update the pin in the Makefile)" >&2
      apt-get download -q "$1" >/dev/null
    fi
  fi
}

fetch wrk "$wrk_version"
fetch libluajit-5.1-2 "$luajit_version"
for deb in ./*.deb; do dpkg-deb -x "$deb" unpacked; done
rm -rf "$dest/lib"
mkdir -p "$dest/lib"
cp unpacked/usr/bin/wrk "$dest/wrk.bin"
cp -P unpacked/usr/lib/*/libluajit-5.1.so.2* "$dest/lib/"
cat >"$dest/wrk" <<'WRAPPER'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/wrk.bin" "$@"
WRAPPER
chmod +x "$dest/wrk"
"$dest/wrk" --version 2>&1 | head -1 || true
