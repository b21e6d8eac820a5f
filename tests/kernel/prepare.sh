#!/usr/bin/env bash
# Prepares the real-kernel lane: a Debian Linux 6.12 kernel, the mtty sample
# driver built against it, a busybox initramfs, qemu, and the raw C probe.
#
# Everything lands under .cache/kernel/ (override with KERNEL_LANE_CACHE) and is
# reused: a second run only checks timestamps. Writes .cache/kernel/lane.env,
# which run-in-guest.sh sources.
#
# Exit status: 0 ready; 77 cannot run here (a line "SKIPPED: reason" says why:
# no qemu and no way to install it, no network, apt refused); anything else is
# a real failure (a build that broke, a package with an unexpected layout).
# Under CI (CI set, and not "false" or "0") the lane is required: what would
# be a skip is a failure (exit 1) with the same reason, so a CI run cannot go
# green without the lane having run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNEL_LANE_CACHE:-$ROOT/.cache/kernel}
# 6.12.117 is the first Debian build with "Terminate the skip loop on the ERROR
# sentinel"; older guests soft-lock on STOP_COPY -> PRE_COPY.
PIN=${KERNEL_LANE_VERSION:-6.12.117}
MODULES=(vfio vfio_iommu_type1 mdev mtty netfs 9pnet 9pnet_virtio 9p)

log() { echo "kernel-lane: $*" >&2; }
skip() {
  case ${CI:-} in
  "" | false | 0) echo "SKIPPED: $*"; exit 77 ;;
  *) echo "kernel-lane: error: the lane cannot run here and CI=$CI requires it: $*" >&2; exit 1 ;;
  esac
}
die() { echo "kernel-lane: error: $*" >&2; exit 1; }

# The guest mounts a fresh tmpfs on /tmp, hiding the host's: a cache there
# would leave the guest without the probe it runs.
case $(realpath -m "$CACHE")/ in
/tmp/*) die "KERNEL_LANE_CACHE=$CACHE is under /tmp, which the guest cannot see (it gets its own tmpfs there); pick a folder elsewhere" ;;
esac
mkdir -p "$CACHE/debs"
# Two lanes preparing at once (engineers share this machine) would trample
# each other's extraction: one at a time.
exec 9>"$CACHE/.lock"
flock 9

newer() { # newer TARGET SOURCES...: true when TARGET is missing or older than a source
  local t=$1; shift
  [[ -e $t ]] || return 0
  local s; for s in "$@"; do [[ $s -nt $t ]] && return 0; done
  return 1
}

apt_updated=0
apt_update_once() {
  ((apt_updated)) && return 0
  apt_updated=1
  if ! apt-get update -qq >"$CACHE/apt-update.log" 2>&1; then
    skip "apt-get update failed (no network or apt refused): $(tail -n1 "$CACHE/apt-update.log")"
  fi
}

ensure_tool() { # ensure_tool COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null && return 0
  [[ $(id -u) == 0 ]] || skip "$1 is not installed and installing $2 needs root"
  log "installing $2 (for $1)"
  apt_update_once
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" \
      >"$CACHE/apt-install-$2.log" 2>&1; then
    skip "apt-get install $2 failed (no network or apt refused): $(tail -n1 "$CACHE/apt-install-$2.log")"
  fi
  command -v "$1" >/dev/null || skip "$2 installed but $1 is still missing"
}

pick_version() {
  # Reuse the version a previous run settled on, so a warm cache never asks apt.
  if [[ -f $CACHE/version && -z ${KERNEL_LANE_VERSION:-} ]]; then
    KVER=$(cat "$CACHE/version"); return
  fi
  if ! apt-cache show "linux-image-$PIN+deb12-amd64-unsigned" >/dev/null 2>&1; then
    apt_update_once
  fi
  if apt-cache show "linux-image-$PIN+deb12-amd64-unsigned" >/dev/null 2>&1; then
    KVER=$PIN
  else
    KVER=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' \
      | sed -E 's/^linux-image-(6\.12\.[0-9]+)\+deb12.*/\1/' | sort -V | tail -n1)
    [[ -n $KVER ]] || skip "apt knows no linux-image-6.12.*+deb12-amd64-unsigned (no network or no bookworm-security source)"
    log "pinned $PIN is gone from apt; using the newest available, $KVER"
  fi
  echo "$KVER" >"$CACHE/version"
}

