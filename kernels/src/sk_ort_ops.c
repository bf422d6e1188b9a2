/* ONNX Runtime custom ops calling the sparse kernels directly (no Python on the call path).
 *
 * Domain "com.sparsec.kernels", opset 1, two ops computing Y[..., N] = X[..., K] @ W:
 *   NMSparseMatMul(X, values, meta[, bias])              attrs n, m, K, N   (W packed by pack_nm)
 *   BlockSparseMatMul(X, tile_ptr, kidx, values[, bias]) attrs bk, K, N     (W packed by pack_block)
 * With attribute has_bias=1 the constant [N] input `bias` is added to every row of Y; with
 * max_threads=T (optional) one call uses at most T threads (below the session's cap).
 * The packed weights must be constant initializers. Each kernel reads them once when the
 * session is created (in place when 64-byte aligned, else an aligned copy), checks them
 * (lengths, shapes, N:M positions, block pointers and rows; the same checks as the Python
 * loaders, and the C entry points' own) and fails session creation with a message naming
 * the node if anything is wrong. At run time it calls sk_nm_matmul / sk_block_matmul on ORT's
 * input and output buffers.
 *
 * Threads per call: one per ~1M multiply-adds (as sparsec.kernels.matmul.pick_threads), at
 * most the session config entry "sparsec.kernel_threads" (default 1; 0 = all cores). It is
 * read when the library is registered with a session's options, so set it before that.
 * $SPARSEC_KERNEL_ISA forces an instruction set, as for the Python entry points.
 *
 * ONNX Runtime loads this shared library (the same file as the ctypes kernels) through
 * SessionOptions.register_custom_ops_library and calls RegisterCustomOps below.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"
#include "sk_internal.h"
#include "sk_ort_abi.h"
#include "sk_ort_pool.h"
#include "sk_ort_util.h"

OrtStatus *sk_attn_ort_add(const OrtApi *api, OrtCustomOpDomain *domain, int cap);
struct OrtCustomOp *sk_conv_custom_op(int cap); /* SparseConv (conv_ort_op.c) */
struct OrtCustomOp *sk_nchwc_conv_custom_op(int cap); /* SparseConvNchwc (nchwc_conv_ort_op.c) */

#define SK_ORT_DOMAIN "com.sparsec.kernels"
#define SK_ORT_THREADS_KEY "sparsec.kernel_threads"
#define SK_ORT_DEFAULT_CAP 1
#define SK_ORT_MAX_CAP 256
#define SK_ORT_MAX_RANK 16
#define SK_ALIGN 64
/* A second thread per 64K multiply-adds: on ORT's spinning pool (sk_ort_pool.c) a region
 * costs no futex wake, and a 768x768 2:4 GEMV runs 1.7x faster on 2 threads than on 1
 * (27.8 vs 46.1 us; it was held to 1 thread below 1M MACs when each region woke the kernels'
 * own pool). The tuner still picks the 1-thread variant where that measures faster. */
#ifndef SK_MIN_MACS_PER_THREAD /* overridable at build time, for experiments */
#define SK_MIN_MACS_PER_THREAD (1 << 16)
#endif

#if defined(__GNUC__)
#define SK_EXPORT __attribute__((visibility("default")))
#else
#define SK_EXPORT
#endif

enum { OP_NM = 0, OP_BLOCK = 1, OP_KINDS = 2 };
static const char *const op_names[OP_KINDS] = {"NMSparseMatMul", "BlockSparseMatMul"};

/* One OrtCustomOp per (kind, thread cap); ORT hands `base` back to the callbacks. */
typedef struct {
    OrtCustomOp base;
    int kind;
    int cap; /* most threads per call; 0 = all cores */
} sk_op;

