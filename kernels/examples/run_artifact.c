/* Run a sparsec artifact from C with plain ONNX Runtime: no Python, no sparsec.
 *
 *   run_artifact ARTIFACT_DIR INPUTS.bin [OUTPUTS.bin]
 *
 * Loads ARTIFACT_DIR/model.onnx, registers the artifact's op library
 * ARTIFACT_DIR/libsparsec_kernels.so (the com.sparsec.kernels custom ops) with the session
 * options, feeds the model's inputs from INPUTS.bin (each input's raw little-endian data, in
 * the model's input order, sized by its static shape; symbolic dimensions are taken as 1),
 * prints every output's name, shape and first values, and writes the outputs' raw data, in
 * order, to OUTPUTS.bin if given. Exit status 0, or 1 with one line on stderr.
 *
 * Build against the ONNX Runtime shared library (the Python wheel ships one in
 * onnxruntime/capi/):
 *   gcc -O2 run_artifact.c -o run_artifact -L$CAPI -l:libonnxruntime.so.1.32.0 -Wl,-rpath,$CAPI
 *
 * With ONNX Runtime's own header (onnxruntime_c_api.h, from its release archives) every
 * call below is simply `api->Name(...)`. The Python wheel ships no headers, so this file
 * declares the few types it needs and reaches each OrtApi function by its slot in the
 * append-only function table (slots are 0-based positions in struct OrtApi and never move;
 * requesting API version 16 makes this work with every runtime >= 1.16).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ the C API subset used */
typedef struct OrtStatus OrtStatus;
typedef struct OrtEnv OrtEnv;
typedef struct OrtSession OrtSession;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtValue OrtValue;
typedef struct OrtTypeInfo OrtTypeInfo;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtMemoryInfo OrtMemoryInfo;
typedef struct OrtRunOptions OrtRunOptions;
typedef struct OrtAllocator {
    uint32_t version;
    void *(*Alloc)(struct OrtAllocator *self, size_t size);
    void (*Free)(struct OrtAllocator *self, void *p);
    const OrtMemoryInfo *(*Info)(const struct OrtAllocator *self);
} OrtAllocator;
typedef struct OrtApi OrtApi;
typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;
extern const OrtApiBase *OrtGetApiBase(void); /* exported by libonnxruntime.so */

#ifndef API_VERSION
#define API_VERSION 16u /* -DAPI_VERSION=N to request another C API version */
#endif
enum { ORT_LOGGING_LEVEL_WARNING = 2, ORT_ARENA_ALLOCATOR = 1, ORT_MEM_TYPE_DEFAULT = 0 };
enum { T_FLOAT = 1, T_UINT8 = 2, T_INT8 = 3, T_INT32 = 6, T_INT64 = 7, T_BOOL = 9, T_DOUBLE = 11 };

/* Slot numbers in struct OrtApi, and the signatures of the functions there. */
#define SLOT_GetErrorMessage 2
#define SLOT_CreateEnv 3
#define SLOT_CreateSession 7
#define SLOT_Run 9
#define SLOT_CreateSessionOptions 10
#define SLOT_SetIntraOpNumThreads 24
#define SLOT_RegisterCustomOpsLibrary 29
#define SLOT_SessionGetInputCount 30
#define SLOT_SessionGetOutputCount 31
#define SLOT_SessionGetInputTypeInfo 33
#define SLOT_SessionGetInputName 36
#define SLOT_SessionGetOutputName 37
#define SLOT_CreateTensorWithDataAsOrtValue 49
#define SLOT_GetTensorMutableData 51
#define SLOT_CastTypeInfoToTensorInfo 55
#define SLOT_GetTensorElementType 60
#define SLOT_GetDimensionsCount 61
#define SLOT_GetDimensions 62
#define SLOT_GetTensorShapeElementCount 64
#define SLOT_GetTensorTypeAndShape 65
#define SLOT_CreateCpuMemoryInfo 69
#define SLOT_AllocatorFree 76
#define SLOT_GetAllocatorWithDefaultOptions 78
#define SLOT_ReleaseEnv 92
#define SLOT_ReleaseStatus 93
#define SLOT_ReleaseMemoryInfo 94
#define SLOT_ReleaseSession 95
#define SLOT_ReleaseValue 96
#define SLOT_ReleaseTypeInfo 98
#define SLOT_ReleaseTensorTypeAndShapeInfo 99
#define SLOT_ReleaseSessionOptions 100

typedef const char *(*GetErrorMessage_fn)(const OrtStatus *);
typedef OrtStatus *(*CreateEnv_fn)(int level, const char *logid, OrtEnv **out);
typedef OrtStatus *(*CreateSession_fn)(const OrtEnv *, const char *path, const OrtSessionOptions *,
                                       OrtSession **out);
typedef OrtStatus *(*Run_fn)(OrtSession *, const OrtRunOptions *, const char *const *input_names,
                             const OrtValue *const *inputs, size_t n_inputs,
                             const char *const *output_names, size_t n_outputs, OrtValue **outputs);
