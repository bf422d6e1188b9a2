/* sparsec_ort_runner: runs an ONNX model with ONNX Runtime's C API and sparsec's kernel op
 * library, on tensors read from stdin (built for aarch64 to check arm64 artifacts under qemu).
 *
 *   sparsec_ort_runner model.onnx libsparsec_kernels.so THREADS IN_NAME... -- OUT_NAME...
 *
 * Same pipe protocol as kernels/tvm_arm/tvm_runner.cc (little-endian):
 *   request  := u32 repeat, u32 n_inputs, tensor * n_inputs
 *   response := u32 n_outputs, tensor * n_outputs, f64 median_ms, f64 min_ms
 *   tensor   := i32 dtype_code (DLPack), i32 bits, i32 ndim, i64 shape[ndim], raw bytes
 * Errors: one line on stderr, exit status 1.
 *
 * The ONNX Runtime wheel ships no C headers: like kernels/src/sk_ort_abi.h, the few OrtApi
 * functions used are addressed by their (append-only, 0-based) slot in struct OrtApi, taken
 * at API version 16. tests/arm64 runs this same source against the host's runtime, which
 * checks the slots.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct OrtApi OrtApi;
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;
extern const OrtApiBase *OrtGetApiBase(void);

enum {
    GetErrorMessage = 2, CreateEnv = 3, CreateSession = 7, Run = 9, CreateSessionOptions = 10,
    SetIntraOpNumThreads = 24, RegisterCustomOpsLibrary = 29, CreateTensorWithDataAsOrtValue = 49,
    GetTensorMutableData = 51, GetTensorElementType = 60, GetDimensionsCount = 61,
    GetDimensions = 62, GetTensorTypeAndShape = 65, CreateCpuMemoryInfo = 69, ReleaseValue = 96,
    ReleaseTensorTypeAndShapeInfo = 99,
};
typedef void (*any_fn)(void);
static const any_fn *api;
#define FN(slot, type) ((type)api[slot])

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "sparsec_ort_runner: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static void check(OrtStatus *st, const char *what) {
    if (st) fail(what, FN(GetErrorMessage, const char *(*)(const OrtStatus *))(st));
}

static int read_exact(void *dst, size_t n, int eof_ok) {
    size_t got = fread(dst, 1, n, stdin);
    if (got == n) return 1;
    if (got == 0 && eof_ok && feof(stdin)) return 0;
    fail("truncated request on stdin", NULL);
    return 0;
}

static void write_exact(const void *src, size_t n) {
    if (fwrite(src, 1, n, stdout) != n) fail("cannot write the response", NULL);
}

/* DLPack (code, bits) <-> ONNX TensorProto element type */
static const int kinds[][3] = {{2, 32, 1}, {0, 64, 7}, {0, 32, 6}, {2, 16, 10}, {1, 8, 2}, {6, 8, 9}};
static int onnx_type(int code, int bits) {
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); ++i)
        if (kinds[i][0] == code && kinds[i][1] == bits) return kinds[i][2];
    fail("unsupported input dtype", NULL);
    return 0;
}
static const int *dl_kind(int type) {
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); ++i)
        if (kinds[i][2] == type) return kinds[i];
    fail("unsupported output dtype", NULL);
    return NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void write_output(OrtValue *v) {
    OrtTensorTypeAndShapeInfo *info;
    check(FN(GetTensorTypeAndShape, OrtStatus *(*)(const OrtValue *, OrtTensorTypeAndShapeInfo **))(v, &info), "output shape");
    int type;
    size_t ndim;
    check(FN(GetTensorElementType, OrtStatus *(*)(const OrtTensorTypeAndShapeInfo *, int *))(info, &type), "output type");
    check(FN(GetDimensionsCount, OrtStatus *(*)(const OrtTensorTypeAndShapeInfo *, size_t *))(info, &ndim), "output rank");
    int64_t shape[16];
    if (ndim > 16) fail("output rank above 16", NULL);
    check(FN(GetDimensions, OrtStatus *(*)(const OrtTensorTypeAndShapeInfo *, int64_t *, size_t))(info, shape, ndim), "output dims");
    FN(ReleaseTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo *))(info);
    const int *k = dl_kind(type);
    int32_t head[3] = {k[0], k[1], (int32_t)ndim};
    size_t bytes = (size_t)k[1] / 8;
    for (size_t i = 0; i < ndim; ++i) bytes *= (size_t)shape[i];
    void *data;
    check(FN(GetTensorMutableData, OrtStatus *(*)(OrtValue *, void **))(v, &data), "output data");
    write_exact(head, sizeof(head));
    write_exact(shape, sizeof(int64_t) * ndim);
    write_exact(data, bytes);
}

