/* ONNX Runtime custom op "MoEFFN" (domain com.sparsec.kernels), calling sk_moe_ffn.
 *
 *   MoEFFN(X, router_weight, router_bias, w1, b1, w2, b2[, w_up[, w1_meta, w2_meta[, w_up_meta]]])
 *   attrs D, E, F, top_k, activation (0 relu, 1 gelu, 2 gelu_tanh, 3 silu),
 *         gating (0 none, 1 softmax, 2 softmax_all), gated (1: w_up present), optional n, m (N:M experts)
 * Same semantics and weight layout as com.sparsec.MoE (moe_internal.h). With n, m > 0 the
 * experts are N:M-packed: w1, w2, w_up hold the packed values and the *_meta inputs (uint16)
 * the positions, per expert as pack_nm writes them (moe_internal.h); an ungated op then
 * leaves w_up empty. Dense experts are row-major, or with attribute panel = 32 already in
 * the kernel's panel layout (moe_internal.h); row-major ones are packed into it once, at
 * session creation (a copy the kernel owns). The weights must be
 * constant initializers; they are read and checked once at session creation (an aligned
 * copy where ORT's buffer is not 64-byte aligned), so a malformed model fails there with
 * a message naming the node. Threads per call: one per ~1M multiply-adds, at most the
 * session's "sparsec.kernel_threads" cap (as the other kernel ops).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"
#include "sk_internal.h"
#include "sk_ort_abi.h"
#include "sk_ort_pool.h"
#include "sk_ort_util.h"

#define MOE_ORT_MAX_CAP 256
#define MOE_ORT_MAX_RANK 16
#define MOE_INPUTS 11
#define MOE_DENSE_INPUTS 8

typedef struct {
    OrtCustomOp base;
    int cap;
} moe_op;

typedef struct {
    const OrtApi *api;
    sk_moe_weights w;
    int isa, cap;
    void *owned[MOE_INPUTS];
} moe_kernel;

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
               : sk_isa_supported(SK_ISA_NEON) ? SK_ISA_NEON /* scalar dense panels, NEON N:M */
                                               : SK_ISA_SCALAR;
        return 0;
    }
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            if (!sk_isa_supported(i)) break;
            *isa = i;
            return 0;
        }
    snprintf(bad, len, "kernel ISA '%s' ($SPARSEC_KERNEL_ISA) is not available here", name);
    return -1;
}


/* Constant input `index` of element type `type` (float or uint16) with exactly `count`
 * elements (64-byte aligned; copied if needed). */
static OrtStatus *constant(moe_kernel *kr, const OrtKernelInfo *info, const char *ctx,
                           size_t index, const char *what, int want, int64_t count,
                           const void **out) {
    int64_t n = 0;
    OrtStatus *st = sk_ort_constant(kr->api, info, ctx, index, what, want, want == SK_ORT_FLOAT ? sizeof(float) : sizeof(uint16_t),
                                    out, &n, &kr->owned[index]);
    if (st) return st;
    if (n != count)
        return sk_ort_status(kr->api, "%s: %s has %lld elements, expected %lld", ctx, what, (long long)n, (long long)count);
    return NULL;
}

static OrtStatus *weight(moe_kernel *kr, const OrtKernelInfo *info, const char *ctx, size_t index,
                         const char *what, int64_t count, const float **out) {
    return constant(kr, info, ctx, index, what, SK_ORT_FLOAT, count, (const void **)out);
}

static OrtStatus *meta(moe_kernel *kr, const OrtKernelInfo *info, const char *ctx, size_t index,
                       const char *what, int64_t count, const uint16_t **out) {
    return constant(kr, info, ctx, index, what, SK_ORT_UINT16, count, (const void **)out);
}

/* Row-major dense experts [e, k, cols] of input `index` -> the panel layout, owned. */
static OrtStatus *to_panels(moe_kernel *kr, const char *ctx, size_t index, int64_t k, int64_t cols,
                            const float **w) {
    const size_t bytes = (size_t)(kr->w.e * sk_moe_panel_elems(k, cols)) * sizeof(float);
    float *out = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!out) return sk_ort_status(kr->api, "%s: out of memory packing the experts", ctx);
    sk_moe_pack_panels(*w, kr->w.e, k, cols, out);
    free(kr->owned[index]);
    kr->owned[index] = out;
    *w = out;
    return NULL;
}

static void destroy(void *p) {
    moe_kernel *kr = p;
    if (!kr) return;
    for (int i = 0; i < MOE_INPUTS; i++) free(kr->owned[i]);
    free(kr);
}