typedef struct {
    const OrtApi *api;
    int kind, n, m, bk, isa, cap;
    int64_t k, cols;
    const float *values;
    const uint16_t *meta;
    const int32_t *tile_ptr, *kidx;
    int64_t values_len, meta_len, tile_ptr_len, nblocks;
    const float *bias; /* optional [N] bias (attribute has_bias=1), added after the product */
    void *owned[4]; /* aligned copies of unaligned initializers */
} sk_kernel;

/* ------------------------------------------------------------------ helpers */

static void release(const OrtApi *api, OrtStatus *st) {
    if (st) SK_ORT(api, ReleaseStatus)(st);
}

/* A status error from ORT itself, re-worded with our context (and the original released). */
static OrtStatus *wrap(const OrtApi *api, OrtStatus *st, const char *ctx, const char *what) {
    OrtStatus *out = sk_ort_status(api, "%s: %s: %s", ctx, what, SK_ORT(api, GetErrorMessage)(st));
    release(api, st);
    return out;
}

static int isa_from_env(int *isa, char *bad, size_t bad_len) {
    static const char *const names[] = {"scalar", "avx2", "avx512", "neon"};
    static const int preference[] = {SK_ISA_AVX512, SK_ISA_NEON, SK_ISA_AVX2, SK_ISA_SCALAR};
    const char *env = getenv("SPARSEC_KERNEL_ISA");
    char name[16] = {0};
    size_t len = 0;
    if (env) {
        while (isspace((unsigned char)*env)) env++;
        for (; env[len] && !isspace((unsigned char)env[len]) && len + 1 < sizeof name; len++)
            name[len] = (char)tolower((unsigned char)env[len]);
    }
    if (len == 0) {
        for (size_t i = 0; i < sizeof preference / sizeof *preference; i++)
            if (sk_isa_supported(preference[i])) {
                *isa = preference[i];
                return 0;
            }
        *isa = SK_ISA_SCALAR;
        return 0;
    }
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *isa = i;
            if (sk_isa_supported(i)) return 0;
            snprintf(bad, bad_len, "kernel ISA '%s' ($SPARSEC_KERNEL_ISA) is not available here",
                     name);
            return -1;
        }
    snprintf(bad, bad_len, "unknown kernel ISA '%s' in $SPARSEC_KERNEL_ISA", name);
    return -1;
}

/* Constant input `index`: its data (aligned; copied if needed) and element count. */
static OrtStatus *get_const(sk_kernel *kr, const OrtKernelInfo *info, const char *ctx,
                            size_t index, const char *what, int elem_type, size_t elem_size,
                            const void **data, int64_t *count) {
    const OrtApi *api = kr->api;
    int is_const = 0;
    const OrtValue *value = NULL;
    OrtStatus *st = SK_ORT(api, KernelInfoGetConstantInput_tensor)(info, index, &is_const, &value);
    if (st) return wrap(api, st, ctx, what);
    if (!is_const || !value)
        return sk_ort_status(api, "%s: input %zu (%s) must be a constant initializer", ctx, index,
                           what);
    OrtTensorTypeAndShapeInfo *ti = NULL;
    if ((st = SK_ORT(api, GetTensorTypeAndShape)(value, &ti))) return wrap(api, st, ctx, what);
    int type = 0;
    size_t n = 0;
    st = SK_ORT(api, GetTensorElementType)(ti, &type);
    if (!st) st = SK_ORT(api, GetTensorShapeElementCount)(ti, &n);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    if (st) return wrap(api, st, ctx, what);
    if (type != elem_type)
        return sk_ort_status(api, "%s: %s has ONNX element type %d, expected %d", ctx, what, type,
                           elem_type);
    void *p = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)value, &p)))
        return wrap(api, st, ctx, what);
    *count = (int64_t)n;
    *data = p;
    if (n > 0 && ((uintptr_t)p % SK_ALIGN) != 0) {
        const size_t bytes = n * elem_size;
        void *copy = aligned_alloc(SK_ALIGN, (bytes + SK_ALIGN - 1) / SK_ALIGN * SK_ALIGN);
        if (!copy) return sk_ort_status(api, "%s: out of memory copying %s", ctx, what);
        memcpy(copy, p, bytes);
        for (int i = 0; i < 4; i++)
            if (!kr->owned[i]) {
                kr->owned[i] = copy;
                break;
            }
        *data = copy;
    }
    return NULL;
}

