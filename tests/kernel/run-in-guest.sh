#!/usr/bin/env bash
# run-in-guest.sh COMMAND [ARGS...]
#
# Boots the Linux 6.12 guest under qemu (TCG), which loads vfio + mtty, creates
# two mtty mdev devices (A and B) and runs COMMAND in a chroot of the host's own
# root (shared read-only over 9p) at the project root. The command sees:
#   MTTY_A_UUID MTTY_A_GROUP MTTY_A_GROUP_PATH   (and the same for B)
#   MTTY_TYPE MTTY_NR_PORTS KERNEL_LANE_GUEST_KREL
#   KERNEL_LANE_OUT   a folder shared writable with the host: results go there
#   KERNEL_LANE_PROBE the raw C probe binary; KERNEL_LANE_SKIP_FIX=1 when the
#                     guest kernel has the skip-loop fix (STOP_COPY -> PRE_COPY
#                     is then safe to send)
#   KERNEL_LANE_IOVA_BITMAP=1 when the kernel has CONFIG_IOMMUFD_DRIVER (else a
#                     DMA logging report is EOPNOTSUPP)
# Exits with COMMAND's status. 77 (with "SKIPPED: reason") when the lane cannot
# run here; 124 when the guest did not finish within KERNEL_LANE_TIMEOUT
# seconds (default 300); 125 when the guest failed before running COMMAND.
#
# KERNEL_LANE_OUT may be set by the caller to choose the results folder (it is
# created); otherwise a fresh one under .cache/kernel/runs/ is used and printed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNEL_LANE_CACHE:-$ROOT/.cache/kernel}

(($#)) || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }

rc=0
"$HERE/prepare.sh" || rc=$?
((rc == 0)) || exit "$rc"
# shellcheck source=/dev/null
source "$CACHE/lane.env"

if [[ -n ${KERNEL_LANE_OUT:-} ]]; then
  mkdir -p "$KERNEL_LANE_OUT"
  OUT=$(cd "$KERNEL_LANE_OUT" && pwd)
  rm -f "$OUT/status" "$OUT/setup-error" "$OUT/devices.env"
else
  mkdir -p "$CACHE/runs"
  # Keep the last few runs for inspection, not all of them.
  { ls -1dt "$CACHE"/runs/run.* 2>/dev/null || true; } | tail -n +6 | xargs -r rm -rf
  OUT=$(mktemp -d "$CACHE/runs/run.XXXXXX")
fi
# Boot parameters are split on spaces by the kernel.
[[ $OUT != *[[:space:]]* && $ROOT != *[[:space:]]* ]] \
  || { echo "kernel-lane: paths with whitespace are not supported: $OUT / $ROOT" >&2; exit 2; }

{
  printf 'KERNEL_LANE_OUT=%q\n' "$OUT"
  # devices.env is only known inside the guest: it arrives through the share.
  echo 'set -a; . "$KERNEL_LANE_OUT/devices.env"; set +a'
  printf 'export PATH=%q HOME=/tmp KERNEL_LANE_OUT=%q\n' "$PATH" "$OUT"
  printf 'export KERNEL_LANE_PROBE=%q KERNEL_LANE_SKIP_FIX=%q KERNEL_LANE_KVER=%q KERNEL_LANE_IOVA_BITMAP=%q\n' \
    "$KERNEL_LANE_PROBE" "$KERNEL_LANE_SKIP_FIX" "$KERNEL_LANE_KVER" "$KERNEL_LANE_IOVA_BITMAP"
  printf 'exec'; printf ' %q' "$@"; echo
} >"$OUT/cmd.sh.tmp"
mv "$OUT/cmd.sh.tmp" "$OUT/cmd.sh"

timeout_s=${KERNEL_LANE_TIMEOUT:-300}
smp=${KERNEL_LANE_SMP:-2}
start=$(date +%s%N)
set +e
# stdin from /dev/null: qemu's stdio chardev must not steal the caller's input.
# The serial console ends lines with CR LF; tr keeps logs readable.
timeout -k 5 "$timeout_s" "$KERNEL_LANE_QEMU" \
  -accel tcg,thread=multi -cpu max -m 2048 -smp "$smp" \
  -nodefaults -no-reboot -display none -serial stdio \
  -kernel "$KERNEL_LANE_VMLINUZ" -initrd "$KERNEL_LANE_INITRD" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 lane_out=$OUT lane_cwd=$ROOT" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$OUT,mount_tag=laneout,security_model=none,multidevs=remap" \
  </dev/null 2>"$OUT/qemu.stderr" | tr -d '\r'
q=${PIPESTATUS[0]}
set -e
ms=$((($(date +%s%N) - start) / 1000000))
secs=$((ms / 1000)).$(printf %03d $((ms % 1000)))

if [[ -f $OUT/status ]]; then
  st=$(cat "$OUT/status")
  [[ -f $OUT/setup-error ]] && echo "kernel-lane: guest setup failed: $(cat "$OUT/setup-error")" >&2
  echo "kernel-lane: guest finished in ${secs}s, command exit status $st (results: $OUT)" >&2
  exit "$st"
fi
if ((q == 124 || q == 137)); then
  echo "kernel-lane: guest timed out after ${timeout_s}s (KERNEL_LANE_TIMEOUT); results: $OUT" >&2
  exit 124
fi
echo "kernel-lane: guest ended without an exit status (qemu status $q): $(tail -n3 "$OUT/qemu.stderr")" >&2
exit 125
