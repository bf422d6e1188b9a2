#!/usr/bin/env bash
# Install what the kernel tests need beyond the Python environment: a C compiler (the
# kernels build during `pip install`, the sanitizer run compiles the C tests), and the
# aarch64 cross compiler + qemu user emulation for the NEON tests. Debian/Ubuntu packages.
set -euo pipefail
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -eq 0 ]; then
    echo "kernels/ci_setup.sh: nothing to install"
    exit 0
fi
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
