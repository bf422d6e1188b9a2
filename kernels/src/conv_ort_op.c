/* ONNX Runtime custom op "SparseConv" (domain com.sparsec.kernels), calling sk_conv2d.
 *
 *   SparseConv(X, perm, row_ptr, taps, values[, bias]) -> Y     (NCHW fp32)
 *   attrs cout, cin, kh, kw, kc, stride, pad_t, pad_l, pad_b, pad_r, act (0 none, 1 relu,
 *         2 relu6), has_bias, H, W (the input size the lowering saw)
 * Weights packed by kernels/packing_conv.py, as constant initializers: read and checked once
 * at session creation (as PackedConv.from_arrays), with the tap offsets for an H x W input
 * computed there too; an input of another size gets its offsets computed per call. Threads
 * per call: one per ~1M multiply-adds, at most the session's "sparsec.kernel_threads".
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv_internal.h"
#include "sk_conv.h"
#include "sk_ort_abi.h"
#include "sk_ort_pool.h"
#include "sk_ort_util.h"

#define CONV_MAX_CAP 256
#define CONV_INPUTS 6
#define CONV_MIN_MACS_PER_THREAD (1 << 20)

typedef struct {
    OrtCustomOp base;
    int cap;
} conv_op;

typedef struct {
    const OrtApi *api;
    int64_t cout, cin, kh, kw, kc, stride, pads[4], act, h, w;
    const int32_t *perm, *row_ptr, *taps;
    const float *values, *bias;
    int64_t nslots;
    int32_t *off; /* offsets for h x w */
    int isa, cap;
    void *owned[CONV_INPUTS];
} conv_kernel;

static const char *const NAME = "SparseConv";

static int pick_isa(int *isa, char *bad, size_t len) {
    static const char *const names[] = {"scalar", "avx2", "avx512", "neon"};
    const char *env = getenv("SPARSEC_KERNEL_ISA");
    char name[16] = {0};
    size_t n = 0;
    if (env) {
        while (isspace((unsigned char)*env)) env++;
        for (; env[n] && !isspace((unsigned char)env[n]) && n + 1 < sizeof name; n++)
            name[n] = (char)tolower((unsigned char)env[n]);
    }
    if (n == 0) {
        *isa = sk_isa_supported(SK_ISA_AVX512) ? SK_ISA_AVX512
               : sk_isa_supported(SK_ISA_AVX2) ? SK_ISA_AVX2
                                               : SK_ISA_SCALAR; /* NEON: scalar conv */
        return 0;
    }
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            if (!sk_isa_supported(i)) break;
            *isa = i == SK_ISA_NEON ? SK_ISA_SCALAR : i;
            return 0;
        }
    snprintf(bad, len, "kernel ISA '%s' ($SPARSEC_KERNEL_ISA) is not available here", name);
    return -1;
}

static void destroy(void *p) {
    conv_kernel *kr = p;
    if (!kr) return;
    for (int i = 0; i < CONV_INPUTS; i++) free(kr->owned[i]);
    free(kr->off);
    free(kr);
}

/* The checks of PackedConv.from_arrays: every output channel once, row_ptr rising to the
 * slot count, taps in range and inside their chunk. */
