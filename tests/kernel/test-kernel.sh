#!/usr/bin/env bash
# npm run test:kernel: prepares the lane (cached), then runs the kernel suite
# (tests/kernel/suite.mjs) in the Linux 6.12 guest against mtty. Exits 0 with
# "SKIPPED: reason" only when the lane cannot run on this machine, and never
# under CI (prepare.sh fails there instead, saying why).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
start=$(date +%s%N)

rc=0
"$HERE/prepare.sh" || rc=$?
if ((rc == 77)); then exit 0; fi # prepare.sh printed the SKIPPED line
((rc == 0)) || exit "$rc"

# The guest runs the host's build: it must exist (npm run build).
if ! ls "$ROOT"/native/*.node >/dev/null 2>&1 || [[ ! -f $ROOT/native/index.cjs ]]; then
  echo "test:kernel: native/index.cjs or the .node addon is missing: run 'npm run build' first" >&2
  exit 1
fi

rc=0
# One file after the other, each in its own process: migration.mjs needs the
# suite's process (which holds mdevs A and B until it exits) to be gone.
KERNEL_LANE_TIMEOUT=${KERNEL_LANE_TIMEOUT:-900} "$HERE/run-in-guest.sh" env NO_COLOR=1 \
  node --test --test-concurrency=1 --test-reporter=spec "$HERE/suite.mjs" "$HERE/migration.mjs" "$HERE/local.mjs" || rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
echo "test:kernel: lane finished in $((ms / 1000)).$(printf %03d $((ms % 1000)))s with status $rc" >&2
if ((rc == 77)); then exit 0; fi
exit "$rc"