static void destroy(void *p) {
    sk_kernel *kr = p;
    if (!kr) return;
    for (int i = 0; i < 4; i++) free(kr->owned[i]);
    free(kr);
}

/* ------------------------------------------------------------------ validation */

static OrtStatus *check_nm(sk_kernel *kr, const char *ctx) {
    const OrtApi *api = kr->api;
    const int n = kr->n, m = kr->m, words = sk_nm_meta_words(m);
    if (words == 0 || n < 1 || n > m)
        return sk_ort_status(api, "%s: unsupported pattern %d:%d (N in [1, M], M in {4, 8, 16})",
                           ctx, n, m);
    if (kr->k <= 0 || kr->cols <= 0 || kr->k % m)
        return sk_ort_status(api, "%s: K=%lld must be a positive multiple of M=%d; N=%lld > 0", ctx,
                           (long long)kr->k, m, (long long)kr->cols);
    const int64_t tiles = sk_ceil_div(kr->cols, SK_TILE), groups = kr->k / m;
    const int64_t records = tiles * groups * n;
    if (kr->values_len != records * SK_TILE)
        return sk_ort_status(api, "%s: values has %lld elements, expected %lld", ctx,
                           (long long)kr->values_len, (long long)(records * SK_TILE));
    if (kr->meta_len != records * words)
        return sk_ort_status(api, "%s: meta has %lld elements, expected %lld", ctx,
                           (long long)kr->meta_len, (long long)(records * words));
    /* Positions strictly increasing within a group: a corrupted record cannot alias two
     * slots onto one input (the canonical form pack_nm writes). */
    if (n > 1)
        for (int64_t tg = 0; tg < tiles * groups; tg++)
            for (int j = 1; j < n; j++) {
                const uint16_t *prev = kr->meta + (tg * n + j - 1) * words;
                const uint16_t *cur = prev + words;
                for (int lane = 0; lane < SK_TILE; lane++)
                    if (sk_nm_pos(m, cur, lane) <= sk_nm_pos(m, prev, lane))
                        return sk_ort_status(api,
                                           "%s: N:M positions within a group are not strictly "
                                           "increasing (tile %lld, group %lld)",
                                           ctx, (long long)(tg / groups), (long long)(tg % groups));
            }
    /* The C entry point's own checks, with no rows to compute. */
    float dummy = 0.0f;
    const int rc = sk_nm_matmul(&dummy, kr->k, 0, kr->k, kr->cols, n, m, kr->values,
                                kr->values_len, kr->meta, kr->meta_len, &dummy, kr->cols, kr->isa, 1);
    if (rc != SK_OK) return sk_ort_status(api, "%s: %s", ctx, sk_status_string(rc));
    return NULL;
}