static OrtStatus *check(conv_kernel *kr, const char *ctx, int64_t perm_len, int64_t rp_len,
                        int64_t taps_len) {
    const OrtApi *api = kr->api;
    const int64_t groups = sk_ceil_div(kr->cout, SK_CONV_G), chunks = sk_ceil_div(kr->cin, kr->kc);
    if (perm_len != groups * SK_CONV_G || rp_len != chunks * groups + 1)
        return sk_ort_status(api, "%s: perm/row_ptr have %lld/%lld entries, expected %lld/%lld", ctx,
                             (long long)perm_len, (long long)rp_len, (long long)(groups * SK_CONV_G),
                             (long long)(chunks * groups + 1));
    if (taps_len != kr->nslots) return sk_ort_status(api, "%s: taps and values differ in length", ctx);
    if (kr->row_ptr[0] != 0 || (int64_t)kr->row_ptr[rp_len - 1] * SK_CONV_G != kr->nslots)
        return sk_ort_status(api, "%s: row_ptr must rise from 0 to the number of steps", ctx);
    for (int64_t i = 1; i < rp_len; i++)
        if (kr->row_ptr[i] < kr->row_ptr[i - 1])
            return sk_ort_status(api, "%s: row_ptr must rise from 0 to the number of steps", ctx);
    unsigned char *seen = calloc((size_t)kr->cout, 1);
    if (!seen) return sk_ort_status(api, "%s: out of memory", ctx);
    int64_t covered = 0;
    for (int64_t i = 0; i < perm_len; i++) {
        const int32_t r = kr->perm[i];
        if (r == -1) continue;
        if (r < 0 || r >= kr->cout || seen[r]) {
            free(seen);
            return sk_ort_status(api, "%s: perm must hold every output channel exactly once", ctx);
        }
        seen[r] = 1;
        covered++;
    }
    free(seen);
    if (covered != kr->cout)
        return sk_ort_status(api, "%s: perm must hold every output channel exactly once", ctx);
    const int64_t span = kr->kc * kr->kh * kr->kw, limit = kr->cin * kr->kh * kr->kw;
    for (int64_t rp = 0; rp + 1 < rp_len; rp++)
        for (int64_t s = kr->row_ptr[rp]; s < kr->row_ptr[rp + 1]; s++)
            for (int j = 0; j < SK_CONV_G; j++) {
                const int32_t t = kr->taps[s * SK_CONV_G + j];
                if (t < 0 || t >= limit || t / span != rp / groups)
                    return sk_ort_status(api, "%s: tap %d out of range or outside its chunk", ctx, t);
            }
    return NULL;
}

