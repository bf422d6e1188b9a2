#include "sk_ort_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

OrtStatus *sk_ort_status(const OrtApi *api, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return SK_ORT(api, CreateStatus)(SK_ORT_FAIL, msg);
}

OrtStatus *sk_ort_shape(const OrtApi *api, const OrtValue *v, int64_t *dims, size_t max_rank,
                        size_t *rank) {
    OrtTensorTypeAndShapeInfo *ti = NULL;
    OrtStatus *st = SK_ORT(api, GetTensorTypeAndShape)(v, &ti);
    if (st) return st;
    st = SK_ORT(api, GetDimensionsCount)(ti, rank);
    if (!st && *rank <= max_rank) st = SK_ORT(api, GetDimensions)(ti, dims, *rank);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    return st;
}

static OrtStatus *reword(const OrtApi *api, OrtStatus *st, const char *ctx, const char *what) {
    OrtStatus *out = sk_ort_status(api, "%s: %s: %s", ctx, what, SK_ORT(api, GetErrorMessage)(st));
    SK_ORT(api, ReleaseStatus)(st);
    return out;
}

OrtStatus *sk_ort_attr_int(const OrtApi *api, const OrtKernelInfo *info, const char *ctx, const char *name,
                           int64_t *out) {
    OrtStatus *st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, name, out);
    if (!st) return NULL;
    SK_ORT(api, ReleaseStatus)(st);
    return sk_ort_status(api, "%s: missing int attribute '%s'", ctx, name);
}

int64_t sk_ort_attr_int_or(const OrtApi *api, const OrtKernelInfo *info, const char *name, int64_t fallback) {
    int64_t v = fallback;
    OrtStatus *st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, name, &v);
    if (!st) return v;
    SK_ORT(api, ReleaseStatus)(st);
    return fallback;
}

void sk_ort_attr_float(const OrtApi *api, const OrtKernelInfo *info, const char *name, float *out) {
    OrtStatus *st = SK_ORT(api, KernelInfoGetAttribute_float)(info, name, out);
    if (st) SK_ORT(api, ReleaseStatus)(st);
}

static const char *type_name(int type) {
    switch (type) {
    case SK_ORT_FLOAT: return "float32";
    case SK_ORT_UINT8: return "uint8";
    case SK_ORT_UINT16: return "uint16";
    case SK_ORT_INT32: return "int32";
    default: return "another element type";
    }
}

OrtStatus *sk_ort_constant(const OrtApi *api, const OrtKernelInfo *info, const char *ctx, size_t index,
                           const char *what, int type, size_t size, const void **out, int64_t *count,
                           void **owned) {
    int is_const = 0;
    const OrtValue *value = NULL;
    OrtStatus *st = SK_ORT(api, KernelInfoGetConstantInput_tensor)(info, index, &is_const, &value);
    if (st) return reword(api, st, ctx, what);
    if (!is_const || !value)
        return sk_ort_status(api, "%s: input %zu (%s) must be a constant initializer", ctx, index, what);
    OrtTensorTypeAndShapeInfo *ti = NULL;
    if ((st = SK_ORT(api, GetTensorTypeAndShape)(value, &ti))) return reword(api, st, ctx, what);
    int t = 0;
    size_t n = 0;
    st = SK_ORT(api, GetTensorElementType)(ti, &t);
    if (!st) st = SK_ORT(api, GetTensorShapeElementCount)(ti, &n);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    if (st) return reword(api, st, ctx, what);
    if (t != type) return sk_ort_status(api, "%s: %s must be %s", ctx, what, type_name(type));
    void *p = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)value, &p))) return reword(api, st, ctx, what);
    if (n > 0 && ((uintptr_t)p % 64) != 0) {
        const size_t bytes = n * size;
        void *copy = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!copy) return sk_ort_status(api, "%s: out of memory copying %s", ctx, what);
        memcpy(copy, p, bytes);
        *owned = copy;
        p = copy;
    }
    *out = p;
    *count = (int64_t)n;
    return NULL;
}

static const char *SK_ORT_CALL cpu_ep(const OrtCustomOp *b) { (void)b; return "CPUExecutionProvider"; }
static int SK_ORT_CALL float_type(const OrtCustomOp *b, size_t i) { (void)b; (void)i; return SK_ORT_FLOAT; }
static size_t SK_ORT_CALL one_output(const OrtCustomOp *b) { (void)b; return 1; }
static int SK_ORT_CALL required(const OrtCustomOp *b, size_t i) {
    (void)b;
    (void)i;
    return SK_ORT_INPUT_OUTPUT_REQUIRED;
}
static int SK_ORT_CALL mem_default(const OrtCustomOp *b, size_t i) { (void)b; (void)i; return SK_ORT_MEM_TYPE_DEFAULT; }
static int SK_ORT_CALL one(const OrtCustomOp *b) { (void)b; return 1; }

void sk_ort_init_op(struct OrtCustomOp *b) {
    memset(b, 0, sizeof *b);
    b->version = SK_ORT_API_VERSION;
    b->GetExecutionProviderType = cpu_ep;
    b->GetOutputType = float_type;
    b->GetOutputTypeCount = one_output;
    b->GetOutputCharacteristic = required;
    b->GetInputMemoryType = mem_default;
    b->GetVariadicInputMinArity = one;
    b->GetVariadicInputHomogeneity = one;
    b->GetVariadicOutputMinArity = one;
    b->GetVariadicOutputHomogeneity = one;
}