static OrtStatus *check_block(sk_kernel *kr, const char *ctx) {
    const OrtApi *api = kr->api;
    /* As pack_block: bk in {1, 2, 4, 8, 16} and a divisor of K. */
    if (kr->bk < 1 || kr->bk > 16 || (kr->bk & (kr->bk - 1)) != 0 || kr->k % kr->bk != 0 ||
        kr->cols <= 0)
        return sk_ort_status(api,
                           "%s: unsupported block height bk=%d for K=%lld, N=%lld (bk in {1, 2, "
                           "4, 8, 16} dividing K)",
                           ctx, kr->bk, (long long)kr->k, (long long)kr->cols);
    const int64_t tiles = sk_ceil_div(kr->cols, SK_TILE);
    if (kr->tile_ptr_len != tiles + 1)
        return sk_ort_status(api, "%s: tile_ptr has %lld entries, expected %lld", ctx,
                           (long long)kr->tile_ptr_len, (long long)(tiles + 1));
    if (kr->values_len != kr->nblocks * kr->bk * SK_TILE)
        return sk_ort_status(api, "%s: values has %lld elements, expected %lld", ctx,
                           (long long)kr->values_len, (long long)(kr->nblocks * kr->bk * SK_TILE));
    float dummy = 0.0f;
    const int rc = sk_block_matmul(&dummy, kr->k, 0, kr->k, kr->cols, kr->bk, kr->tile_ptr,
                                   kr->tile_ptr_len, kr->kidx, kr->nblocks, kr->values,
                                   kr->values_len, &dummy, kr->cols, kr->isa, 1);
    if (rc == SK_ERR_INDEX)
        return sk_ort_status(api,
                           "%s: tile_ptr must rise from 0 to the number of blocks and block rows "
                           "lie in [0, K-bk]",
                           ctx);
    if (rc != SK_OK) return sk_ort_status(api, "%s: %s", ctx, sk_status_string(rc));
    /* The blocks of a tile rise by at least bk rows (the canonical form pack_block writes):
     * overlapping or repeated blocks would add their rows twice. tile_ptr is valid here. */
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t b = (int64_t)kr->tile_ptr[t] + 1; b < kr->tile_ptr[t + 1]; b++)
            if ((int64_t)kr->kidx[b] < (int64_t)kr->kidx[b - 1] + kr->bk)
                return sk_ort_status(api,
                                   "%s: block rows of tile %lld overlap or are not increasing "
                                   "(block %lld)",
                                   ctx, (long long)t, (long long)b);
    return NULL;
}

/* ------------------------------------------------------------------ kernel */

/* Index of the optional bias input: after the packed weights. */
static size_t bias_input(int kind) { return kind == OP_NM ? 3 : 4; }

