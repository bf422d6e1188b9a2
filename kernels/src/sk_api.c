/* Entry points: argument and length checks (so that a malformed buffer is rejected before
 * any kernel reads it), CPU feature dispatch and thread-count defaults. */
#include <stddef.h>

#include "sk_internal.h"

int sk_isa_supported(int isa) {
    switch (isa) {
    case SK_ISA_SCALAR:
        return 1;
#if defined(__x86_64__) || defined(_M_X64)
    case SK_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SK_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
#if defined(__aarch64__)
    case SK_ISA_NEON:
        return 1; /* Advanced SIMD is mandatory on AArch64. */
#endif
    default:
        return 0;
    }
}

const char *sk_status_string(int status) {
    switch (status) {
    case SK_OK: return "ok";
    case SK_ERR_SHAPE: return "unsupported shape or sparsity pattern";
    case SK_ERR_LENGTH: return "packed buffer length does not match the shape";
    case SK_ERR_INDEX: return "block pointer or block row out of range";
    case SK_ERR_ISA: return "requested ISA is not available on this CPU or build";
    case SK_ERR_NULL: return "null buffer";
    case SK_ERR_MEMORY: return "out of memory";
    case SK_ERR_NONFINITE: return "a weight is NaN or infinite";
    default: return "unknown error";
    }
}

int sk_nm_meta_words(int m) {
    switch (m) {
    case 4: return 2;
    case 8: return 3;
    case 16: return 4;
    default: return 0;
    }
}

static int resolve_threads(int threads) { return threads > 0 ? threads : sk_max_threads(); }

int sk_nm_matmul(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols, int n,
                 int m, const float *values, int64_t values_len, const uint16_t *meta,
                 int64_t meta_len, float *y, int64_t ldy, int isa, int threads) {
    return sk_nm_matmul_bias(x, ldx, rows, k, cols, n, m, values, values_len, meta, meta_len, NULL,
                             y, ldy, isa, threads);
}

int sk_nm_matmul_bias(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols, int n,
                      int m, const float *values, int64_t values_len, const uint16_t *meta,
                      int64_t meta_len, const float *bias, float *y, int64_t ldy, int isa,
                      int threads) {
    const int words = sk_nm_meta_words(m);
    if (words == 0 || n < 1 || n > m || rows < 0 || k <= 0 || cols <= 0 || k % m != 0 ||
        ldx < k || ldy < cols)
        return SK_ERR_SHAPE;
    if (!x || !values || !meta || !y) return SK_ERR_NULL;
    const int64_t records = sk_ceil_div(cols, SK_TILE) * (k / m) * n;
    if (values_len != records * SK_TILE || meta_len != records * words) return SK_ERR_LENGTH;
    if (!sk_isa_supported(isa)) return SK_ERR_ISA;
    if (rows == 0) return SK_OK;
    /* The AVX-512 paths add the bias as they store y; the others get a pass over y after. */
    const int fused = isa == SK_ISA_AVX512;
    sk_nm_args a = {x, ldx, rows, k, cols, n, m, values, meta, y, ldy, resolve_threads(threads),
                    fused ? bias : NULL};
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case SK_ISA_AVX512: sk_nm_avx512(&a); break;
    case SK_ISA_AVX2: sk_nm_avx2(&a); break;
#endif
#if defined(__aarch64__)
    case SK_ISA_NEON: sk_nm_neon(&a); break;
#endif
    default: sk_nm_scalar(&a); break;
    }
    if (bias && !fused)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) y[r * ldy + c] += bias[c];
    return SK_OK;
}

int sk_block_matmul(const float *x, int64_t ldx, int64_t rows, int64_t k, int64_t cols, int bk,
                    const int32_t *tile_ptr, int64_t tile_ptr_len, const int32_t *kidx,
                    int64_t nblocks, const float *values, int64_t values_len, float *y,
                    int64_t ldy, int isa, int threads) {
    if (bk < 1 || bk > 16 || rows < 0 || k <= 0 || cols <= 0 || ldx < k || ldy < cols)
        return SK_ERR_SHAPE;
    if (!x || !tile_ptr || !y || (nblocks > 0 && (!kidx || !values))) return SK_ERR_NULL;
    const int64_t ntiles = sk_ceil_div(cols, SK_TILE);
    if (tile_ptr_len != ntiles + 1 || nblocks < 0 || values_len != nblocks * bk * SK_TILE)
        return SK_ERR_LENGTH;
    /* O(blocks) checks, cheap next to the 16*bk*rows FMAs each block costs. */
    if (tile_ptr[0] != 0 || tile_ptr[ntiles] != nblocks) return SK_ERR_INDEX;
    for (int64_t t = 0; t < ntiles; t++)
        if (tile_ptr[t + 1] < tile_ptr[t]) return SK_ERR_INDEX;
    for (int64_t b = 0; b < nblocks; b++)
        if (kidx[b] < 0 || (int64_t)kidx[b] + bk > k) return SK_ERR_INDEX;
    if (!sk_isa_supported(isa)) return SK_ERR_ISA;
    if (rows == 0) return SK_OK;
    sk_block_args a = {x, ldx, rows, k, cols, bk, tile_ptr, kidx, values, y, ldy,
                       resolve_threads(threads)};
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case SK_ISA_AVX512: sk_block_avx512(&a); break;
    case SK_ISA_AVX2: sk_block_avx2(&a); break;
#endif
#if defined(__aarch64__)
    case SK_ISA_NEON: sk_block_neon(&a); break;
#endif
    default: sk_block_scalar(&a); break;
    }
    return SK_OK;
}
