#!/usr/bin/env bash
# Install Prometheus and promtool (the tests of deploy/observability/) into DEST from Debian's package
# `prometheus`, pinned to VERSION: `apt-get download` fetches the .deb (no install, no service started),
# dpkg-deb unpacks it, and the two binaries are copied out. Usage: tools/prometheus.sh VERSION DEST
set -euo pipefail
version=$1
dest=$(mkdir -p "$2" && cd "$2" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download -q "prometheus=$version" >/dev/null 2>&1; then
  # No package lists yet (a fresh machine), or stale ones: read them once and try again.
  apt-get update -q >/dev/null
  if ! apt-get download -q "prometheus=$version" >/dev/null 2>&1; then
    # The archive replaced the pinned build (a point release): take its current one, and say so.
    echo "tools/prometheus.sh: prometheus=$version is gone from the archive; installing $(apt-cache policy prometheus | awk '/Candidate/ {print $2}') (update PROMETHEUS_DEB in the Makefile)" >&2
    apt-get download -q prometheus >/dev/null
  fi
fi
dpkg-deb -x prometheus_*.deb unpacked
mkdir -p "$dest"
cp unpacked/usr/bin/prometheus unpacked/usr/bin/promtool "$dest/"
"$dest/promtool" --version | head -1