static OrtStatus *SK_ORT_CALL create_kernel(const OrtCustomOp *base, const OrtApi *api,
                                            const OrtKernelInfo *info, void **out) {
    const sk_op *op = (const sk_op *)base;
    char node[160] = "?", ctx[256];
    size_t size = sizeof node;
    OrtStatus *st = SK_ORT(api, KernelInfo_GetNodeName)(info, node, &size);
    if (st) {
        release(api, st);
        snprintf(node, sizeof node, "?");
    }
    snprintf(ctx, sizeof ctx, "sparsec kernel op %s (node '%s')", op_names[op->kind], node);
    *out = NULL;

    sk_kernel *kr = calloc(1, sizeof *kr);
    if (!kr) return sk_ort_status(api, "%s: out of memory", ctx);
    kr->api = api;
    kr->kind = op->kind;
    kr->cap = op->cap;
    char bad[160];
    if (isa_from_env(&kr->isa, bad, sizeof bad) != 0) {
        destroy(kr);
        return sk_ort_status(api, "%s: %s", ctx, bad);
    }
    int64_t a = 0, b = 0, k = 0, cols = 0;
    if (kr->kind == OP_NM) {
        if ((st = sk_ort_attr_int(api, info, ctx, "n", &a)) || (st = sk_ort_attr_int(api, info, ctx, "m", &b)))
            goto fail;
    } else if ((st = sk_ort_attr_int(api, info, ctx, "bk", &a))) {
        goto fail;
    }
    if ((st = sk_ort_attr_int(api, info, ctx, "K", &k)) || (st = sk_ort_attr_int(api, info, ctx, "N", &cols)))
        goto fail;
    if (a < 1 || a > 16 || b < 0 || b > 16 || k <= 0 || cols <= 0 || k > INT32_MAX ||
        cols > INT32_MAX) {
        st = sk_ort_status(api, "%s: attributes out of range", ctx);
        goto fail;
    }
    kr->k = k;
    kr->cols = cols;
    const void *p = NULL;
    if (kr->kind == OP_NM) {
        kr->n = (int)a;
        kr->m = (int)b;
        if ((st = get_const(kr, info, ctx, 1, "values", SK_ORT_FLOAT, 4, &p, &kr->values_len)))
            goto fail;
        kr->values = p;
        if ((st = get_const(kr, info, ctx, 2, "meta", SK_ORT_UINT16, 2, &p, &kr->meta_len)))
            goto fail;
        kr->meta = p;
        if ((st = check_nm(kr, ctx))) goto fail;
    } else {
        kr->bk = (int)a;
        if ((st = get_const(kr, info, ctx, 1, "tile_ptr", SK_ORT_INT32, 4, &p, &kr->tile_ptr_len)))
            goto fail;
        kr->tile_ptr = p;
        if ((st = get_const(kr, info, ctx, 2, "kidx", SK_ORT_INT32, 4, &p, &kr->nblocks)))
            goto fail;
        kr->kidx = p;
        if ((st = get_const(kr, info, ctx, 3, "values", SK_ORT_FLOAT, 4, &p, &kr->values_len)))
            goto fail;
        kr->values = p;
        if ((st = check_block(kr, ctx))) goto fail;
    }
    /* Optional per-node cap on threads (attribute max_threads, chosen per layer by the tuner:
     * on a busy or small machine a one-thread call can beat waking a worker); 0 or absent:
     * the session's cap. */
    const int64_t max_threads = sk_ort_attr_int_or(api, info, "max_threads", 0);
    if (max_threads < 0 || max_threads > SK_ORT_MAX_CAP) {
        st = sk_ort_status(api, "%s: max_threads=%lld out of range 0..%d", ctx, (long long)max_threads,
                           SK_ORT_MAX_CAP);
        goto fail;
    }
    if (max_threads > 0 && (kr->cap == 0 || max_threads < kr->cap)) kr->cap = (int)max_threads;
    /* Optional bias (the layer's Gemm C or the Add after its MatMul): saves an ORT Add per
     * layer, which costs more in dispatch than the adds themselves for batch-1 decoding. */
    const int64_t has_bias = sk_ort_attr_int_or(api, info, "has_bias", 0);
    if (has_bias) {
        int64_t len = 0;
        if ((st = get_const(kr, info, ctx, bias_input(kr->kind), "bias", SK_ORT_FLOAT, 4, &p, &len)))
            goto fail;
        if (len != cols) {
            st = sk_ort_status(api, "%s: bias has %lld values, expected N=%lld", ctx, (long long)len,
                             (long long)cols);
            goto fail;
        }
        kr->bias = p;
    }
    *out = kr;
    return NULL;
fail:
    destroy(kr);
    return st;
}

static int pick_threads(const sk_kernel *kr, int64_t rows) {
    const int64_t macs = rows * kr->values_len; /* as pick_threads(rows * values.size) */
    int64_t limit = kr->cap > 0 ? kr->cap : sk_max_threads();
    int64_t t = macs / SK_MIN_MACS_PER_THREAD;
    if (t > limit) t = limit;
    return t < 1 ? 1 : (int)t;
}

