/* ONNX Runtime custom op com.sparsec.kernels.SparseAttention calling sk_attention.
 *
 *   SparseAttention(Q, K, V, layout[, bias]) -> Y     attrs scale (float), block, causal, has_bias,
 *                                                     topk_score (optional: 0 pooled mean, 1 softmax mass)
 *
 * Q [B, Hq, Sq, D], K [B, Hkv, Sk, D], V [B, Hkv, Sk, Dv], Y [B, Hq, Sq, Dv] (fp32). `layout` is a
 * constant int32 initializer: [2, H] (row 0 local window in blocks, -1 = all; row 1 sink
 * blocks), [3, H] (the same plus row 2, key blocks picked at run time by pooled Q.K, >= 0),
 * [4, H] (plus row 3, 0/1: left-out key blocks read as summary keys) or
 * [H, query blocks, key blocks] of 0/1 (explicit block mask, no top-k), H = 1 or Hq. It is read
 * and checked when the session is created. `bias` broadcasts to [B, Hq, Sq, Sk] (read through
 * strides, no copy). Threads per call: the session's "sparsec.kernel_threads" cap (registered
 * by RegisterCustomOps in sk_ort_ops.c, which calls sk_attn_ort_add below).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sk_attn.h"
#include "sk_internal.h"
#include "sk_ort_abi.h"
#include "sk_ort_pool.h"
#include "sk_ort_util.h"

/* OrtApi slot of KernelInfoGetAttribute_float (just before ..._int64, slot 86). */
#define SK_ORT_KernelInfoGetAttribute_float 85
typedef OrtStatus *(SK_ORT_CALL *sk_ort_KernelInfoGetAttribute_float_fn)(const OrtKernelInfo *info,
                                                                      const char *name, float *out);

#define ATTN_MAX_CAP 256
#define ATTN_NAME "SparseAttention"

typedef struct {
    OrtCustomOp base;
    int cap;
} attn_op;

typedef struct {
    const OrtApi *api;
    int isa, cap, causal, has_bias, topk_score;
    float scale;
    int64_t block, heads, mask_q, mask_k;
    int32_t *local, *sinks, *topk, *summary; /* topk: NULL for a [2, H] layout; summary: for [4, H] */
    uint8_t *mask;
} attn_kernel;

static void attn_destroy(void *p) {
    attn_kernel *kr = p;
    if (!kr) return;
    free(kr->local);
    free(kr->sinks);
    free(kr->topk);
    free(kr->summary);
    free(kr->mask);
    free(kr);
}

static int pick_isa(void) {
    const char *env = getenv("SPARSEC_KERNEL_ISA");
    static const char *const names[] = {"scalar", "avx2", "avx512", "neon"};
    if (env && *env) {
        for (int i = 0; i < 4; i++)
            if (strcmp(env, names[i]) == 0) return sk_isa_supported(i) ? i : -1;
        return -1;
    }
    static const int pref[] = {SK_ISA_AVX512, SK_ISA_NEON, SK_ISA_AVX2, SK_ISA_SCALAR};
    for (int i = 0; i < 4; i++)
        if (sk_isa_supported(pref[i])) return pref[i];
    return SK_ISA_SCALAR;
}

