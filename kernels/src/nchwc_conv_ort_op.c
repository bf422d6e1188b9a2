/* ONNX Runtime custom op "SparseConvNchwc" (domain com.sparsec.kernels), calling sk_nchwc_conv.
 *
 *   SparseConvNchwc(X, idx, values[, bias[, sum[, offs[, dw_weight[, dw_bias]]]]]) -> Y
 * X, sum and Y are tensors of ORT's NCHWc layout: shape [N, C rounded up to 16, H, W], memory
 * [N][C/16][H][W][16] (what com.microsoft.nchwc ops exchange). The op takes the place of a
 * com.microsoft.nchwc Conv in a model ORT already laid out, so the chain keeps its layout and
 * runs no reorders around it. Y = act(conv(X, W) + bias + sum).
 *   attrs cout, cin, kh, kw, k, stride_h, stride_w, pad_t, pad_l, pad_b, pad_r, dil_h, dil_w,
 *         act (0 none, 1 relu, 2 clip), has_bias, has_sum; optional has_offs; float clip_lo, clip_hi
 * idx (int32) and values (float), [pairs][16] from kernels/packing_nchwc.py, offs (int32, the
 * pair range of each (output block, tap, input block); without it k pairs each) and bias must
 * be constant initializers: read and checked once at session creation.
 * With has_dw=1 the op is a depthwise conv followed by this 1x1 stride-1 conv, fused (the
 * depthwise output never goes to memory): X is the depthwise input, dw_weight its weight in
 * ORT's NCHWc depthwise layout [C/16][kh][kw][16], dw_bias (dw_has_bias) [C rounded up to 16];
 * attrs dw_kh, dw_kw, dw_stride_h, dw_stride_w, dw_pad_t, dw_pad_l, dw_pad_b, dw_pad_r,
 * dw_dil_h, dw_dil_w, dw_act, dw_has_bias; float dw_clip_lo, dw_clip_hi. Y = act(conv1x1(
 * dw_act(depthwise(X) + dw_bias)) + bias + sum). Needs
 * AVX-512 (session creation fails elsewhere; lowering only writes it where it was measured).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nchwc_conv_internal.h"
#include "sk_nchwc.h"
#include "sk_ort_abi.h"
#include "sk_ort_pool.h"
#include "sk_ort_util.h"

#define NCHWC_MAX_CAP 256
#define NCHWC_INPUTS 8
#define NCHWC_MIN_MACS_PER_THREAD (1 << 16)

typedef struct {
    OrtCustomOp base;
    int cap;
} nchwc_op;

typedef struct {
    const OrtApi *api;
    int64_t cout, cin, kh, kw, k, sh, sw, pads[4], dh, dw, act, has_bias, has_sum, has_offs, pairs;
    float clip_lo, clip_hi;
    const int32_t *idx, *offs;
    const float *values, *bias;
    int64_t has_dw, dw_has_bias;
    sk_nchwc_dw pre; /* the depthwise conv, with has_dw */
    /* the input plane's geometry (its kernel, stride, pad and dilation fields): the depthwise
     * conv's with has_dw (the 1x1 keeps its plane), else the conv's; set at creation */
    sk_nchwc_dw in;
    int cap;
    void *owned[NCHWC_INPUTS];
} nchwc_kernel;

static const char *const NAME = "SparseConvNchwc";

static void destroy(void *p) {
    nchwc_kernel *kr = p;
    if (!kr) return;
    for (int i = 0; i < NCHWC_INPUTS; i++) free(kr->owned[i]);
    free(kr);
}

static int64_t blocks(int64_t c) { return (c + 15) / 16; }

/* The depthwise conv ahead of a 1x1 one (has_dw): its attributes; the 1x1's must be the identity's. */
static OrtStatus *read_dw(nchwc_kernel *kr, const OrtApi *api, const OrtKernelInfo *info, const char *ctx) {
    kr->has_dw = sk_ort_attr_int_or(api, info, "has_dw", 0);
    if (!kr->has_dw) return NULL;
    int64_t v[11];
    static const char *const names[11] = {"dw_kh", "dw_kw", "dw_stride_h", "dw_stride_w", "dw_pad_t", "dw_pad_l",
                                          "dw_pad_b", "dw_pad_r", "dw_dil_h", "dw_dil_w", "dw_act"};
    OrtStatus *st;
    for (int i = 0; i < 11; i++)
        if ((st = sk_ort_attr_int(api, info, ctx, names[i], &v[i]))) return st;
    kr->dw_has_bias = sk_ort_attr_int_or(api, info, "dw_has_bias", 0);
    for (int i = 0; i < 11; i++)
        if (v[i] < (i >= 4 && i < 8 ? 0 : i == 10 ? 0 : 1) || v[i] > 64 || (i == 10 && v[i] > 2))
            return sk_ort_status(api, "%s: depthwise attribute %s out of range", ctx, names[i]);
    if (v[0] * v[1] > 64) return sk_ort_status(api, "%s: depthwise kernel over 64 taps", ctx);
    if (kr->kh != 1 || kr->kw != 1 || kr->sh != 1 || kr->sw != 1 || kr->pads[0] || kr->pads[1] || kr->pads[2] ||
        kr->pads[3])
        return sk_ort_status(api, "%s: a depthwise conv fuses only ahead of a 1x1 stride-1 conv", ctx);
    sk_nchwc_dw d = {NULL, NULL, (int)v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5], (int)v[6],
                     (int)v[7], (int)v[8], (int)v[9], (int)v[10], 0.0f, 6.0f};
    sk_ort_attr_float(api, info, "dw_clip_lo", &d.clip_lo);
    sk_ort_attr_float(api, info, "dw_clip_hi", &d.clip_hi);
    kr->pre = d;
    return NULL;
}

