#!/usr/bin/env bash
# The dependency locks, compiled by uv from pyproject.toml (exact versions and hashes, for every platform):
#   requirements.lock          make up / make test / make lint: the runtime dependencies and the test and lint extras
#   deploy/requirements.lock   the image (deploy/Dockerfile): the runtime dependencies less the embedded Postgres and
#                              Redis of local runs (deploy/image_requirements.py)
#
#   tools/lock.sh UV PYTHON            write both (make lock); pins already in a lock are kept unless pyproject.toml
#                                      needs otherwise (make lock UPGRADE=1 passes --upgrade: everything newest)
#   tools/lock.sh UV PYTHON --check    fail when either lock is not what pyproject.toml gives (make lint)
set -euo pipefail
uv=$1
py=$2
mode=${3:-write}
opts=(--universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock")
[ -n "${UPGRADE:-}" ] && opts+=(--upgrade)

compile() {  # compile DIR: both locks into DIR/requirements.lock and DIR/deploy/requirements.lock
  local dir=$1
  mkdir -p build "$dir/deploy"
  "$uv" pip compile pyproject.toml --extra test --extra lint "${opts[@]}" -o "$dir/requirements.lock"
  "$py" deploy/image_requirements.py pyproject.toml > build/image-requirements.in
  "$uv" pip compile build/image-requirements.in "${opts[@]}" -o "$dir/deploy/requirements.lock"
}

if [ "$mode" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/deploy"
  cp requirements.lock "$tmp/requirements.lock"  # its pins are the preferences, as in make lock
  cp deploy/requirements.lock "$tmp/deploy/requirements.lock"
  compile "$tmp"
  if ! diff -u requirements.lock "$tmp/requirements.lock" || ! diff -u deploy/requirements.lock "$tmp/deploy/requirements.lock"; then
    echo "!! the locks are not what pyproject.toml gives: run make lock and commit requirements.lock, deploy/requirements.lock" >&2
    exit 1
  fi
  echo "locks match pyproject.toml"
else
  compile .
fi
