/* sparsec kernels as TVM FFI packed functions, linked into a TVM model.so.
 *
 * Relax calls them with `R.call_dps_packed("sparsec_nm_matmul", ...)`; the VM looks the
 * name up in the model library, where the symbol `__tvm_ffi_<name>` (the TVM FFI ABI for
 * exported functions, as TVM_FFI_DLL_EXPORT_TYPED_FUNC emits it) is found. Plain C on the
 * FFI's C ABI only (c_api.h), so the same file cross-compiles with any C compiler and the
 * model library needs nothing beyond the TVM runtime.
 *
 *   sparsec_nm_matmul(X, values, meta, n, m, Y)              Y[..., N] = X[..., K] @ W
 *   sparsec_nm_matmul_bias(X, values, meta, bias, n, m, Y)   ... + bias[N]
 *   sparsec_block_matmul(X, tile_ptr, kidx, values, bk, Y)
 *
 * Tensors arrive as ffi Tensor objects (the VM) or DLTensor pointers (direct calls).
 * Threads per call as the ONNX Runtime ops: one per 2^20 multiply-adds, at most
 * $SPARSEC_KERNEL_THREADS (default: all cores); $SPARSEC_KERNEL_ISA forces an ISA.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

#include "sk.h"

#define SK_EXPORT __attribute__((visibility("default")))
#define MIN_MACS_PER_THREAD (1 << 20)

static int fail(const char *fn, const char *msg) {
    char buf[256];
    snprintf(buf, sizeof buf, "sparsec kernel %s: %s", fn, msg);
    TVMFFIErrorSetRaisedFromCStr("RuntimeError", buf);
    return -1;
}

static DLTensor *tensor_arg(const TVMFFIAny *a) {
    if (a->type_index == kTVMFFIDLTensorPtr) return (DLTensor *)a->v_ptr;
    if (a->type_index == kTVMFFITensor) return (DLTensor *)((char *)a->v_obj + sizeof(TVMFFIObject));
    return NULL;
}

static int int_arg(const TVMFFIAny *a, int64_t *out) {
    if (a->type_index != kTVMFFIInt && a->type_index != kTVMFFIBool) return -1;
    *out = a->v_int64;
    return 0;
}

static int64_t numel(const DLTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static int is_dense(const DLTensor *t, uint8_t code, uint8_t bits) {
    if (t->dtype.code != code || t->dtype.bits != bits || t->dtype.lanes != 1) return 0;
    if (t->device.device_type != kDLCPU) return 0;
    if (t->strides) { /* compact row-major only */
        int64_t expect = 1;
        for (int i = t->ndim - 1; i >= 0; i--) {
            if (t->shape[i] != 1 && t->strides[i] != expect) return 0;
            expect *= t->shape[i];
        }
    }
    return 1;
}

static void *data(const DLTensor *t) { return (char *)t->data + t->byte_offset; }

static int chosen_isa(void) {
    static int isa = -1;
    if (isa >= 0) return isa;
    static const char *const names[] = {"scalar", "avx2", "avx512", "neon"};
    static const int preference[] = {SK_ISA_AVX512, SK_ISA_NEON, SK_ISA_AVX2, SK_ISA_SCALAR};
    const char *env = getenv("SPARSEC_KERNEL_ISA");
    if (env && *env) {
        for (int i = 0; i < 4; i++)
            if (strncmp(env, names[i], strlen(names[i])) == 0 && sk_isa_supported(i)) return isa = i;
    }
    for (int i = 0; i < 4; i++)
        if (sk_isa_supported(preference[i])) return isa = preference[i];
    return isa = SK_ISA_SCALAR;
}

static int pick_threads(int64_t macs) {
    static int cap = -1;
    if (cap < 0) {
        const char *env = getenv("SPARSEC_KERNEL_THREADS");
        cap = env && atoi(env) > 0 ? atoi(env) : 0;
    }
    int64_t limit = cap > 0 ? cap : sk_max_threads();
    int64_t t = macs / MIN_MACS_PER_THREAD;
    if (t > limit) t = limit;
    return t < 1 ? 1 : (int)t;
}

