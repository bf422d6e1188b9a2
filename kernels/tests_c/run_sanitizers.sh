#!/usr/bin/env bash
# Build the kernels and the C test driver with AddressSanitizer + UndefinedBehaviorSanitizer
# and run every ISA path this CPU supports. Exit 77 (skip) if there is no C compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cc="${CC:-gcc}"
command -v "$cc" >/dev/null || { echo "skip: no C compiler ($cc)"; exit 77; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# OpenMP stays on so the threaded paths are covered; detect_leaks=0 because libgomp keeps
# its thread pool alive at exit.
"$cc" -std=c11 -O1 -g -fno-omit-frame-pointer -fopenmp -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined -Wall -Wextra \
    "$here"/../src/*.c "$here/test_kernels.c" -lm -o "$out/test_kernels"
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 "$out/test_kernels"