typedef OrtStatus *(*CreateSessionOptions_fn)(OrtSessionOptions **out);
typedef OrtStatus *(*SetIntraOpNumThreads_fn)(OrtSessionOptions *, int threads);
typedef OrtStatus *(*RegisterCustomOpsLibrary_fn)(OrtSessionOptions *, const char *path,
                                                  void **handle);
typedef OrtStatus *(*SessionGetCount_fn)(const OrtSession *, size_t *out);
typedef SessionGetCount_fn SessionGetInputCount_fn, SessionGetOutputCount_fn;
typedef OrtStatus *(*SessionGetInputTypeInfo_fn)(const OrtSession *, size_t, OrtTypeInfo **out);
typedef OrtStatus *(*SessionGetName_fn)(const OrtSession *, size_t, OrtAllocator *, char **out);
typedef SessionGetName_fn SessionGetInputName_fn, SessionGetOutputName_fn;
typedef OrtStatus *(*CreateTensorWithDataAsOrtValue_fn)(const OrtMemoryInfo *, void *data,
                                                        size_t bytes, const int64_t *shape,
                                                        size_t rank, int type, OrtValue **out);
typedef OrtStatus *(*GetTensorMutableData_fn)(OrtValue *, void **out);
typedef OrtStatus *(*CastTypeInfoToTensorInfo_fn)(const OrtTypeInfo *,
                                                  const OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*GetTensorElementType_fn)(const OrtTensorTypeAndShapeInfo *, int *out);
typedef OrtStatus *(*GetDimensionsCount_fn)(const OrtTensorTypeAndShapeInfo *, size_t *out);
typedef OrtStatus *(*GetDimensions_fn)(const OrtTensorTypeAndShapeInfo *, int64_t *, size_t);
typedef OrtStatus *(*GetTensorShapeElementCount_fn)(const OrtTensorTypeAndShapeInfo *, size_t *);
typedef OrtStatus *(*GetTensorTypeAndShape_fn)(const OrtValue *, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*CreateCpuMemoryInfo_fn)(int allocator_type, int mem_type, OrtMemoryInfo **out);
typedef OrtStatus *(*AllocatorFree_fn)(OrtAllocator *, void *p);
typedef OrtStatus *(*GetAllocatorWithDefaultOptions_fn)(OrtAllocator **out);
typedef void (*Release_fn)(void *);

static const OrtApi *api;
typedef void (*any_fn)(void);
#define ORT(name) ((name##_fn)((const any_fn *)(const void *)api)[SLOT_##name])
#define RELEASE(name, p) ((Release_fn)((const any_fn *)(const void *)api)[SLOT_Release##name])(p)

/* ------------------------------------------------------------ helpers */
static void fail(const char *what, OrtStatus *st) {
    fprintf(stderr, "run_artifact: %s: %s\n", what, st ? ORT(GetErrorMessage)(st) : "failed");
    exit(1);
}
#define CHECK(what, call)                 \
    do {                                  \
        OrtStatus *st_ = (call);          \
        if (st_) fail(what, st_);         \
    } while (0)

static size_t element_size(int type) {
    switch (type) {
    case T_FLOAT: case T_INT32: return 4;
    case T_INT64: case T_DOUBLE: return 8;
    case T_UINT8: case T_INT8: case T_BOOL: return 1;
    default: return 0;
    }
}

