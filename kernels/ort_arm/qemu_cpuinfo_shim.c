/* LD_PRELOAD shim for running aarch64 ONNX Runtime under qemu user emulation (tests only).
 *
 * qemu-user passes the host's /proc/cpuinfo through: on an x86 host the aarch64 cpuinfo
 * library inside ONNX Runtime finds no "CPU part" lines and dereferences NULL during the
 * library's static initialisation (a crash before main). This shim redirects opens of
 * /proc/cpuinfo to the file named by $SPARSEC_FAKE_CPUINFO (an aarch64-format cpuinfo that
 * sparsec.backends.ort_arm64.emulated writes). Never needed, nor shipped, on a real board.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *redirect(const char *path) {
    const char *fake = getenv("SPARSEC_FAKE_CPUINFO");
    return (fake && path && strcmp(path, "/proc/cpuinfo") == 0) ? fake : path;
}

int open(const char *path, int flags, ...) {
    static int (*real)(const char *, int, ...);
    if (!real) real = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
    va_list ap;
    va_start(ap, flags);
    int mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
    va_end(ap);
    return real(redirect(path), flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    static int (*real)(int, const char *, int, ...);
    if (!real) real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
    va_list ap;
    va_start(ap, flags);
    int mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
    va_end(ap);
    return real(dirfd, redirect(path), flags, mode);
}