static OrtStatus *SK_ORT_CALL create(const OrtCustomOp *base, const OrtApi *api,
                                     const OrtKernelInfo *info, void **out) {
    char node[160] = "?", ctx[256], bad[160];
    size_t size = sizeof node;
    OrtStatus *st = SK_ORT(api, KernelInfo_GetNodeName)(info, node, &size);
    if (st) SK_ORT(api, ReleaseStatus)(st);
    snprintf(ctx, sizeof ctx, "sparsec kernel op MoEFFN (node '%s')", st ? "?" : node);
    *out = NULL;
    moe_kernel *kr = calloc(1, sizeof *kr);
    if (!kr) return sk_ort_status(api, "%s: out of memory", ctx);
    kr->api = api;
    kr->cap = ((const moe_op *)base)->cap;
    if (pick_isa(&kr->isa, bad, sizeof bad)) {
        destroy(kr);
        return sk_ort_status(api, "%s: %s", ctx, bad);
    }
    int64_t d = 0, e = 0, f = 0, k = 0, act = 0, gating = 0, gated = 0;
    if ((st = sk_ort_attr_int(api, info, ctx, "D", &d)) || (st = sk_ort_attr_int(api, info, ctx, "E", &e)) ||
        (st = sk_ort_attr_int(api, info, ctx, "F", &f)) || (st = sk_ort_attr_int(api, info, ctx, "top_k", &k)) ||
        (st = sk_ort_attr_int(api, info, ctx, "activation", &act)) ||
        (st = sk_ort_attr_int(api, info, ctx, "gating", &gating)) || (st = sk_ort_attr_int(api, info, ctx, "gated", &gated)))
        goto fail;
    const int64_t nm_n = sk_ort_attr_int_or(api, info, "n", 0), nm_m = sk_ort_attr_int_or(api, info, "m", 0);
    sk_moe_weights *w = &kr->w;
    w->d = d, w->e = e, w->f = f, w->top_k = (int)k, w->act = (int)act, w->gating = (int)gating;
    if (k < 1 || k > e || act < 0 || act >= MOE_ACTS || gating < 0 || gating > 2 || d <= 0 ||
        e <= 0 || e > 4096 || f <= 0 || d > INT32_MAX || f > INT32_MAX) {
        st = sk_ort_status(api, "%s: attributes out of range (D=%lld E=%lld F=%lld top_k=%lld)", ctx,
                    (long long)d, (long long)e, (long long)f, (long long)k);
        goto fail;
    }
    if ((st = weight(kr, info, ctx, 1, "router_weight", d * e, &w->rw)) ||
        (st = weight(kr, info, ctx, 2, "router_bias", e, &w->rb)))
        goto fail;
    if (nm_n || nm_m) {
        const int words = sk_nm_meta_words((int)nm_m);
        if (words == 0 || nm_n < 1 || nm_n > nm_m || d % nm_m || f % nm_m) {
            st = sk_ort_status(api, "%s: unsupported pattern %lld:%lld for D=%lld F=%lld (N in [1, M], "
                               "M in {4, 8, 16} dividing D and F)", ctx, (long long)nm_n,
                               (long long)nm_m, (long long)d, (long long)f);
            goto fail;
        }
        w->nm_n = (int)nm_n, w->nm_m = (int)nm_m;
        const int64_t r1 = e * sk_moe_nm_records(d, f, w->nm_n, w->nm_m);
        const int64_t r2 = e * sk_moe_nm_records(f, d, w->nm_n, w->nm_m);
        if ((st = weight(kr, info, ctx, 3, "w1 (packed values)", r1 * SK_TILE, &w->v1)) ||
            (st = weight(kr, info, ctx, 5, "w2 (packed values)", r2 * SK_TILE, &w->v2)) ||
            (st = meta(kr, info, ctx, 8, "w1_meta", r1 * words, &w->m1)) ||
            (st = meta(kr, info, ctx, 9, "w2_meta", r2 * words, &w->m2)) ||
            (gated && ((st = weight(kr, info, ctx, 7, "w_up (packed values)", r1 * SK_TILE, &w->vup)) ||
                       (st = meta(kr, info, ctx, 10, "w_up_meta", r1 * words, &w->mup)))))
            goto fail;
    } else {
        const int64_t panel = sk_ort_attr_int_or(api, info, "panel", 0);
        if (panel != 0 && panel != SK_MOE_NR) {
            st = sk_ort_status(api, "%s: panel=%lld (0: row-major experts, %d: the panel layout)", ctx,
                               (long long)panel, SK_MOE_NR);
            goto fail;
        }
        /* elements of one projection, [d, f] or [f, d], in the given layout */
        const int64_t n1 = panel ? sk_moe_panel_elems(d, f) : d * f, n2 = panel ? sk_moe_panel_elems(f, d) : f * d;
        if ((st = weight(kr, info, ctx, 3, "w1", e * n1, &w->w1)) ||
            (st = weight(kr, info, ctx, 5, "w2", e * n2, &w->w2)) ||
            (gated && (st = weight(kr, info, ctx, 7, "w_up", e * n1, &w->wup))))
            goto fail;
        if (!panel && ((st = to_panels(kr, ctx, 3, d, f, &w->w1)) || (st = to_panels(kr, ctx, 5, f, d, &w->w2)) ||
                       (gated && (st = to_panels(kr, ctx, 7, d, f, &w->wup)))))
            goto fail;
        w->panel = SK_MOE_NR;
    }
    if ((st = weight(kr, info, ctx, 4, "b1", e * f, &w->b1)) ||
        (st = weight(kr, info, ctx, 6, "b2", d, &w->b2)))
        goto fail;
    if (sk_moe_check(w) != SK_OK) {
        st = sk_ort_status(api, "%s: invalid weights", ctx);
        goto fail;
    }
    const int64_t bad_expert = w->nm_n ? sk_moe_nm_bad_expert(w) : -1;
    if (bad_expert >= 0) {
        st = sk_ort_status(api, "%s: N:M positions within a group are not strictly increasing "
                           "(expert %lld)", ctx, (long long)bad_expert);
        goto fail;
    }
    *out = kr;
    return NULL;
fail:
    destroy(kr);
    return st;
}