static OrtStatus *compute_op(void *p, OrtKernelContext *context) {
    const sk_kernel *kr = p;
    const OrtApi *api = kr->api;
    const OrtValue *xv = NULL;
    OrtStatus *st = SK_ORT(api, KernelContext_GetInput)(context, 0, &xv);
    if (st) return st;
    size_t rank = 0;
    int64_t dims[SK_ORT_MAX_RANK];
    if ((st = sk_ort_shape(api, xv, dims, SK_ORT_MAX_RANK, &rank))) return st;
    if (rank < 1 || rank > SK_ORT_MAX_RANK)
        return sk_ort_status(api, "sparsec kernel op %s: X has rank %zu, expected 1..%d",
                             op_names[kr->kind], rank, SK_ORT_MAX_RANK);
    if (dims[rank - 1] != kr->k)
        return sk_ort_status(api, "sparsec kernel op %s: X has %lld columns, the weight K=%lld",
                           op_names[kr->kind], (long long)dims[rank - 1], (long long)kr->k);
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < rank; i++) rows *= dims[i];
    dims[rank - 1] = kr->cols;
    OrtValue *yv = NULL;
    if ((st = SK_ORT(api, KernelContext_GetOutput)(context, 0, dims, rank, &yv))) return st;
    if (rows == 0) return NULL;
    void *x = NULL, *y = NULL;
    if ((st = SK_ORT(api, GetTensorMutableData)((OrtValue *)xv, &x))) return st;
    if ((st = SK_ORT(api, GetTensorMutableData)(yv, &y))) return st;
    const int threads = pick_threads(kr, rows);
    int rc;
    if (kr->kind == OP_NM) /* the bias goes in as y is stored (sk_nm_matmul_bias) */
        rc = sk_nm_matmul_bias(x, kr->k, rows, kr->k, kr->cols, kr->n, kr->m, kr->values,
                               kr->values_len, kr->meta, kr->meta_len, kr->bias, y, kr->cols,
                               kr->isa, threads);
    else
        rc = sk_block_matmul(x, kr->k, rows, kr->k, kr->cols, kr->bk, kr->tile_ptr,
                             kr->tile_ptr_len, kr->kidx, kr->nblocks, kr->values, kr->values_len,
                             y, kr->cols, kr->isa, threads);
    if (rc != SK_OK)
        return sk_ort_status(api, "sparsec kernel op %s: %s", op_names[kr->kind],
                           sk_status_string(rc));
    if (kr->bias && kr->kind != OP_NM) {
        float *yr = y;
        for (int64_t r = 0; r < rows; r++, yr += kr->cols)
            for (int64_t c = 0; c < kr->cols; c++) yr[c] += kr->bias[c];
    }
    return NULL;
}

static OrtStatus *SK_ORT_CALL compute(void *p, OrtKernelContext *context) {
    return sk_ort_pool_compute(compute_op, p, context); /* regions on ORT's intra-op pool */
}

static void SK_ORT_CALL kernel_destroy(void *p) { destroy(p); }

/* ------------------------------------------------------------------ op description */

static const char *SK_ORT_CALL get_name(const OrtCustomOp *base) {
    return op_names[((const sk_op *)base)->kind];
}
static const char *SK_ORT_CALL get_ep(const OrtCustomOp *base) {
    (void)base;
    return "CPUExecutionProvider";
}
static size_t SK_ORT_CALL input_count(const OrtCustomOp *base) {
    return bias_input(((const sk_op *)base)->kind) + 1;
}
static int SK_ORT_CALL input_type(const OrtCustomOp *base, size_t index) {
    if (((const sk_op *)base)->kind == OP_NM)
        return index == 2 ? SK_ORT_UINT16 : SK_ORT_FLOAT;
    return index == 1 || index == 2 ? SK_ORT_INT32 : SK_ORT_FLOAT;
}
static size_t SK_ORT_CALL output_count(const OrtCustomOp *base) {
    (void)base;
    return 1;
}
static int SK_ORT_CALL output_type(const OrtCustomOp *base, size_t index) {
    (void)base;
    (void)index;
    return SK_ORT_FLOAT;
}
static int SK_ORT_CALL io_required(const OrtCustomOp *base, size_t index) {
    (void)base;
    (void)index;
    return SK_ORT_INPUT_OUTPUT_REQUIRED;
}
static int SK_ORT_CALL input_char(const OrtCustomOp *base, size_t index) {
    return index == bias_input(((const sk_op *)base)->kind) ? SK_ORT_INPUT_OUTPUT_OPTIONAL
                                                            : SK_ORT_INPUT_OUTPUT_REQUIRED;
}
static int SK_ORT_CALL mem_default(const OrtCustomOp *base, size_t index) {
    (void)base;
    (void)index;
    return SK_ORT_MEM_TYPE_DEFAULT;
}
static int SK_ORT_CALL one(const OrtCustomOp *base) {
    (void)base;
    return 1;
}

