#!/usr/bin/env bash
# Install what the kernel tests need beyond the Python environment: a C compiler (the
# kernels build during `pip install`, the sanitizer run compiles the C tests), and the
# aarch64 cross toolchain *with its C library* (libc6-dev-arm64-cross: gcc-aarch64-linux-gnu
# alone has no <bits/*.h>, so every #include <stdint.h> fails) + qemu user emulation for the
# NEON tests, and the aarch64 C++ compiler (g++-aarch64-linux-gnu) that links the TVM aarch64
# libraries and runners of --target=arm64. Debian/Ubuntu packages.
#
# A toolchain counts as present only when it works: we compile a one-line static aarch64
# program and run it under qemu, rather than checking that a compiler binary exists.
set -euo pipefail

probe_arm() {
    command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null \
        && command -v aarch64-linux-gnu-g++ >/dev/null || return 1
    local d
    d="$(mktemp -d)"
    printf '#include <stdint.h>\n#include <stdio.h>\nint main(void){uint32_t x=42;printf("%%u\\n",x);return 0;}\n' \
        > "$d/probe.c"
    local ok=1
    if aarch64-linux-gnu-gcc -static -O1 "$d/probe.c" -o "$d/probe" 2>"$d/err" \
        && [ "$(qemu-aarch64-static "$d/probe" 2>>"$d/err")" = "42" ]; then
        ok=0
    fi
    [ $ok -eq 0 ] || sed 's/^/  /' "$d/err" >&2
    rm -rf "$d"
    return $ok
}

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if ! probe_arm 2>/dev/null; then
    need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
fi
if [ ${#need[@]} -eq 0 ]; then
    echo "kernels/ci_setup.sh: toolchains work, nothing to install"
    exit 0
fi
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "kernels/ci_setup.sh: installing ${need[*]}"
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
if probe_arm; then
    echo "kernels/ci_setup.sh: aarch64 toolchain compiles and runs under qemu"
else
    echo "kernels/ci_setup.sh: aarch64 toolchain installed but a probe program failed" >&2
    exit 1
fi