fetch_debs() { # downloads the packages for $KVER into debs/ unless already there
  local pkgs=("linux-image-$KVER+deb12-amd64-unsigned" "linux-headers-$KVER+deb12-amd64"
    "linux-headers-$KVER+deb12-common" "linux-kbuild-$KVER+deb12" busybox-static)
  local missing=() p
  for p in "${pkgs[@]}"; do
    compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  # linux-source is one package for all 6.12 builds; pick the exact version.
  compgen -G "$CACHE/debs/linux-source-6.12_$KVER-*.deb" >/dev/null || {
    apt_update_once
    local sv; sv=$(apt-cache madison linux-source-6.12 | awk -v v="$KVER" '$3 ~ "^"v"-" {print $3; exit}')
    [[ -n $sv ]] || skip "apt has no linux-source-6.12 for $KVER"
    missing+=("linux-source-6.12=$sv")
  }
  ((${#missing[@]})) || return 0
  log "downloading ${missing[*]}"
  apt_update_once
  if ! (cd "$CACHE/debs" && apt-get download -q "${missing[@]}" >"$CACHE/apt-download.log" 2>&1); then
    skip "apt-get download failed (no network or apt refused): $(grep -E '^(E|Err):' "$CACHE/apt-download.log" | head -n1)"
  fi
}

extract() {
  local x=$CACHE/$KVER
  local stamp=$x/.extracted
  [[ -f $stamp ]] && return 0
  log "extracting $KVER"
  rm -rf "$x"; mkdir -p "$x/src"
  local d
  for d in "$CACHE"/debs/linux-image-"$KVER"+*.deb "$CACHE"/debs/linux-headers-"$KVER"+*.deb \
           "$CACHE"/debs/linux-kbuild-"$KVER"+*.deb "$CACHE"/debs/busybox-static_*.deb; do
    dpkg-deb -x "$d" "$x/root"
  done
  # The headers' Makefile includes the -common tree by absolute path (/usr/src):
  # point it at the extracted copy so nothing has to be installed system-wide.
  local hdr=$x/root/usr/src/linux-headers-$KVER+deb12-amd64
  local common=$x/root/usr/src/linux-headers-$KVER+deb12-common
  [[ -f $hdr/Makefile && -d $common ]] || die "unexpected layout in linux-headers-$KVER packages"
  echo "include $common/Makefile" >"$hdr/Makefile"
  # Only three members of the 150 MB source tarball are needed: the driver, the
  # uapi header (the host's 6.1 copy lacks PRE_COPY) and vfio_main.c, read to
  # tell whether this kernel has the skip-loop fix.
  dpkg-deb --fsys-tarfile "$CACHE"/debs/linux-source-6.12_"$KVER"-*.deb \
    | tar -xOf - ./usr/src/linux-source-6.12.tar.xz \
    | tar -xJf - -C "$x/src" --strip-components=1 \
        linux-source-6.12/samples/vfio-mdev/mtty.c \
        linux-source-6.12/include/uapi/linux/vfio.h \
        linux-source-6.12/drivers/vfio/vfio_main.c
  touch "$stamp"
}

build_module() {
  local x=$CACHE/$KVER mod=$CACHE/$KVER/mtty
  newer "$mod/mtty.ko" "$x/src/samples/vfio-mdev/mtty.c" || return 0
  log "building mtty.ko"
  mkdir -p "$mod"
  cp "$x/src/samples/vfio-mdev/mtty.c" "$mod/"
  echo 'obj-m := mtty.o' >"$mod/Kbuild"
  # No pahole on the host: BTF for modules is optional, so turn it off.
  make -s -C "$x/root/usr/src/linux-headers-$KVER+deb12-amd64" M="$mod" \
    CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$mod/build.log" 2>&1 \
    || { cat "$mod/build.log" >&2; die "building mtty.ko failed"; }
}

build_initramfs() {
  local x=$CACHE/$KVER out=$CACHE/$KVER/initramfs.cpio.gz
  newer "$out" "$HERE/guest/init" "$x/mtty/mtty.ko" || return 0
  log "building initramfs"
  local d=$x/initramfs
  rm -rf "$d"; mkdir -p "$d"/{bin,dev,proc,sys,mnt/root,mnt/out,lib/mod}
  cp "$x/root/bin/busybox" "$d/bin/busybox"
  cp "$HERE/guest/init" "$d/init"; chmod 755 "$d/init"
  local m f
  for m in "${MODULES[@]}"; do
    if [[ $m == mtty ]]; then cp "$x/mtty/mtty.ko" "$d/lib/mod/mtty.ko"; continue; fi
    f=$(find "$x/root/lib/modules" -name "$m.ko.xz" -print -quit)
    [[ -n $f ]] || die "module $m.ko.xz not found in linux-image-$KVER"
    xz -dc "$f" >"$d/lib/mod/$m.ko"
  done
  printf '%s\n' "${MODULES[@]}" >"$d/lib/mod/order"
  # busybox's own cpio keeps the host free of a cpio dependency.
  (cd "$d" && find . | "$x/root/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 >"$out.tmp"
  mv "$out.tmp" "$out"
}

build_probe() {
  local x=$CACHE/$KVER bin=$CACHE/$KVER/bin/mtty_probe
  newer "$bin" "$HERE/raw/mtty_probe.c" "$x/src/include/uapi/linux/vfio.h" || return 0
  log "building mtty_probe"
  mkdir -p "$x/bin" "$x/uapi/linux"
  # The 6.12 uapi header, with __user (a sparse annotation) defined away.
  cp "$x/src/include/uapi/linux/vfio.h" "$x/uapi/linux/vfio.h"
  gcc -O2 -Wall -Wextra -Werror -D__user= -I"$x/uapi" -o "$bin" "$HERE/raw/mtty_probe.c"
}

QEMU=${KERNEL_LANE_QEMU:-qemu-system-x86_64}
ensure_tool "$QEMU" qemu-system-x86
ensure_tool gcc gcc
ensure_tool make make
ensure_tool xz xz-utils
ensure_tool dpkg-deb dpkg
pick_version
fetch_debs
extract
build_module
build_initramfs
build_probe

x=$CACHE/$KVER
# Without CONFIG_IOMMUFD_DRIVER the DMA logging report is a stub (EOPNOTSUPP).
iova_bitmap=0
grep -qx 'CONFIG_IOMMUFD_DRIVER=y' "$x/root/boot/config-$KVER+deb12-amd64" && iova_bitmap=1
fix=0
grep -q 'while (\*next_fsm != VFIO_DEVICE_STATE_ERROR' "$x/src/drivers/vfio/vfio_main.c" && fix=1
cat >"$CACHE/lane.env.tmp" <<EOF
KERNEL_LANE_KVER=$KVER
KERNEL_LANE_KREL=$KVER+deb12-amd64
KERNEL_LANE_VMLINUZ=$x/root/boot/vmlinuz-$KVER+deb12-amd64
KERNEL_LANE_INITRD=$x/initramfs.cpio.gz
KERNEL_LANE_PROBE=$x/bin/mtty_probe
KERNEL_LANE_SKIP_FIX=$fix
KERNEL_LANE_IOVA_BITMAP=$iova_bitmap
KERNEL_LANE_QEMU=$(command -v "$QEMU")
EOF
mv "$CACHE/lane.env.tmp" "$CACHE/lane.env"
log "ready: Linux $KVER+deb12-amd64 (skip-loop fix: $([[ $fix == 1 ]] && echo yes || echo NO)), $("$QEMU" --version | head -n1)"