int main(int argc, char **argv) {
    if (argc < 5) fail("usage: sparsec_ort_runner MODEL LIB THREADS IN... -- OUT...", NULL);
    api = (const any_fn *)(const void *)OrtGetApiBase()->GetApi(16);
    if (!api) fail("ONNX Runtime older than API version 16", NULL);
    int sep = 4;
    while (sep < argc && strcmp(argv[sep], "--")) ++sep;
    if (sep == argc) fail("missing -- between input and output names", NULL);
    const char **in_names = (const char **)(argv + 4), **out_names = (const char **)(argv + sep + 1);
    size_t n_in = (size_t)(sep - 4), n_out = (size_t)(argc - sep - 1);

    OrtEnv *env;
    OrtSessionOptions *opts;
    OrtSession *session;
    OrtMemoryInfo *cpu;
    void *handle;
    check(FN(CreateEnv, OrtStatus *(*)(int, const char *, OrtEnv **))(3, "sparsec", &env), "CreateEnv");
    check(FN(CreateSessionOptions, OrtStatus *(*)(OrtSessionOptions **))(&opts), "CreateSessionOptions");
    check(FN(SetIntraOpNumThreads, OrtStatus *(*)(OrtSessionOptions *, int))(opts, atoi(argv[3])), "threads");
    if (argv[2][0])
        check(FN(RegisterCustomOpsLibrary, OrtStatus *(*)(OrtSessionOptions *, const char *, void **))(opts, argv[2], &handle),
              "RegisterCustomOpsLibrary");
    check(FN(CreateSession, OrtStatus *(*)(const OrtEnv *, const char *, const OrtSessionOptions *, OrtSession **))(
              env, argv[1], opts, &session), "CreateSession");
    check(FN(CreateCpuMemoryInfo, OrtStatus *(*)(int, int, OrtMemoryInfo **))(0, 0, &cpu), "CreateCpuMemoryInfo");

    uint32_t req[2];
    while (read_exact(req, sizeof(req), 1)) {
        if (req[1] != n_in) fail("request has a different number of inputs than the command line", NULL);
        OrtValue **inputs = calloc(n_in, sizeof(OrtValue *));
        void **buffers = calloc(n_in, sizeof(void *));
        for (size_t i = 0; i < n_in; ++i) {
            int32_t head[3];
            int64_t shape[16];
            read_exact(head, sizeof(head), 0);
            if (head[2] < 0 || head[2] > 16) fail("bad tensor rank in request", NULL);
            read_exact(shape, sizeof(int64_t) * (size_t)head[2], 0);
            size_t bytes = (size_t)head[1] / 8;
            for (int32_t d = 0; d < head[2]; ++d) bytes *= (size_t)shape[d];
            buffers[i] = malloc(bytes ? bytes : 1);
            read_exact(buffers[i], bytes, 0);
            check(FN(CreateTensorWithDataAsOrtValue,
                     OrtStatus *(*)(const OrtMemoryInfo *, void *, size_t, const int64_t *, size_t, int, OrtValue **))(
                      cpu, buffers[i], bytes, shape, (size_t)head[2], onnx_type(head[0], head[1]), &inputs[i]),
                  "input tensor");
        }
        uint32_t repeat = req[0] ? req[0] : 1;
        double *times = calloc(repeat, sizeof(double));
        OrtValue **outputs = calloc(n_out, sizeof(OrtValue *));
        for (uint32_t r = 0; r < repeat; ++r) {
            for (size_t o = 0; o < n_out; ++o) {
                if (outputs[o]) FN(ReleaseValue, void (*)(OrtValue *))(outputs[o]);
                outputs[o] = NULL;
            }
            double t0 = now_ms();
            check(FN(Run, OrtStatus *(*)(OrtSession *, const void *, const char *const *, const OrtValue *const *, size_t,
                                         const char *const *, size_t, OrtValue **))(
                      session, NULL, in_names, (const OrtValue *const *)inputs, n_in, out_names, n_out, outputs),
                  "Run");
            times[r] = now_ms() - t0;
        }
        uint32_t count = (uint32_t)n_out;
        write_exact(&count, sizeof(count));
        for (size_t o = 0; o < n_out; ++o) {
            write_output(outputs[o]);
            FN(ReleaseValue, void (*)(OrtValue *))(outputs[o]);
        }
        qsort(times, repeat, sizeof(double), cmp_double);
        double stats[2] = {times[repeat / 2], times[0]};
        write_exact(stats, sizeof(stats));
        fflush(stdout);
        for (size_t i = 0; i < n_in; ++i) {
            FN(ReleaseValue, void (*)(OrtValue *))(inputs[i]);
            free(buffers[i]);
        }
        free(inputs);
        free(buffers);
        free(outputs);
        free(times);
    }
    return 0;
}