static void init_op(sk_op *op, int kind, int cap) {
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->cap = cap;
    OrtCustomOp *b = &op->base;
    b->version = SK_ORT_API_VERSION;
    b->GetName = get_name;
    b->GetExecutionProviderType = get_ep;
    b->GetInputType = input_type;
    b->GetInputTypeCount = input_count;
    b->GetOutputType = output_type;
    b->GetOutputTypeCount = output_count;
    b->KernelDestroy = kernel_destroy;
    b->GetInputCharacteristic = input_char;
    b->GetOutputCharacteristic = io_required;
    b->GetInputMemoryType = mem_default;
    b->GetVariadicInputMinArity = one;
    b->GetVariadicInputHomogeneity = one;
    b->GetVariadicOutputMinArity = one;
    b->GetVariadicOutputHomogeneity = one;
    /* CreateKernel/KernelCompute stay NULL: ORT >= 1.16 then calls the V2 callbacks. */
    b->CreateKernelV2 = create_kernel;
    b->KernelComputeV2 = compute;
}

/* ------------------------------------------------------------------ registration */

/* One domain per thread cap, created on first use and kept for the life of the process
 * (ORT requires a domain to outlive every session using it; this library is never
 * unloaded while the ctypes side holds it). */
static pthread_mutex_t domains_lock = PTHREAD_MUTEX_INITIALIZER;
static OrtCustomOpDomain *domains[SK_ORT_MAX_CAP + 1];
static sk_op ops[SK_ORT_MAX_CAP + 1][OP_KINDS];

static OrtStatus *read_cap(const OrtApi *api, const OrtSessionOptions *options, int *cap) {
    int has = 0;
    OrtStatus *st = SK_ORT(api, HasSessionConfigEntry)(options, SK_ORT_THREADS_KEY, &has);
    if (st) return st;
    *cap = SK_ORT_DEFAULT_CAP;
    if (!has) return NULL;
    char value[32];
    size_t size = sizeof value;
    if ((st = SK_ORT(api, GetSessionConfigEntry)(options, SK_ORT_THREADS_KEY, value, &size))) {
        release(api, st);
        return sk_ort_status(api, "sparsec kernels: session config '%s' is too long",
                           SK_ORT_THREADS_KEY);
    }
    char *end = NULL;
    const long v = strtol(value, &end, 10);
    if (end == value || *end != '\0' || v < 0 || v > SK_ORT_MAX_CAP)
        return sk_ort_status(api,
                           "sparsec kernels: session config '%s' = '%s' is not an integer in "
                           "[0, %d] (0 = all cores)",
                           SK_ORT_THREADS_KEY, value, SK_ORT_MAX_CAP);
    *cap = (int)v;
    return NULL;
}

/* What this library is, for loaders that check an artifact's copy before registering it
 * (sparsec.runtime compares it with the artifact's manifest) and for people (`strings`).
 * ops-abi counts incompatible changes to the com.sparsec.kernels ops (inputs, attributes,
 * packed formats): a model compiled for one ops-abi needs a library of the same. */
#define SK_OPS_ABI "1"
#if defined(__x86_64__) || defined(_M_X64)
#define SK_ARCH "x86_64"
#elif defined(__aarch64__) || defined(_M_ARM64)
#define SK_ARCH "aarch64"
#else
#define SK_ARCH "unknown"
#endif
_Static_assert(SK_ORT_API_VERSION == 16u, "update the ort-api field of sparsec_kernels_info");
SK_EXPORT const char *sparsec_kernels_info(void) {
    return "sparsec-kernels ops-abi=" SK_OPS_ABI " ort-api=16 domain=" SK_ORT_DOMAIN
           " arch=" SK_ARCH;
}