static OrtStatus *SK_ORT_CALL create(const OrtCustomOp *base, const OrtApi *api,
                                     const OrtKernelInfo *info, void **out) {
    char node[160] = "?", ctx[256], bad[160];
    size_t size = sizeof node;
    OrtStatus *st = SK_ORT(api, KernelInfo_GetNodeName)(info, node, &size);
    if (st) SK_ORT(api, ReleaseStatus)(st);
    snprintf(ctx, sizeof ctx, "sparsec kernel op %s (node '%s')", NAME, st ? "?" : node);
    *out = NULL;
    conv_kernel *kr = calloc(1, sizeof *kr);
    if (!kr) return sk_ort_status(api, "%s: out of memory", ctx);
    kr->api = api;
    kr->cap = ((const conv_op *)base)->cap;
    if (pick_isa(&kr->isa, bad, sizeof bad)) {
        destroy(kr);
        return sk_ort_status(api, "%s: %s", ctx, bad);
    }
    int64_t has_bias = 0;
    if ((st = sk_ort_attr_int(api, info, ctx, "cout", &kr->cout)) || (st = sk_ort_attr_int(api, info, ctx, "cin", &kr->cin)) ||
        (st = sk_ort_attr_int(api, info, ctx, "kh", &kr->kh)) || (st = sk_ort_attr_int(api, info, ctx, "kw", &kr->kw)) ||
        (st = sk_ort_attr_int(api, info, ctx, "kc", &kr->kc)) || (st = sk_ort_attr_int(api, info, ctx, "stride", &kr->stride)) ||
        (st = sk_ort_attr_int(api, info, ctx, "pad_t", &kr->pads[0])) || (st = sk_ort_attr_int(api, info, ctx, "pad_l", &kr->pads[1])) ||
        (st = sk_ort_attr_int(api, info, ctx, "pad_b", &kr->pads[2])) || (st = sk_ort_attr_int(api, info, ctx, "pad_r", &kr->pads[3])) ||
        (st = sk_ort_attr_int(api, info, ctx, "act", &kr->act)) || (st = sk_ort_attr_int(api, info, ctx, "has_bias", &has_bias)) ||
        (st = sk_ort_attr_int(api, info, ctx, "H", &kr->h)) || (st = sk_ort_attr_int(api, info, ctx, "W", &kr->w)))
        goto fail;
    int64_t ho = 0, wo = 0;
    if (kr->cout < 1 || kr->cin < 1 || kr->kc < 1 || kr->cout > INT32_MAX || kr->cin * kr->kh * kr->kw > INT32_MAX ||
        kr->act < 0 || kr->act > 2 || kr->h > INT32_MAX || kr->w > INT32_MAX ||
        sk_conv_out_shape(kr->h, kr->w, (int)kr->kh, (int)kr->kw, (int)kr->stride, (int)kr->pads[0],
                          (int)kr->pads[1], (int)kr->pads[2], (int)kr->pads[3], &ho, &wo) != SK_OK) {
        st = sk_ort_status(api, "%s: attributes out of range", ctx);
        goto fail;
    }
    const void *p = NULL;
    int64_t perm_len = 0, rp_len = 0, taps_len = 0, bias_len = 0;
    if ((st = sk_ort_constant(api, info, ctx, 1, "perm", SK_ORT_INT32, 4, &p, &perm_len, &kr->owned[1]))) goto fail;
    kr->perm = p;
    if ((st = sk_ort_constant(api, info, ctx, 2, "row_ptr", SK_ORT_INT32, 4, &p, &rp_len, &kr->owned[2]))) goto fail;
    kr->row_ptr = p;
    if ((st = sk_ort_constant(api, info, ctx, 3, "taps", SK_ORT_INT32, 4, &p, &taps_len, &kr->owned[3]))) goto fail;
    kr->taps = p;
    if ((st = sk_ort_constant(api, info, ctx, 4, "values", SK_ORT_FLOAT, 4, &p, &kr->nslots, &kr->owned[4]))) goto fail;
    kr->values = p;
    if ((st = check(kr, ctx, perm_len, rp_len, taps_len))) goto fail;
    if (has_bias) {
        if ((st = sk_ort_constant(api, info, ctx, 5, "bias", SK_ORT_FLOAT, 4, &p, &bias_len, &kr->owned[5]))) goto fail;
        if (bias_len != kr->cout) {
            st = sk_ort_status(api, "%s: bias has %lld values, expected cout=%lld", ctx,
                               (long long)bias_len, (long long)kr->cout);
            goto fail;
        }
        kr->bias = p;
    }
    kr->off = malloc((size_t)(kr->nslots > 0 ? kr->nslots : 1) * sizeof(int32_t));
    if (!kr->off) {
        st = sk_ort_status(api, "%s: out of memory", ctx);
        goto fail;
    }
    if (sk_conv_offsets(kr->cin, kr->h, kr->w, (int)kr->kh, (int)kr->kw, (int)kr->stride,
                        (int)kr->pads[0], (int)kr->pads[1], (int)kr->pads[2], (int)kr->pads[3],
                        kr->taps, kr->nslots, kr->off) != SK_OK) {
        st = sk_ort_status(api, "%s: cannot compute tap offsets for a %lldx%lld input", ctx,
                           (long long)kr->h, (long long)kr->w);
        goto fail;
    }
    /* Checked once here; calls at this input size then skip the per-slot checks. */
    const int rc = sk_conv2d_check(kr->cin, kr->h, kr->w, kr->cout, (int)kr->kh, (int)kr->kw,
                                   (int)kr->stride, (int)kr->pads[0], (int)kr->pads[1], (int)kr->pads[2],
                                   (int)kr->pads[3], kr->kc, kr->perm, kr->row_ptr, kr->off, kr->values,
                                   kr->nslots, (int)kr->act);
    if (rc != SK_OK) {
        st = sk_ort_status(api, "%s: packed weight does not fit the op's shape: %s", ctx, sk_status_string(rc));
        goto fail;
    }
    *out = kr;
    return NULL;
fail:
    destroy(kr);
    return st;
}