static OrtStatus *read_layout(attn_kernel *kr, const OrtKernelInfo *info, const char *ctx) {
    const OrtApi *api = kr->api;
    int is_const = 0;
    const OrtValue *value = NULL;
    OrtStatus *st = SK_ORT(api, KernelInfoGetConstantInput_tensor)(info, 3, &is_const, &value);
    if (st) {
        SK_ORT(api, ReleaseStatus)(st);
        is_const = 0;
    }
    if (!is_const || !value) return sk_ort_status(api, "%s: input 3 (layout) must be a constant initializer", ctx);
    OrtTensorTypeAndShapeInfo *ti = NULL;
    if ((st = SK_ORT(api, GetTensorTypeAndShape)(value, &ti))) return st;
    int type = 0;
    size_t rank = 0;
    int64_t dims[3] = {0, 0, 0};
    st = SK_ORT(api, GetTensorElementType)(ti, &type);
    if (!st) st = SK_ORT(api, GetDimensionsCount)(ti, &rank);
    if (!st && (rank == 2 || rank == 3)) st = SK_ORT(api, GetDimensions)(ti, dims, rank);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    if (st) return st;
    if (type != SK_ORT_INT32 || (rank != 2 && rank != 3))
        return sk_ort_status(api, "%s: layout must be int32 [2, H], [3, H], [4, H] or [H, query blocks, key blocks]", ctx);
    void *p = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)value, &p))) return st;
    const int32_t *data = p;
    if (rank == 2) {
        if (dims[0] < 2 || dims[0] > 4 || dims[1] < 1)
            return sk_ort_status(api, "%s: layout [2, 3 or 4, H] has shape [%lld, %lld]", ctx, (long long)dims[0], (long long)dims[1]);
        kr->heads = dims[1];
        kr->local = malloc(sizeof(int32_t) * kr->heads);
        kr->sinks = malloc(sizeof(int32_t) * kr->heads);
        if (dims[0] >= 3) kr->topk = malloc(sizeof(int32_t) * kr->heads);
        if (dims[0] == 4) kr->summary = malloc(sizeof(int32_t) * kr->heads);
        if (!kr->local || !kr->sinks || (dims[0] >= 3 && !kr->topk) || (dims[0] == 4 && !kr->summary))
            return sk_ort_status(api, "%s: out of memory", ctx);
        for (int64_t h = 0; h < kr->heads; h++) {
            kr->local[h] = data[h];
            kr->sinks[h] = data[kr->heads + h];
            if ((kr->local[h] < 1 && kr->local[h] != -1) || kr->sinks[h] < 0)
                return sk_ort_status(api, "%s: head %lld has local window %d, sinks %d (need >= 1 or -1, >= 0)", ctx,
                            (long long)h, kr->local[h], kr->sinks[h]);
            if (kr->topk && (kr->topk[h] = data[2 * kr->heads + h]) < 0)
                return sk_ort_status(api, "%s: head %lld has top-k %d (need >= 0)", ctx, (long long)h, kr->topk[h]);
            if (kr->summary && (kr->summary[h] = data[3 * kr->heads + h]) != 0 && kr->summary[h] != 1)
                return sk_ort_status(api, "%s: head %lld has summary %d (need 0 or 1)", ctx, (long long)h, kr->summary[h]);
        }
    } else {
        if (dims[0] < 1 || dims[1] < 1 || dims[2] < 1) return sk_ort_status(api, "%s: empty block mask", ctx);
        kr->heads = dims[0];
        kr->mask_q = dims[1];
        kr->mask_k = dims[2];
        const int64_t n = dims[0] * dims[1] * dims[2];
        kr->mask = malloc((size_t)n);
        if (!kr->mask) return sk_ort_status(api, "%s: out of memory", ctx);
        for (int64_t i = 0; i < n; i++) {
            if (data[i] != 0 && data[i] != 1) return sk_ort_status(api, "%s: block mask holds %d (need 0 or 1)", ctx, data[i]);
            kr->mask[i] = (uint8_t)data[i];
        }
    }
    return NULL;
}

static OrtStatus *SK_ORT_CALL attn_create(const OrtCustomOp *base, const OrtApi *api,
                                          const OrtKernelInfo *info, void **out) {
    char node[160] = "?", ctx[256];
    size_t size = sizeof node;
    OrtStatus *st = SK_ORT(api, KernelInfo_GetNodeName)(info, node, &size);
    if (st) SK_ORT(api, ReleaseStatus)(st);
    snprintf(ctx, sizeof ctx, "sparsec kernel op " ATTN_NAME " (node '%s')", node);
    *out = NULL;
    attn_kernel *kr = calloc(1, sizeof *kr);
    if (!kr) return sk_ort_status(api, "%s: out of memory", ctx);
    kr->api = api;
    kr->cap = ((const attn_op *)base)->cap;
    kr->isa = pick_isa();
    if (kr->isa < 0) {
        attn_destroy(kr);
        return sk_ort_status(api, "%s: kernel ISA '%s' ($SPARSEC_KERNEL_ISA) is not available here", ctx, getenv("SPARSEC_KERNEL_ISA"));
    }
    int64_t causal = 0, has_bias = 0;
    if ((st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, "block", &kr->block)) ||
        (st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, "causal", &causal)) ||
        (st = SK_ORT(api, KernelInfoGetAttribute_float)(info, "scale", &kr->scale))) {
        SK_ORT(api, ReleaseStatus)(st);
        attn_destroy(kr);
        return sk_ort_status(api, "%s: needs attributes scale (float), block and causal (int)", ctx);
    }
    has_bias = sk_ort_attr_int_or(api, info, "has_bias", 0);
    if (kr->block < 1 || kr->block > 1024 || (causal != 0 && causal != 1)) {
        const long long block = (long long)kr->block;
        attn_destroy(kr);
        return sk_ort_status(api, "%s: block %lld must be in [1, 1024], causal 0 or 1", ctx, block);
    }
    const int64_t topk_score = sk_ort_attr_int_or(api, info, "topk_score", 0);
    if (topk_score != 0 && topk_score != 1) {
        attn_destroy(kr);
        return sk_ort_status(api, "%s: topk_score %lld must be 0 or 1", ctx, (long long)topk_score);
    }
    kr->topk_score = (int)topk_score;
    kr->causal = (int)causal;
    kr->has_bias = has_bias != 0;
    if ((st = read_layout(kr, info, ctx))) {
        attn_destroy(kr);
        return st;
    }
    *out = kr;
    return NULL;
}