static OrtStatus *compute_op(void *p, OrtKernelContext *context) {
    const moe_kernel *kr = p;
    const OrtApi *api = kr->api;
    const OrtValue *xv = NULL;
    OrtStatus *st = SK_ORT(api, KernelContext_GetInput)(context, 0, &xv);
    if (st) return st;
    size_t rank = 0;
    int64_t dims[MOE_ORT_MAX_RANK];
    if ((st = sk_ort_shape(api, xv, dims, MOE_ORT_MAX_RANK, &rank))) return st;
    if (rank < 1 || rank > MOE_ORT_MAX_RANK)
        return sk_ort_status(api, "sparsec kernel op MoEFFN: X has rank %zu", rank);
    if (dims[rank - 1] != kr->w.d)
        return sk_ort_status(api, "sparsec kernel op MoEFFN: X has %lld features, D=%lld",
                      (long long)dims[rank - 1], (long long)kr->w.d);
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < rank; i++) rows *= dims[i];
    OrtValue *yv = NULL;
    if ((st = SK_ORT(api, KernelContext_GetOutput)(context, 0, dims, rank, &yv))) return st;
    if (rows == 0) return NULL;
    void *x = NULL, *y = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)xv, &x))) return st;
    if ((st = SK_ORT(api, GetTensorMutableData)(yv, &y))) return st;
    const int threads = kr->cap > 0 ? kr->cap : sk_max_threads();
    const int rc = sk_moe_ffn(&kr->w, x, rows, y, kr->isa, threads);
    if (rc != SK_OK) return sk_ort_status(api, "sparsec kernel op MoEFFN: %s", sk_status_string(rc));
    return NULL;
}

static OrtStatus *SK_ORT_CALL compute(void *p, OrtKernelContext *context) {
    return sk_ort_pool_compute(compute_op, p, context); /* regions on ORT's intra-op pool */
}

static void SK_ORT_CALL kernel_destroy(void *p) { destroy(p); }
static const char *SK_ORT_CALL get_name(const OrtCustomOp *b) { (void)b; return "MoEFFN"; }
static size_t SK_ORT_CALL input_count(const OrtCustomOp *b) { (void)b; return MOE_INPUTS; }
static int SK_ORT_CALL input_type(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i >= MOE_DENSE_INPUTS ? SK_ORT_UINT16 : SK_ORT_FLOAT; /* the packed experts' meta */
}
static int SK_ORT_CALL input_char(const OrtCustomOp *b, size_t i) {
    (void)b;
    return i >= MOE_DENSE_INPUTS - 1 ? SK_ORT_INPUT_OUTPUT_OPTIONAL : SK_ORT_INPUT_OUTPUT_REQUIRED;
}

/* One op per thread cap, initialised under sk_ort_ops.c's registration lock. */
static moe_op ops[MOE_ORT_MAX_CAP + 1];

struct OrtCustomOp *sk_moe_custom_op(int cap) {
    if (cap < 0 || cap > MOE_ORT_MAX_CAP) return NULL;
    moe_op *op = &ops[cap];
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
