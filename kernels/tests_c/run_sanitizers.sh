#!/usr/bin/env bash
# Build the kernels and the C test driver with AddressSanitizer + UndefinedBehaviorSanitizer
# and run every ISA path this CPU supports. Exit 77 (skip) if there is no C compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cc="${CC:-gcc}"
command -v "$cc" >/dev/null || { echo "skip: no C compiler ($cc)"; exit 77; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The test driver runs every path with 1 and 2 threads, so the thread pool is covered too.
flags=(-std=c11 -O1 -g -fno-omit-frame-pointer -pthread -fsanitize=address,undefined
       -fno-sanitize-recover=undefined -Wall -Wextra)
# The kernel sources are compiled once and linked into both drivers (test_kernels.c for the
# matmuls, test_attention.c for the attention kernel).
. "$here/compile_sources.sh"
compile_sources "$out" "$cc" "${flags[@]}"
for driver in test_kernels test_attention test_moe; do
    "$cc" "${flags[@]}" "$out"/*.o "$here/$driver.c" -lm -o "$out/$driver"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "$out/$driver"
done