/* X [..., K] and Y [..., N] as (rows, K, N), checked. */
static int rows_of(const char *fn, const DLTensor *x, const DLTensor *y, int64_t *rows,
                   int64_t *k, int64_t *cols) {
    if (!is_dense(x, kDLFloat, 32) || !is_dense(y, kDLFloat, 32) || x->ndim < 1 ||
        x->ndim != y->ndim)
        return fail(fn, "X and Y must be compact float32 CPU tensors of the same rank");
    *k = x->shape[x->ndim - 1];
    *cols = y->shape[y->ndim - 1];
    *rows = numel(x) / (*k ? *k : 1);
    if (*k == 0 || numel(y) != *rows * *cols) return fail(fn, "X and Y row counts differ");
    return 0;
}

static int nm_call(const char *fn, const TVMFFIAny *args, int32_t num_args, int with_bias) {
    const int expect = with_bias ? 7 : 6;
    if (num_args != expect) return fail(fn, "wrong number of arguments");
    DLTensor *x = tensor_arg(&args[0]), *values = tensor_arg(&args[1]), *meta = tensor_arg(&args[2]);
    DLTensor *bias = with_bias ? tensor_arg(&args[3]) : NULL;
    DLTensor *y = tensor_arg(&args[expect - 1]);
    int64_t n, m, rows, k, cols;
    if (!x || !values || !meta || !y || (with_bias && !bias)) return fail(fn, "expected tensors");
    if (int_arg(&args[expect - 3], &n) || int_arg(&args[expect - 2], &m))
        return fail(fn, "n and m must be integers");
    if (rows_of(fn, x, y, &rows, &k, &cols)) return -1;
    if (!is_dense(values, kDLFloat, 32) || !is_dense(meta, kDLUInt, 16))
        return fail(fn, "values must be float32 and meta uint16");
    float *out = data(y);
    int rc = sk_nm_matmul(data(x), k, rows, k, cols, (int)n, (int)m, data(values), numel(values),
                          data(meta), numel(meta), out, cols, chosen_isa(),
                          pick_threads(rows * numel(values)));
    if (rc != SK_OK) return fail(fn, sk_status_string(rc));
    if (bias) {
        if (!is_dense(bias, kDLFloat, 32) || numel(bias) != cols) return fail(fn, "bias must be float32 [N]");
        const float *b = data(bias);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) out[r * cols + c] += b[c];
    }
    return 0;
}

SK_EXPORT int __tvm_ffi_sparsec_nm_matmul(void *self, const TVMFFIAny *args, int32_t num_args,
                                          TVMFFIAny *result) {
    (void)self;
    result->type_index = kTVMFFINone;
    return nm_call("sparsec_nm_matmul", args, num_args, 0);
}

SK_EXPORT int __tvm_ffi_sparsec_nm_matmul_bias(void *self, const TVMFFIAny *args,
                                               int32_t num_args, TVMFFIAny *result) {
    (void)self;
    result->type_index = kTVMFFINone;
    return nm_call("sparsec_nm_matmul_bias", args, num_args, 1);
}

SK_EXPORT int __tvm_ffi_sparsec_block_matmul(void *self, const TVMFFIAny *args, int32_t num_args,
                                             TVMFFIAny *result) {
    static const char fn[] = "sparsec_block_matmul";
    (void)self;
    result->type_index = kTVMFFINone;
    if (num_args != 6) return fail(fn, "wrong number of arguments");
    DLTensor *x = tensor_arg(&args[0]), *tile_ptr = tensor_arg(&args[1]), *kidx = tensor_arg(&args[2]);
    DLTensor *values = tensor_arg(&args[3]), *y = tensor_arg(&args[5]);
    int64_t bk, rows, k, cols;
    if (!x || !tile_ptr || !kidx || !values || !y) return fail(fn, "expected tensors");
    if (int_arg(&args[4], &bk)) return fail(fn, "bk must be an integer");
    if (rows_of(fn, x, y, &rows, &k, &cols)) return -1;
    if (!is_dense(tile_ptr, kDLInt, 32) || !is_dense(kidx, kDLInt, 32) || !is_dense(values, kDLFloat, 32))
        return fail(fn, "tile_ptr and kidx must be int32, values float32");
    int rc = sk_block_matmul(data(x), k, rows, k, cols, (int)bk, data(tile_ptr), numel(tile_ptr),
                             data(kidx), numel(kidx), data(values), numel(values), data(y), cols,
                             chosen_isa(), pick_threads(rows * numel(values)));
    return rc == SK_OK ? 0 : fail(fn, sk_status_string(rc));
}
