/* The part of ONNX Runtime's stable C ABI that sk_ort_ops.c uses, declared here.
 *
 * ONNX Runtime's Python wheel ships no C headers. Rather than vendoring its whole
 * onnxruntime_c_api.h (5000+ lines for the ~20 functions used), this file declares only
 * what the custom-op library touches, written against the documented ABI:
 *
 * - OrtApiBase: {GetApi(version), GetVersionString()}; ORT passes it to RegisterCustomOps.
 * - OrtApi: a table of function pointers that is append-only across releases: a function
 *   keeps its slot forever, and GetApi(V) returns NULL on a runtime older than V. We call
 *   GetApi(SK_ORT_API_VERSION) with a fixed V = 16 (ONNX Runtime 1.16), so the library works
 *   with every runtime >= 1.16, and use only slots that exist at V: all are below 255, and
 *   RunAsync (slot 260) already came with 1.16. Slot numbers are 0-based positions in
 *   struct OrtApi; tests/kernels/test_ort_sparse_ops.py checks them against the installed
 *   runtime (sk_ort_abi_selftest below).
 * - OrtCustomOp: a struct of callbacks with a leading `version`; ORT reads a field only when
 *   `version` is at least the release that added it. We fill it as version 16, the first
 *   with CreateKernelV2/KernelComputeV2 (callbacks that return an OrtStatus, so malformed
 *   packed weights become an error at session creation instead of a crash).
 *
 * Names of types and fields follow ONNX Runtime's, so the code reads like its documentation.
 */
#ifndef SPARSEC_SK_ORT_ABI_H
#define SPARSEC_SK_ORT_ABI_H
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define SK_ORT_CALL __stdcall
#else
#define SK_ORT_CALL
#endif

#define SK_ORT_API_VERSION 16u

typedef struct OrtApi OrtApi; /* opaque here: addressed by slot, see sk_ort_fn below */
typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtCustomOp OrtCustomOp;

typedef struct OrtApiBase {
    const OrtApi *(SK_ORT_CALL *GetApi)(uint32_t version);
    const char *(SK_ORT_CALL *GetVersionString)(void);
} OrtApiBase;

/* ONNX TensorProto data types (the values ORT uses). */
enum {
    SK_ORT_FLOAT = 1,
    SK_ORT_UINT8 = 2,
    SK_ORT_UINT16 = 4,
    SK_ORT_INT32 = 6,
};

/* OrtErrorCode values used here. */
enum { SK_ORT_FAIL = 1, SK_ORT_INVALID_ARGUMENT = 2, SK_ORT_INVALID_GRAPH = 10 };

/* OrtApi slots (0-based) and the signatures of the functions in them. */
enum sk_ort_slot {
    SK_ORT_CreateStatus = 0,
    SK_ORT_GetErrorMessage = 2,
    SK_ORT_CreateCustomOpDomain = 26,
    SK_ORT_CustomOpDomain_Add = 27,
    SK_ORT_AddCustomOpDomain = 28,
    SK_ORT_GetTensorMutableData = 51,
    SK_ORT_GetTensorElementType = 60,
    SK_ORT_GetDimensionsCount = 61,
    SK_ORT_GetDimensions = 62,
    SK_ORT_GetTensorShapeElementCount = 64,
    SK_ORT_GetTensorTypeAndShape = 65,
    SK_ORT_KernelInfoGetAttribute_float = 85,
    SK_ORT_KernelInfoGetAttribute_int64 = 86,
    SK_ORT_KernelContext_GetInput = 90,
    SK_ORT_KernelContext_GetOutput = 91,
    SK_ORT_ReleaseStatus = 93,
    SK_ORT_ReleaseTensorTypeAndShapeInfo = 99,
    SK_ORT_HasSessionConfigEntry = 237,
    SK_ORT_GetSessionConfigEntry = 238,
    SK_ORT_KernelInfo_GetNodeName = 244,
    SK_ORT_KernelInfoGetConstantInput_tensor = 249,
    SK_ORT_GetBuildInfoString = 254, /* only for the ABI self-test */
    /* API version 17 (ONNX Runtime 1.17): used only when GetApi(17) answers (sk_ort_pool.c). */
    SK_ORT_KernelContext_ParallelFor = 274,
};

