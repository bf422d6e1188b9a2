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
# Static so qemu needs no aarch64 sysroot.
"$cc" -std=c11 -O2 -static -pthread -Wall -Wextra \
    "$here"/../src/*.c "$here/test_kernels.c" -lm -o "$out/test_kernels"
"$qemu" "$out/test_kernels"
