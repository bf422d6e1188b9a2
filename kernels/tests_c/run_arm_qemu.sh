#!/usr/bin/env bash
# Cross-compile the kernels (NEON + scalar paths) and the C test driver for aarch64 and run
# them under qemu-aarch64-static. Exit 77 (skip) if the cross compiler or qemu is missing
# (kernels/ci_setup.sh installs both from Debian's packages).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cc="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
qemu="${QEMU_AARCH64:-qemu-aarch64-static}"
command -v "$cc" >/dev/null || { echo "skip: no $cc"; exit 77; }
command -v "$qemu" >/dev/null || { echo "skip: no $qemu"; exit 77; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# A compiler binary without the aarch64 C library (Debian's libc6-dev-arm64-cross) cannot
# build anything: that is a missing install, reported as a skip with the reason, not a
# kernel failure.
printf '#include <stdint.h>\nint main(void){uint8_t x=0;return x;}\n' > "$out/probe.c"
if ! "$cc" -static "$out/probe.c" -o "$out/probe" 2>"$out/probe.err"; then
    echo "skip: $cc cannot build a program (is libc6-dev-arm64-cross installed?): $(head -n1 "$out/probe.err")"
    exit 77
fi
if ! "$qemu" "$out/probe"; then
    echo "skip: $qemu cannot run an aarch64 program"
    exit 77
fi
# Static so qemu needs no aarch64 sysroot.
mkdir "$out/obj"
. "$here/compile_sources.sh"
compile_sources "$out/obj" "$cc" -std=c11 -O2 -pthread -Wall -Wextra
for driver in test_kernels test_attention test_moe; do
    "$cc" -std=c11 -O2 -static -pthread -Wall -Wextra "$out"/obj/*.o "$here/$driver.c" -lm \
        -o "$out/$driver"
    "$qemu" "$out/$driver"
done