static OrtStatus *SK_ORT_CALL create(const OrtCustomOp *base, const OrtApi *api, const OrtKernelInfo *info,
                                     void **out) {
    char node[160] = "?", ctx[256];
    size_t size = sizeof node;
    OrtStatus *st = SK_ORT(api, KernelInfo_GetNodeName)(info, node, &size);
    if (st) SK_ORT(api, ReleaseStatus)(st);
    snprintf(ctx, sizeof ctx, "sparsec kernel op %s (node '%s')", NAME, st ? "?" : node);
    *out = NULL;
    nchwc_kernel *kr = calloc(1, sizeof *kr);
    if (!kr) return sk_ort_status(api, "%s: out of memory", ctx);
    kr->api = api;
    kr->cap = ((const nchwc_op *)base)->cap;
    kr->clip_lo = 0.0f;
    kr->clip_hi = 6.0f;
    if (!sk_isa_supported(SK_ISA_AVX512)) {
        st = sk_ort_status(api, "%s: needs AVX-512, which this CPU lacks", ctx);
        goto fail;
    }
    if ((st = sk_ort_attr_int(api, info, ctx, "cout", &kr->cout)) || (st = sk_ort_attr_int(api, info, ctx, "cin", &kr->cin)) ||
        (st = sk_ort_attr_int(api, info, ctx, "kh", &kr->kh)) || (st = sk_ort_attr_int(api, info, ctx, "kw", &kr->kw)) ||
        (st = sk_ort_attr_int(api, info, ctx, "k", &kr->k)) || (st = sk_ort_attr_int(api, info, ctx, "stride_h", &kr->sh)) ||
        (st = sk_ort_attr_int(api, info, ctx, "stride_w", &kr->sw)) || (st = sk_ort_attr_int(api, info, ctx, "pad_t", &kr->pads[0])) ||
        (st = sk_ort_attr_int(api, info, ctx, "pad_l", &kr->pads[1])) || (st = sk_ort_attr_int(api, info, ctx, "pad_b", &kr->pads[2])) ||
        (st = sk_ort_attr_int(api, info, ctx, "pad_r", &kr->pads[3])) || (st = sk_ort_attr_int(api, info, ctx, "dil_h", &kr->dh)) ||
        (st = sk_ort_attr_int(api, info, ctx, "dil_w", &kr->dw)) || (st = sk_ort_attr_int(api, info, ctx, "act", &kr->act)) ||
        (st = sk_ort_attr_int(api, info, ctx, "has_bias", &kr->has_bias)) || (st = sk_ort_attr_int(api, info, ctx, "has_sum", &kr->has_sum)))
        goto fail;
    kr->has_offs = sk_ort_attr_int_or(api, info, "has_offs", 0); /* absent in older ops: k pairs a block */
    sk_ort_attr_float(api, info, "clip_lo", &kr->clip_lo);
    sk_ort_attr_float(api, info, "clip_hi", &kr->clip_hi);
    if ((st = read_dw(kr, api, info, ctx))) goto fail;
    const sk_nchwc_dw conv = {NULL, NULL, (int)kr->kh, (int)kr->kw, (int)kr->sh, (int)kr->sw, (int)kr->pads[0],
                              (int)kr->pads[1], (int)kr->pads[2], (int)kr->pads[3], (int)kr->dh, (int)kr->dw, 0, 0, 0};
    kr->in = kr->has_dw ? kr->pre : conv;
    if (kr->cout < 1 || kr->cin < 1 || kr->kh < 1 || kr->kw < 1 || kr->kh > SK_NCHWC_MAX_KH || kr->kw > 64 ||
        kr->k < 1 || kr->k > 16 || kr->sh < 1 || kr->sw < 1 || kr->dh < 1 || kr->dw < 1 || kr->act < 0 ||
        kr->act > 2 || kr->pads[0] < 0 || kr->pads[1] < 0 || kr->pads[2] < 0 || kr->pads[3] < 0 ||
        kr->cout > (1 << 24) || kr->cin > (1 << 24)) {
        st = sk_ort_status(api, "%s: attributes out of range", ctx);
        goto fail;
    }
    const int64_t nblocks = blocks(kr->cout) * kr->kh * kr->kw * blocks(kr->cin);
    const void *p = NULL;
    int64_t n_idx = 0, n_val = 0, n_bias = 0, n_offs = 0, want = nblocks * kr->k * 16;
    if (kr->has_offs) {
        if ((st = sk_ort_constant(api, info, ctx, 5, "offs", SK_ORT_INT32, 4, &p, &n_offs, &kr->owned[5]))) goto fail;
        kr->offs = p;
        if (n_offs != nblocks + 1) {
            st = sk_ort_status(api, "%s: offs has %lld entries, expected %lld", ctx, (long long)n_offs,
                               (long long)(nblocks + 1));
            goto fail;
        }
        want = (int64_t)kr->offs[nblocks] * 16;
        if (sk_nchwc_check_offs(kr->offs, nblocks, kr->k, want / 16) != SK_OK) {
            st = sk_ort_status(api, "%s: offs is not a pair range per block (from 0, at most k a block)", ctx);
            goto fail;
        }
    }
    kr->pairs = want / 16;
    if ((st = sk_ort_constant(api, info, ctx, 1, "idx", SK_ORT_INT32, 4, &p, &n_idx, &kr->owned[1]))) goto fail;
    kr->idx = p;
    if ((st = sk_ort_constant(api, info, ctx, 2, "values", SK_ORT_FLOAT, 4, &p, &n_val, &kr->owned[2]))) goto fail;
    kr->values = p;
    if (n_idx != want || n_val != want) {
        st = sk_ort_status(api, "%s: idx/values have %lld/%lld entries, expected %lld", ctx, (long long)n_idx,
                           (long long)n_val, (long long)want);
        goto fail;
    }
    if (sk_nchwc_check_idx(kr->idx, n_idx) != SK_OK) {
        st = sk_ort_status(api, "%s: an idx entry is not a channel of its 16-channel block", ctx);
        goto fail;
    }
    if (kr->has_bias) {
        if ((st = sk_ort_constant(api, info, ctx, 3, "bias", SK_ORT_FLOAT, 4, &p, &n_bias, &kr->owned[3]))) goto fail;
        if (n_bias != blocks(kr->cout) * 16) {
            st = sk_ort_status(api, "%s: bias has %lld values, expected %lld (cout padded to 16)", ctx,
                               (long long)n_bias, (long long)(blocks(kr->cout) * 16));
            goto fail;
        }
        kr->bias = p;
    }
    if (kr->has_dw) {
        const int64_t want_dw = blocks(kr->cin) * kr->pre.kh * kr->pre.kw * 16;
        if ((st = sk_ort_constant(api, info, ctx, 6, "dw_weight", SK_ORT_FLOAT, 4, &p, &n_val, &kr->owned[6]))) goto fail;
        kr->pre.w = p;
        if (n_val != want_dw) {
            st = sk_ort_status(api, "%s: dw_weight has %lld values, expected %lld", ctx, (long long)n_val, (long long)want_dw);
            goto fail;
        }
        if (kr->dw_has_bias) {
            if ((st = sk_ort_constant(api, info, ctx, 7, "dw_bias", SK_ORT_FLOAT, 4, &p, &n_bias, &kr->owned[7]))) goto fail;
            if (n_bias != blocks(kr->cin) * 16) {
                st = sk_ort_status(api, "%s: dw_bias has %lld values, expected %lld", ctx, (long long)n_bias,
                                   (long long)(blocks(kr->cin) * 16));
                goto fail;
            }
            kr->pre.bias = p;
        }
    }
    *out = kr;
    return NULL;
fail:
    destroy(kr);
    return st;
}

