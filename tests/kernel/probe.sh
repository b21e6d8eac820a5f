#!/usr/bin/env bash
# probe.sh [--update]
#
# Runs the raw C probe (raw/mtty_probe.c) against mtty in the guest and writes
# its transcript, with the kernel and qemu it came from, to the run's results
# folder. --update also replaces the committed reference,
# tests/kernel/mtty-transcript.json, but only from a run whose checks all held.
# Exit status: the probe's (0 all checks held, 1 a check failed), 77 when the
# lane cannot run here.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNEL_LANE_CACHE:-$ROOT/.cache/kernel}
update=0
case ${1:-} in
  --update) update=1 ;;
  "") ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

export KERNEL_LANE_OUT=${KERNEL_LANE_OUT:-$CACHE/runs/probe}
# A transcript left by an earlier run must not pass for this one's.
mkdir -p "$KERNEL_LANE_OUT"
rm -f "$KERNEL_LANE_OUT/records.json" "$KERNEL_LANE_OUT/mtty-transcript.json"
rc=0
"$HERE/run-in-guest.sh" sh -c '
  set -- "$MTTY_A_GROUP_PATH" "$MTTY_A_UUID" "$MTTY_B_GROUP_PATH" "$MTTY_B_UUID"
  [ "$KERNEL_LANE_SKIP_FIX" = 1 ] && set -- "$@" --skip-fix
  "$KERNEL_LANE_PROBE" "$@" >"$KERNEL_LANE_OUT/records.json"' || rc=$?
((rc == 77)) && exit 77
[[ -s $KERNEL_LANE_OUT/records.json ]] || { echo "probe.sh: the probe wrote no transcript (status $rc)" >&2; exit $((rc ? rc : 1)); }

set -a; source "$CACHE/lane.env"; set +a
node - "$KERNEL_LANE_OUT" "$("$KERNEL_LANE_QEMU" --version | head -n1)" <<'JS'
const fs = require('fs');
const [out, qemu] = process.argv.slice(2);
const env = Object.fromEntries(fs.readFileSync(`${out}/devices.env`, 'utf8').trim().split('\n').map(l => l.split('=')));
const records = JSON.parse(fs.readFileSync(`${out}/records.json`, 'utf8'));
const t = {
  what: 'mtty (Linux samples/vfio-mdev) driven through raw VFIO ioctls by tests/kernel/raw/mtty_probe.c',
  kernel: env.KERNEL_LANE_GUEST_KREL,
  qemu,
  mdev_type: env.MTTY_TYPE,
  skip_fix: process.env.KERNEL_LANE_SKIP_FIX === '1',
  iova_bitmap: process.env.KERNEL_LANE_IOVA_BITMAP === '1',
  records,
};
// One record per line: reviewable diffs when the kernel's answers change.
const body = records.map(r => '    ' + JSON.stringify(r)).join(',\n');
const head = JSON.stringify({ ...t, records: '@' }, null, 2).replace('"records": "@"', `"records": [\n${body}\n  ]`);
fs.writeFileSync(`${out}/mtty-transcript.json`, head + '\n');
JS
echo "probe.sh: transcript at $KERNEL_LANE_OUT/mtty-transcript.json" >&2
if ((update)); then
  ((rc == 0)) || { echo "probe.sh: not updating the reference: the probe's checks failed (status $rc)" >&2; exit "$rc"; }
  cp "$KERNEL_LANE_OUT/mtty-transcript.json" "$HERE/mtty-transcript.json"
  echo "probe.sh: updated tests/kernel/mtty-transcript.json" >&2
fi
exit "$rc"
