#!/usr/bin/env bash
# The native decoders' libFuzzer harnesses (crates/fuzz), on the stable
# toolchain: SanitizerCoverage's passes are stable codegen flags, only the
# sanitizers (-Zsanitizer) need nightly (FUZZ_ASAN=1 uses it where installed).
#
#   scripts/fuzz-rust.sh TARGET SECONDS    fuzz; new inputs in .fuzz/TARGET/corpus
#   scripts/fuzz-rust.sh TARGET merge      minimise into tests/fuzz/corpus/TARGET
#   scripts/fuzz-rust.sh TARGET replay FILE...
# Prints "STATS {json}" and, per finding, "FINDING path".
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
what=$2
shift 2

triple=x86_64-unknown-linux-gnu
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
toolchain=()
if [[ ${FUZZ_ASAN:-} == 1 ]]; then
  toolchain=(+nightly)
  flags="$flags -Zsanitizer=address"
fi
# --target keeps RUSTFLAGS off build scripts and proc macros.
RUSTFLAGS="$flags" cargo "${toolchain[@]}" build --quiet --release --target "$triple" --manifest-path crates/fuzz/Cargo.toml --bin "$target" >&2
bin=crates/fuzz/target/$triple/release/$target

stored=tests/fuzz/corpus/$target
work=.fuzz/$target/corpus
findings=.fuzz/findings/$target
mkdir -p "$stored" "$work" "$findings"
# Inputs stay below a unix socket's buffer (vfio_frames writes them whole before reading).
common=(-max_len=65536 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)

case $what in
  replay)
    exec "$bin" "${common[@]}" "$@"
    ;;
  merge)
    tmp=$(mktemp -d)
    "$bin" "${common[@]}" -merge=1 "$tmp" "$stored" "$work" >&2
    rm -rf "$stored" && mv "$tmp" "$stored"
    echo "STATS {\"target\":\"$target\",\"corpus\":$(ls "$stored" | wc -l)}"
    ;;
  *)
    log=$(mktemp)
    status=0
    "$bin" "${common[@]}" -max_total_time="$what" -artifact_prefix="$findings/" "$work" "$stored" 2>"$log" || status=$?
    tail -n 25 "$log" >&2
    done=$(grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -1 || true)
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$done")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$done")
    echo "STATS {\"target\":\"$target\",\"execs\":${execs:-0},\"execsPerSec\":$(( ${execs:-0} / ($what > 0 ? $what : 1) )),\"cov\":${cov:-0},\"ft\":${ft:-0},\"corpus\":${corp:-0},\"seconds\":$what}"
    for f in $(grep -oE "Test unit written to \S+" "$log" | awk '{print $5}'); do echo "FINDING $f"; done
    rm -f "$log"
    exit $status
    ;;
esac