static OrtStatus *attn_compute_op(void *p, OrtKernelContext *context) {
    const attn_kernel *kr = p;
    const OrtApi *api = kr->api;
    const OrtValue *in[5] = {NULL, NULL, NULL, NULL, NULL};
    int64_t dims[5][4];
    size_t rank[5] = {0};
    OrtStatus *st;
    const int n_in = kr->has_bias ? 5 : 3;
    for (int i = 0; i < n_in; i++) {
        const int idx = i < 3 ? i : 4;
        if ((st = SK_ORT(api, KernelContext_GetInput)(context, (size_t)idx, &in[i]))) return st;
        if (!in[i]) return sk_ort_status(api, "sparsec kernel op " ATTN_NAME ": input %d is missing", idx);
        if ((st = sk_ort_shape(api, in[i], dims[i], 4, &rank[i]))) return st;
    }
    if (rank[0] != 4 || rank[1] != 4 || rank[2] != 4 || (kr->has_bias && rank[3] > 4))
        return sk_ort_status(api, "sparsec kernel op " ATTN_NAME ": Q, K, V must be 4-D, bias rank <= 4");
    const int64_t b = dims[0][0], hq = dims[0][1], sq = dims[0][2], d = dims[0][3];
    const int64_t hkv = dims[1][1], sk = dims[1][2], dv = dims[2][3];
    if (dims[1][0] != b || dims[1][3] != d || dims[2][0] != b || dims[2][1] != hkv ||
        dims[2][2] != sk || (kr->heads != 1 && kr->heads != hq))
        return sk_ort_status(api, "sparsec kernel op " ATTN_NAME ": Q/K/V shapes or layout heads disagree");
    int64_t bstride[4] = {0, 0, 0, 0};
    const float *bias = NULL;
    if (kr->has_bias) {
        const int64_t full[4] = {b, hq, sq, sk};
        int64_t bd[4] = {1, 1, 1, 1};
        const size_t r = rank[3];
        for (size_t i = 0; i < r; i++) bd[4 - r + i] = dims[3][i];
        int64_t s = 1;
        for (int i = 3; i >= 0; i--) {
            if (bd[i] != 1 && bd[i] != full[i])
                return sk_ort_status(api, "sparsec kernel op " ATTN_NAME ": bias does not broadcast to the scores");
            bstride[i] = bd[i] == 1 ? 0 : s;
            s *= bd[i];
        }
        void *bp = NULL;
        if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)in[3], &bp))) return st;
        bias = bp;
    }
    const int64_t ydims[4] = {b, hq, sq, dv};
    OrtValue *yv = NULL;
    if ((st = SK_ORT(api, KernelContext_GetOutput)(context, 0, ydims, 4, &yv))) return st;
    void *q = NULL, *k = NULL, *v = NULL, *y = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)in[0], &q)) ||
        (st = SK_ORT(api, GetTensorMutableData)((OrtValue *)in[1], &k)) ||
        (st = SK_ORT(api, GetTensorMutableData)((OrtValue *)in[2], &v)) ||
        (st = SK_ORT(api, GetTensorMutableData)(yv, &y)))
        return st;
    const int rc = sk_attention(q, k, v, y, b, hq, hkv, sq, sk, d, dv, kr->scale, kr->causal,
                                kr->block, kr->heads, kr->local, kr->sinks, kr->topk, kr->summary, kr->topk_score,
                                kr->mask, kr->mask_q,
                                kr->mask_k, bias, bias ? bstride : NULL, kr->isa,
                                kr->cap > 0 ? kr->cap : sk_max_threads());
    if (rc != SK_OK)
        return sk_ort_status(api, "sparsec kernel op " ATTN_NAME ": %s", sk_status_string(rc));
    return NULL;
}

