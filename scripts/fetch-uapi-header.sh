#!/usr/bin/env bash
# Fetches the Linux 6.12 VFIO uAPI header that the layout test in
# crates/vfio-uapi/tests/ compares the Rust definitions against. Bookworm's
# linux-libc-dev is 6.1, which predates PRE_COPY, so the header comes from the
# newest linux-headers-6.12.*-common package instead (a plain .deb download,
# nothing is installed). Idempotent: a cached header means no work.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/uapi"
out="$cache/linux/vfio.h"

if [[ -s "$out" ]]; then
  echo "fetch-uapi-header: cached $out"
  exit 0
fi

find_pkg() {
  apt-cache search --names-only '^linux-headers-6\.12\..*-common$' | awk '{print $1}' | sort -V | tail -n 1
}

pkg="$(find_pkg)"
if [[ -z "$pkg" ]]; then
  # The package lists may never have been fetched on a fresh machine.
  apt-get update -qq
  pkg="$(find_pkg)"
fi
if [[ -z "$pkg" ]]; then
  echo "fetch-uapi-header: no linux-headers-6.12.*-common package in the apt sources" >&2
  exit 1
fi

mkdir -p "$cache/deb" "$cache/linux"
work="$(mktemp -d "$cache/deb/extract.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory, as the _apt user when
# it can: give it a directory it may write to.
chmod 0777 "$work"
(cd "$work" && apt-get download -qq "$pkg")
deb="$(ls "$work"/*.deb)"
dpkg-deb -x "$deb" "$work/root"
hdr="$(find "$work/root" -path '*/include/uapi/linux/vfio.h' | head -n 1)"
if [[ -z "$hdr" ]]; then
  echo "fetch-uapi-header: $pkg has no include/uapi/linux/vfio.h" >&2
  exit 1
fi
# Write atomically so an interrupted run never leaves a half header "cached".
cp "$hdr" "$out.tmp"
mv "$out.tmp" "$out"
echo "$pkg" > "$cache/SOURCE"
echo "fetch-uapi-header: $out from $pkg"