/* Shape and element type of a tensor type/shape info (symbolic dims -> 1). */
static size_t describe(const OrtTensorTypeAndShapeInfo *info, int *type, int64_t *dims, size_t *rank) {
    CHECK("element type", ORT(GetTensorElementType)(info, type));
    CHECK("rank", ORT(GetDimensionsCount)(info, rank));
    if (*rank > 8) fail("tensor rank above 8", NULL);
    CHECK("dimensions", ORT(GetDimensions)(info, dims, *rank));
    size_t count = 1;
    for (size_t d = 0; d < *rank; d++) {
        if (dims[d] < 0) dims[d] = 1;
        count *= (size_t)dims[d];
    }
    return count;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s ARTIFACT_DIR INPUTS.bin [OUTPUTS.bin]\n", argv[0]);
        return 2;
    }
    const OrtApiBase *base = OrtGetApiBase();
    api = base->GetApi(API_VERSION);
    if (!api) {
        fprintf(stderr, "run_artifact: ONNX Runtime %s is older than 1.16\n",
                base->GetVersionString());
        return 1;
    }
    char model[4096], library[4096];
    snprintf(model, sizeof model, "%s/model.onnx", argv[1]);
    snprintf(library, sizeof library, "%s/libsparsec_kernels.so", argv[1]);

    OrtEnv *env = NULL;
    OrtSessionOptions *options = NULL;
    OrtSession *session = NULL;
    void *handle = NULL;
    CHECK("create env", ORT(CreateEnv)(ORT_LOGGING_LEVEL_WARNING, "run_artifact", &env));
    CHECK("session options", ORT(CreateSessionOptions)(&options));
    CHECK("threads", ORT(SetIntraOpNumThreads)(options, 2));
    /* The one sparsec-specific line: the artifact's op library defines com.sparsec.kernels. */
    CHECK(library, ORT(RegisterCustomOpsLibrary)(options, library, &handle));
    CHECK(model, ORT(CreateSession)(env, model, options, &session));

    OrtAllocator *alloc = NULL;
    OrtMemoryInfo *cpu = NULL;
    CHECK("allocator", ORT(GetAllocatorWithDefaultOptions)(&alloc));
    CHECK("memory info", ORT(CreateCpuMemoryInfo)(ORT_ARENA_ALLOCATOR, ORT_MEM_TYPE_DEFAULT, &cpu));

    size_t n_in = 0, n_out = 0;
    CHECK("input count", ORT(SessionGetInputCount)(session, &n_in));
    CHECK("output count", ORT(SessionGetOutputCount)(session, &n_out));
    FILE *in = fopen(argv[2], "rb");
    if (!in) {
        fprintf(stderr, "run_artifact: cannot open %s\n", argv[2]);
        return 1;
    }
    char **in_names = calloc(n_in, sizeof *in_names), **out_names = calloc(n_out, sizeof *out_names);
    OrtValue **inputs = calloc(n_in, sizeof *inputs), **outputs = calloc(n_out, sizeof *outputs);
    void **buffers = calloc(n_in, sizeof *buffers);
    for (size_t i = 0; i < n_in; i++) {
        OrtTypeInfo *ti = NULL;
        const OrtTensorTypeAndShapeInfo *info = NULL;
        int type = 0;
        int64_t dims[8];
        size_t rank = 0;
        CHECK("input name", ORT(SessionGetInputName)(session, i, alloc, &in_names[i]));
        CHECK("input type", ORT(SessionGetInputTypeInfo)(session, i, &ti));
        CHECK("input tensor type", ORT(CastTypeInfoToTensorInfo)(ti, &info));
        const size_t count = describe(info, &type, dims, &rank);
        RELEASE(TypeInfo, ti);
        const size_t bytes = count * element_size(type);
        if (bytes == 0 && count != 0) fail("input of an element type this example does not read", NULL);
        buffers[i] = malloc(bytes ? bytes : 1);
        if (fread(buffers[i], 1, bytes, in) != bytes) {
            fprintf(stderr, "run_artifact: %s ends before input '%s' (%zu bytes)\n", argv[2],
                    in_names[i], bytes);
            return 1;
        }
        CHECK("input tensor", ORT(CreateTensorWithDataAsOrtValue)(cpu, buffers[i], bytes, dims,
                                                                  rank, type, &inputs[i]));
    }
    fclose(in);
    for (size_t i = 0; i < n_out; i++)
        CHECK("output name", ORT(SessionGetOutputName)(session, i, alloc, &out_names[i]));

    CHECK("run", ORT(Run)(session, NULL, (const char *const *)in_names,
                          (const OrtValue *const *)inputs, n_in, (const char *const *)out_names,
                          n_out, outputs));

    FILE *out = argc == 4 ? fopen(argv[3], "wb") : NULL;
    if (argc == 4 && !out) {
        fprintf(stderr, "run_artifact: cannot write %s\n", argv[3]);
        return 1;
    }
    printf("onnxruntime %s, %zu input(s), %zu output(s)\n", base->GetVersionString(), n_in, n_out);
    for (size_t i = 0; i < n_out; i++) {
        OrtTensorTypeAndShapeInfo *info = NULL;
        int type = 0;
        int64_t dims[8];
        size_t rank = 0;
        void *data = NULL;
        CHECK("output type", ORT(GetTensorTypeAndShape)(outputs[i], &info));
        const size_t count = describe(info, &type, dims, &rank);
        RELEASE(TensorTypeAndShapeInfo, info);
        CHECK("output data", ORT(GetTensorMutableData)(outputs[i], &data));
        printf("%s: shape [", out_names[i]);
        for (size_t d = 0; d < rank; d++) printf(d ? ", %lld" : "%lld", (long long)dims[d]);
        printf("]");
        if (type == T_FLOAT)
            for (size_t k = 0; k < count && k < 4; k++) printf(" %.6g", ((const float *)data)[k]);
        printf("\n");
        if (out && fwrite(data, element_size(type), count, out) != count) fail("write outputs", NULL);
    }
    if (out) fclose(out);

    for (size_t i = 0; i < n_out; i++) {
        RELEASE(Value, outputs[i]);
        ORT(AllocatorFree)(alloc, out_names[i]);
    }
    for (size_t i = 0; i < n_in; i++) {
        RELEASE(Value, inputs[i]);
        ORT(AllocatorFree)(alloc, in_names[i]);
        free(buffers[i]);
    }
    RELEASE(MemoryInfo, cpu);
    RELEASE(Session, session);
    RELEASE(SessionOptions, options);
    RELEASE(Env, env);
    /* `handle` (the op library) stays loaded until exit: it must outlive every session. */
    free(in_names), free(out_names), free(inputs), free(outputs), free(buffers);
    return 0;
}