typedef OrtStatus *(SK_ORT_CALL *sk_ort_CreateStatus_fn)(int code, const char *msg);
typedef const char *(SK_ORT_CALL *sk_ort_GetErrorMessage_fn)(const OrtStatus *status);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_CreateCustomOpDomain_fn)(const char *domain,
                                                                 OrtCustomOpDomain **out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_CustomOpDomain_Add_fn)(OrtCustomOpDomain *domain,
                                                               const struct OrtCustomOp *op);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_AddCustomOpDomain_fn)(OrtSessionOptions *options,
                                                              OrtCustomOpDomain *domain);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetTensorMutableData_fn)(OrtValue *value, void **out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetTensorElementType_fn)(
    const OrtTensorTypeAndShapeInfo *info, int *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetDimensionsCount_fn)(
    const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetDimensions_fn)(const OrtTensorTypeAndShapeInfo *info,
                                                          int64_t *dims, size_t ndims);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetTensorShapeElementCount_fn)(
    const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetTensorTypeAndShape_fn)(
    const OrtValue *value, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelInfoGetAttribute_float_fn)(
    const OrtKernelInfo *info, const char *name, float *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelInfoGetAttribute_int64_fn)(
    const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelContext_GetInput_fn)(
    const OrtKernelContext *context, size_t index, const OrtValue **out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelContext_GetOutput_fn)(
    OrtKernelContext *context, size_t index, const int64_t *dims, size_t ndims, OrtValue **out);
typedef void(SK_ORT_CALL *sk_ort_ReleaseStatus_fn)(OrtStatus *status);
typedef void(SK_ORT_CALL *sk_ort_ReleaseTensorTypeAndShapeInfo_fn)(OrtTensorTypeAndShapeInfo *info);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_HasSessionConfigEntry_fn)(
    const OrtSessionOptions *options, const char *key, int *out);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_GetSessionConfigEntry_fn)(
    const OrtSessionOptions *options, const char *key, char *value, size_t *size);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelInfo_GetNodeName_fn)(const OrtKernelInfo *info,
                                                                   char *out, size_t *size);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelInfoGetConstantInput_tensor_fn)(
    const OrtKernelInfo *info, size_t index, int *is_constant, const OrtValue **out);
typedef const char *(SK_ORT_CALL *sk_ort_GetBuildInfoString_fn)(void);
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelContext_ParallelFor_fn)(
    const OrtKernelContext *context, void (*fn)(void *, size_t), size_t total, size_t num_batch,
    void *usr_data);

/* The function in slot `slot` of `api`, as type sk_ort_<name>_fn. */
typedef void (*sk_ort_any_fn)(void);
#define SK_ORT(api, name) \
    ((sk_ort_##name##_fn)((const sk_ort_any_fn *)(const void *)(api))[SK_ORT_##name])

/* OrtCustomOp with its fields in ABI order (newer releases append more).
 * ORT never reads a field newer than `version`; the tail stays zero. */
struct OrtCustomOp {
    uint32_t version;
    void *(SK_ORT_CALL *CreateKernel)(const struct OrtCustomOp *op, const OrtApi *api,
                                      const OrtKernelInfo *info);
    const char *(SK_ORT_CALL *GetName)(const struct OrtCustomOp *op);
    const char *(SK_ORT_CALL *GetExecutionProviderType)(const struct OrtCustomOp *op);
    int(SK_ORT_CALL *GetInputType)(const struct OrtCustomOp *op, size_t index);
    size_t(SK_ORT_CALL *GetInputTypeCount)(const struct OrtCustomOp *op);
    int(SK_ORT_CALL *GetOutputType)(const struct OrtCustomOp *op, size_t index);
    size_t(SK_ORT_CALL *GetOutputTypeCount)(const struct OrtCustomOp *op);
    void(SK_ORT_CALL *KernelCompute)(void *kernel, OrtKernelContext *context);
    void(SK_ORT_CALL *KernelDestroy)(void *kernel);
    int(SK_ORT_CALL *GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int(SK_ORT_CALL *GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int(SK_ORT_CALL *GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);
    int(SK_ORT_CALL *GetVariadicInputMinArity)(const struct OrtCustomOp *op);
    int(SK_ORT_CALL *GetVariadicInputHomogeneity)(const struct OrtCustomOp *op);
    int(SK_ORT_CALL *GetVariadicOutputMinArity)(const struct OrtCustomOp *op);
    int(SK_ORT_CALL *GetVariadicOutputHomogeneity)(const struct OrtCustomOp *op);
    OrtStatus *(SK_ORT_CALL *CreateKernelV2)(const struct OrtCustomOp *op, const OrtApi *api,
                                             const OrtKernelInfo *info, void **kernel);
    OrtStatus *(SK_ORT_CALL *KernelComputeV2)(void *kernel, OrtKernelContext *context);
    void *InferOutputShapeFn;
    void *GetStartVersion;
    void *GetEndVersion;
    void *GetMayInplace;
    void *ReleaseMayInplace;
    void *GetAliasMap;
    void *ReleaseAliasMap;
};

/* OrtCustomOpInputOutputCharacteristic / OrtMemType values used here. */
enum { SK_ORT_INPUT_OUTPUT_REQUIRED = 0, SK_ORT_INPUT_OUTPUT_OPTIONAL = 1 };
enum { SK_ORT_MEM_TYPE_DEFAULT = 0 };

#endif