/* Parallel regions of the op run on ORT's intra-op pool (sk_ort_pool.c). */
static OrtStatus *SK_ORT_CALL attn_compute(void *p, OrtKernelContext *context) {
    sk_ort_pool_enter(context);
    OrtStatus *st = attn_compute_op(p, context);
    sk_ort_pool_leave();
    return st;
}

static void SK_ORT_CALL attn_kernel_destroy(void *p) { attn_destroy(p); }
static const char *SK_ORT_CALL attn_name(const OrtCustomOp *o) { (void)o; return ATTN_NAME; }
static const char *SK_ORT_CALL attn_ep(const OrtCustomOp *o) { (void)o; return "CPUExecutionProvider"; }
static size_t SK_ORT_CALL attn_n_in(const OrtCustomOp *o) { (void)o; return 5; }
static int SK_ORT_CALL attn_in_type(const OrtCustomOp *o, size_t i) { (void)o; return i == 3 ? SK_ORT_INT32 : SK_ORT_FLOAT; }
static size_t SK_ORT_CALL attn_n_out(const OrtCustomOp *o) { (void)o; return 1; }
static int SK_ORT_CALL attn_out_type(const OrtCustomOp *o, size_t i) { (void)o; (void)i; return SK_ORT_FLOAT; }
static int SK_ORT_CALL attn_in_char(const OrtCustomOp *o, size_t i) {
    (void)o;
    return i == 4 ? SK_ORT_INPUT_OUTPUT_OPTIONAL : SK_ORT_INPUT_OUTPUT_REQUIRED;
}
static int SK_ORT_CALL attn_out_char(const OrtCustomOp *o, size_t i) { (void)o; (void)i; return SK_ORT_INPUT_OUTPUT_REQUIRED; }
static int SK_ORT_CALL attn_mem(const OrtCustomOp *o, size_t i) { (void)o; (void)i; return SK_ORT_MEM_TYPE_DEFAULT; }
static int SK_ORT_CALL attn_one(const OrtCustomOp *o) { (void)o; return 1; }

static attn_op attn_ops[ATTN_MAX_CAP + 1];

/* Adds SparseAttention (for thread cap `cap`) to `domain`; called once per domain. */
OrtStatus *sk_attn_ort_add(const OrtApi *api, OrtCustomOpDomain *domain, int cap) {
    if (cap < 0 || cap > ATTN_MAX_CAP) return sk_ort_status(api, "sparsec kernels: thread cap %d out of range", cap);
    attn_op *op = &attn_ops[cap];
    memset(op, 0, sizeof *op);
    op->cap = cap;
    OrtCustomOp *b = &op->base;
    b->version = SK_ORT_API_VERSION;
    b->GetName = attn_name;
    b->GetExecutionProviderType = attn_ep;
    b->GetInputType = attn_in_type;
    b->GetInputTypeCount = attn_n_in;
    b->GetOutputType = attn_out_type;
    b->GetOutputTypeCount = attn_n_out;
    b->KernelDestroy = attn_kernel_destroy;
    b->GetInputCharacteristic = attn_in_char;
    b->GetOutputCharacteristic = attn_out_char;
    b->GetInputMemoryType = attn_mem;
    b->GetVariadicInputMinArity = attn_one;
    b->GetVariadicInputHomogeneity = attn_one;
    b->GetVariadicOutputMinArity = attn_one;
    b->GetVariadicOutputHomogeneity = attn_one;
    b->CreateKernelV2 = attn_create;
    b->KernelComputeV2 = attn_compute;
    return SK_ORT(api, CustomOpDomain_Add)(domain, b);
}