static OrtStatus *compute_op(void *p, OrtKernelContext *context) {
    const nchwc_kernel *kr = p;
    const OrtApi *api = kr->api;
    const OrtValue *xv = NULL, *sv = NULL;
    OrtStatus *st = SK_ORT(api, KernelContext_GetInput)(context, 0, &xv);
    if (st) return st;
    size_t rank = 0;
    int64_t dims[4];
    if ((st = sk_ort_shape(api, xv, dims, 4, &rank))) return st;
    const int64_t ib = blocks(kr->cin), ob = blocks(kr->cout);
    if (rank != 4 || dims[1] != ib * 16)
        return sk_ort_status(api, "sparsec kernel op %s: X must be [N, %lld, H, W] (NCHWc)", NAME, (long long)(ib * 16));
    const sk_nchwc_dw *g = &kr->in;
    const int64_t kh_span = (int64_t)(g->kh - 1) * g->dh + 1, kw_span = (int64_t)(g->kw - 1) * g->dw + 1;
    const int64_t hp = dims[2] + g->pt + g->pb, wp = dims[3] + g->pl + g->pr;
    if (hp < kh_span || wp < kw_span)
        return sk_ort_status(api, "sparsec kernel op %s: input %lldx%lld too small", NAME, (long long)dims[2],
                             (long long)dims[3]);
    const int64_t ho = (hp - kh_span) / g->sh + 1, wo = (wp - kw_span) / g->sw + 1;
    const int64_t ydims[4] = {dims[0], ob * 16, ho, wo};
    void *x = NULL, *y = NULL, *s = NULL;
    if (kr->has_sum) {
        if ((st = SK_ORT(api, KernelContext_GetInput)(context, 4, &sv))) return st;
        int64_t sd[4];
        size_t sr = 0;
        if (!sv) return sk_ort_status(api, "sparsec kernel op %s: has_sum=1 but no sum input", NAME);
        if ((st = sk_ort_shape(api, sv, sd, 4, &sr))) return st;
        if (sr != 4 || memcmp(sd, ydims, sizeof sd) != 0)
            return sk_ort_status(api, "sparsec kernel op %s: sum must have the output's shape", NAME);
        if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)sv, &s))) return st;
    }
    OrtValue *yv = NULL;
    if ((st = SK_ORT(api, KernelContext_GetOutput)(context, 0, ydims, 4, &yv))) return st;
    if (dims[0] == 0 || ho * wo == 0) return NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)xv, &x))) return st;
    if ((st = SK_ORT(api, GetTensorMutableData)(yv, &y))) return st;
    const int64_t macs = dims[0] * ho * wo * (kr->pairs * 16 + (kr->has_dw ? ib * 16 * kr->pre.kh * kr->pre.kw : 0));
    int64_t limit = kr->cap > 0 ? kr->cap : sk_max_threads(), t = macs / NCHWC_MIN_MACS_PER_THREAD;
    if (t > limit) t = limit;
    const int nth = t < 1 ? 1 : (int)t;
    const int rc = kr->has_dw
        ? sk_nchwc_conv_dw(x, dims[0], ib, dims[2], dims[3], &kr->pre, ob, ho, wo, kr->k, kr->offs, kr->idx, kr->values,
                           kr->bias, s, (int)kr->act, kr->clip_lo, kr->clip_hi, y, SK_ISA_AVX512, nth)
        : sk_nchwc_conv(x, dims[0], ib, dims[2], dims[3], ob, ho, wo, (int)kr->kh, (int)kr->kw,
                                 (int)kr->sh, (int)kr->sw, (int)kr->pads[0], (int)kr->pads[1], (int)kr->pads[2],
                                 (int)kr->pads[3], (int)kr->dh, (int)kr->dw, kr->k, kr->offs, kr->idx, kr->values, kr->bias,
                                 s, (int)kr->act, kr->clip_lo, kr->clip_hi, y, SK_ISA_AVX512, nth);
    if (rc != SK_OK) return sk_ort_status(api, "sparsec kernel op %s: %s", NAME, sk_status_string(rc));
    return NULL;
}

static OrtStatus *SK_ORT_CALL compute(void *p, OrtKernelContext *context) {
    return sk_ort_pool_compute(compute_op, p, context); /* regions on ORT's intra-op pool */
}

static void SK_ORT_CALL kernel_destroy(void *p) { destroy(p); }
static const char *SK_ORT_CALL get_name(const OrtCustomOp *b) { (void)b; return NAME; }
static size_t SK_ORT_CALL input_count(const OrtCustomOp *b) { (void)b; return NCHWC_INPUTS; }
static int SK_ORT_CALL input_type(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i == 1 || i == 5 ? SK_ORT_INT32 : SK_ORT_FLOAT;
}
static int SK_ORT_CALL input_char(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i >= 3 ? SK_ORT_INPUT_OUTPUT_OPTIONAL : SK_ORT_INPUT_OUTPUT_REQUIRED;
}

/* One op per thread cap, initialised under sk_ort_ops.c's registration lock. */
static nchwc_op ops[NCHWC_MAX_CAP + 1];

struct OrtCustomOp *sk_nchwc_conv_custom_op(int cap) {
    if (cap < 0 || cap > NCHWC_MAX_CAP) return NULL;
    nchwc_op *op = &ops[cap];
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
