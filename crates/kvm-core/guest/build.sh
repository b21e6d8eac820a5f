#!/bin/sh
# Assembles workload.S into the flat binary that kvm-core embeds (include_bytes!).
# Needs binutils (as, objcopy). The result is committed so builds do not need binutils.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/w.o" workload.S
objcopy -O binary -j .text "$tmp/w.o" workload.bin
echo "workload.bin: $(wc -c < workload.bin) bytes"