SK_EXPORT OrtStatus *SK_ORT_CALL RegisterCustomOps(OrtSessionOptions *options,
                                                   const OrtApiBase *base) {
    const OrtApi *api = base->GetApi(SK_ORT_API_VERSION);
    if (!api) {
        /* An older runtime: refuse with a status (CreateStatus is slot 0 in every version),
         * before touching any function it may lack. */
        const OrtApi *v1 = base->GetApi(1);
        if (v1)
            return sk_ort_status(v1,
                                 "sparsec kernels (libsparsec_kernels) need ONNX Runtime >= 1.16 "
                                 "(C API version %u); this runtime is %s",
                                 SK_ORT_API_VERSION, base->GetVersionString());
        /* No API table at all: nothing to build a status with. Say so; the session then
         * fails on the unregistered ops with ONNX Runtime's own message. */
        fprintf(stderr, "sparsec kernels: ONNX Runtime %s offers no C API table; ops not registered\n",
                base->GetVersionString());
        return NULL;
    }
    sk_ort_pool_init(base);
    int cap = SK_ORT_DEFAULT_CAP;
    OrtStatus *st = read_cap(api, options, &cap);
    if (st) return st;
    pthread_mutex_lock(&domains_lock);
    if (!domains[cap]) {
        OrtCustomOpDomain *d = NULL;
        st = SK_ORT(api, CreateCustomOpDomain)(SK_ORT_DOMAIN, &d);
        for (int kind = 0; !st && kind < OP_KINDS; kind++) {
            init_op(&ops[cap][kind], kind, cap);
            st = SK_ORT(api, CustomOpDomain_Add)(d, &ops[cap][kind].base);
        }
        if (!st) st = sk_attn_ort_add(api, d, cap); /* SparseAttention (attn_ort_op.c) */
        if (!st) st = SK_ORT(api, CustomOpDomain_Add)(d, sk_moe_custom_op(cap)); /* moe_ort.c */
        if (!st) st = SK_ORT(api, CustomOpDomain_Add)(d, sk_conv_custom_op(cap));
        if (!st) st = SK_ORT(api, CustomOpDomain_Add)(d, sk_nchwc_conv_custom_op(cap));
        if (!st) domains[cap] = d; /* on failure the half-built domain leaks (never happens) */
    }
    OrtCustomOpDomain *domain = domains[cap];
    pthread_mutex_unlock(&domains_lock);
    if (st) return st;
    return SK_ORT(api, AddCustomOpDomain)(options, domain);
}

/* Test hook: checks the OrtApi slot numbers of sk_ort_abi.h against a runtime (given its
 * OrtGetApiBase()). Returns 0 and the runtime's version in `msg` if they agree. */
SK_EXPORT int sk_ort_abi_selftest(const OrtApiBase *base, char *msg, size_t len) {
    const OrtApi *api = base->GetApi(SK_ORT_API_VERSION);
    if (!api) {
        snprintf(msg, len, "runtime %s predates API version %u", base->GetVersionString(),
                 SK_ORT_API_VERSION);
        return 1;
    }
    const char *build = SK_ORT(api, GetBuildInfoString)();
    if (!build || strncmp(build, "ORT Build Info", 14) != 0) {
        snprintf(msg, len, "slot %d is not GetBuildInfoString", SK_ORT_GetBuildInfoString);
        return 2;
    }
    OrtStatus *st = SK_ORT(api, CreateStatus)(SK_ORT_FAIL, "sparsec-abi-check");
    const int same = strcmp(SK_ORT(api, GetErrorMessage)(st), "sparsec-abi-check") == 0;
    SK_ORT(api, ReleaseStatus)(st);
    if (!same) {
        snprintf(msg, len, "CreateStatus/GetErrorMessage slots disagree");
        return 3;
    }
    snprintf(msg, len, "%s", base->GetVersionString());
    return 0;
}