static OrtStatus *compute_op(void *p, OrtKernelContext *context) {
    const conv_kernel *kr = p;
    const OrtApi *api = kr->api;
    const OrtValue *xv = NULL;
    OrtStatus *st = SK_ORT(api, KernelContext_GetInput)(context, 0, &xv);
    if (st) return st;
    size_t rank = 0;
    int64_t dims[4];
    if ((st = sk_ort_shape(api, xv, dims, 4, &rank))) return st;
    if (rank != 4 || dims[1] != kr->cin)
        return sk_ort_status(api, "sparsec kernel op %s: X must be [N, %lld, H, W]", NAME, (long long)kr->cin);
    const int kh = (int)kr->kh, kw = (int)kr->kw, s = (int)kr->stride;
    const int pt = (int)kr->pads[0], pl = (int)kr->pads[1], pb = (int)kr->pads[2], pr = (int)kr->pads[3];
    int64_t ho = 0, wo = 0;
    if (sk_conv_out_shape(dims[2], dims[3], kh, kw, s, pt, pl, pb, pr, &ho, &wo) != SK_OK)
        return sk_ort_status(api, "sparsec kernel op %s: input %lldx%lld too small", NAME,
                             (long long)dims[2], (long long)dims[3]);
    const int64_t ydims[4] = {dims[0], kr->cout, ho, wo};
    OrtValue *yv = NULL;
    if ((st = SK_ORT(api, KernelContext_GetOutput)(context, 0, ydims, 4, &yv))) return st;
    if (dims[0] == 0 || ho * wo == 0) return NULL;
    void *x = NULL, *y = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)xv, &x))) return st;
    if ((st = SK_ORT(api, GetTensorMutableData)(yv, &y))) return st;
    int32_t *off = kr->off, *own = NULL;
    if (dims[2] != kr->h || dims[3] != kr->w) { /* another input size: offsets for this call */
        own = malloc((size_t)(kr->nslots > 0 ? kr->nslots : 1) * sizeof(int32_t));
        if (!own) return sk_ort_status(api, "sparsec kernel op %s: out of memory", NAME);
        const int rc = sk_conv_offsets(kr->cin, dims[2], dims[3], kh, kw, s, pt, pl, pb, pr, kr->taps,
                                       kr->nslots, own);
        if (rc != SK_OK) {
            free(own);
            return sk_ort_status(api, "sparsec kernel op %s: %s", NAME, sk_status_string(rc));
        }
        off = own;
    }
    const int64_t macs = dims[0] * ho * wo * kr->nslots;
    int64_t limit = kr->cap > 0 ? kr->cap : sk_max_threads(), t = macs / CONV_MIN_MACS_PER_THREAD;
    if (t > limit) t = limit;
    const int rc = (own ? sk_conv2d : sk_conv2d_checked)(
        x, dims[0], kr->cin, dims[2], dims[3], kr->cout, kh, kw, s, pt, pl, pb, pr, kr->kc, kr->perm,
        kr->row_ptr, off, kr->values, kr->nslots, kr->bias, (int)kr->act, y, kr->isa, t < 1 ? 1 : (int)t);
    free(own);
    if (rc != SK_OK) return sk_ort_status(api, "sparsec kernel op %s: %s", NAME, sk_status_string(rc));
    return NULL;
}

static OrtStatus *SK_ORT_CALL compute(void *p, OrtKernelContext *context) {
    return sk_ort_pool_compute(compute_op, p, context); /* regions on ORT's intra-op pool */
}

static void SK_ORT_CALL kernel_destroy(void *p) { destroy(p); }
static const char *SK_ORT_CALL get_name(const OrtCustomOp *b) { (void)b; return NAME; }
static size_t SK_ORT_CALL input_count(const OrtCustomOp *b) { (void)b; return CONV_INPUTS; }
static int SK_ORT_CALL input_type(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i >= 1 && i <= 3 ? SK_ORT_INT32 : SK_ORT_FLOAT;
}
static int SK_ORT_CALL input_char(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i == CONV_INPUTS - 1 ? SK_ORT_INPUT_OUTPUT_OPTIONAL : SK_ORT_INPUT_OUTPUT_REQUIRED;
}

/* One op per thread cap, initialised under sk_ort_ops.c's registration lock. */
static conv_op ops[CONV_MAX_CAP + 1];

struct OrtCustomOp *sk_conv_custom_op(int cap) {
    if (cap < 0 || cap > CONV_MAX_CAP) return NULL;
    conv_op *op = &ops[cap];
    sk_ort_init_op(&op->base);
    op->cap = cap;
    OrtCustomOp *b = &op->base;
    b->GetName = get_name;
    b->GetInputType = input_type;
    b->GetInputTypeCount = input_count;
    b->GetInputCharacteristic = input_char;
    b->KernelDestroy = kernel_destroy;
    b->CreateKernelV2 = create;
    b->KernelComputeV2 = compute;
    return b;
}
