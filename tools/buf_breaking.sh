#!/usr/bin/env bash
# The protos' breaking-change check (buf breaking, rules in buf.yaml) against an earlier state of the repository.
#
#   tools/buf_breaking.sh BUF [REF]        (make lint runs it; make lint BUF_AGAINST=REF picks the ref)
#
# REF: the given one, else the merge-base with origin/main when this branch has diverged from it, else HEAD~1
# (on main itself, as in CI: main's previous state). The ref's protos are built with this checkout's buf.yaml
# and google/* protos (build/proto-deps) into an image, and the working tree's protos are compared with it.
# A ref this clone does not have (a shallow clone, a first commit, no .git) skips this one check, loudly;
# anything else that fails, fails.
set -euo pipefail
buf=$1
ref=${2:-}

skip() {
  echo "!! buf breaking SKIPPED: $*" >&2
  echo "!! (compare with a ref this clone has: make lint BUF_AGAINST=<ref>)" >&2
  exit 0
}

git rev-parse --git-dir >/dev/null 2>&1 || skip "not a git checkout"
if [ -z "$ref" ]; then
  head=$(git rev-parse HEAD)
  base=$(git merge-base HEAD origin/main 2>/dev/null || true)
  if [ -n "$base" ] && [ "$base" != "$head" ]; then ref=$base; else ref=HEAD~1; fi
fi
commit=$(git rev-parse --verify -q "$ref^{commit}") || skip "$ref is not in this clone (a shallow clone, or the first commit)"
git cat-file -e "$commit:protos" 2>/dev/null || skip "$ref has no protos/ folder"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$commit" protos | tar -x -C "$tmp"
mkdir -p "$tmp/build"
cp -R build/proto-deps "$tmp/build/proto-deps"
cp buf.yaml "$tmp/buf.yaml"
(cd "$tmp" && "$buf" build protos -o image.binpb)

echo "== buf breaking: protos/ against $ref ($(git rev-parse --short "$commit"))"
"$buf" breaking protos --against "$tmp/image.binpb"
