/* MoE FFN panels and activations on AVX2 + FMA: the AVX-512 scheme (moe_avx512.c) on
 * 8-lane vectors: 6 rows x 16 columns per register block, one row x 32 columns for decode;
 * column tails through maskload/maskstore. A tile (12 x 32) runs as up to four 6 x 16
 * register blocks over the interleaved token rows. */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "moe_internal.h"

#define MR 6
/* Loops over a block's rows are unrolled explicitly: GCC 12 at -O3 otherwise keeps the
 * accumulator arrays in memory and stores them on every k step (perf annotate). */
#define MOE_UNROLL _Pragma("GCC unroll 8")
/* Panel rows ahead that a register block prefetches its B slice (the 128-token path reads
 * the experts' panels from L3/DRAM): 2-13% faster per 128-token FFN on 2 threads of an AVX2
 * AMD EPYC in six in-process A/B runs (no gain on one thread), 16 rows no better than 8;
 * within noise in bench/moe_bench.py. */
#ifndef MOE_PF_ROWS
#define MOE_PF_ROWS 8
#endif

static inline __m256i lanes(int64_t n) {
    const int c = n >= 8 ? 8 : n <= 0 ? 0 : (int)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __attribute__((always_inline)) void block(const float *const *a, const int mr,
                                                        int64_t k, const float *b, int64_t ldb,
                                                        int64_t nc, float *const *c,
                                                        int64_t coff, int accumulate) {
    const __m256i m0 = lanes(nc), m1 = lanes(nc - 8);
    __m256 c0[MR], c1[MR];
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb;
        const __m256 b0 = _mm256_maskload_ps(br, m0), b1 = _mm256_maskload_ps(br + 8, m1);
        for (int i = 0; i < MR; i++)
            if (i < mr) {
                const __m256 av = _mm256_broadcast_ss(a[i] + kk);
                c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
            }
    }
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            float *cr = c[i] + coff;
            if (accumulate) {
                c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(cr, m0));
                c1[i] = _mm256_add_ps(c1[i], _mm256_maskload_ps(cr + 8, m1));
            }
            _mm256_maskstore_ps(cr, m0, c0[i]);
            _mm256_maskstore_ps(cr + 8, m1, c1[i]);
        }
}

static void row32(const float *a, int64_t k, const float *b, int64_t ldb, int64_t nc, float *cr,
                  int accumulate) {
    const __m256i m[4] = {lanes(nc), lanes(nc - 8), lanes(nc - 16), lanes(nc - 24)};
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb;
        const __m256 av = _mm256_broadcast_ss(a + kk);
        for (int v = 0; v < 4; v++)
            acc[v] = _mm256_fmadd_ps(av, _mm256_maskload_ps(br + 8 * v, m[v]), acc[v]);
    }
    for (int v = 0; v < 4; v++) {
        if (accumulate) acc[v] = _mm256_add_ps(acc[v], _mm256_maskload_ps(cr + 8 * v, m[v]));
        _mm256_maskstore_ps(cr + 8 * v, m[v], acc[v]);
    }
}

void sk_moe_panel_avx2(const float *const *a, int64_t rows, int64_t k, const float *b,
                       int64_t ldb, int64_t ncols, float *const *c, int64_t coff, int accumulate) {
    if (rows == 1) {
        for (int64_t j = 0; j < ncols; j += 32)
            row32(a[0], k, b + j, ldb, ncols - j, c[0] + coff + j, accumulate);
        return;
    }
    for (int64_t j = 0; j < ncols; j += 16) {
        const int64_t nc = ncols - j;
        int64_t r = 0;
        for (; r + MR <= rows; r += MR) block(a + r, MR, k, b + j, ldb, nc, c + r, coff + j, accumulate);
        switch (rows - r) {
        case 5: block(a + r, 5, k, b + j, ldb, nc, c + r, coff + j, accumulate); break;
        case 4: block(a + r, 4, k, b + j, ldb, nc, c + r, coff + j, accumulate); break;
        case 3: block(a + r, 3, k, b + j, ldb, nc, c + r, coff + j, accumulate); break;
        case 2: block(a + r, 2, k, b + j, ldb, nc, c + r, coff + j, accumulate); break;
        case 1: block(a + r, 1, k, b + j, ldb, nc, c + r, coff + j, accumulate); break;
        default: break;
        }
    }
}

/* 6 x 16 register block of a tile. `full` (a constant after inlining): all 16 columns are
 * there, so B is read with plain loads (vmaskmovps is slower on AMD Zen); the masked form
 * is kept for a panel's column tail. */
static inline __attribute__((always_inline)) void subtile(const float *a, int stride, const int mr,
                                                          int64_t k, const float *b, int64_t ldb,
                                                          int64_t nc, float *c, const int full) {
    const __m256i m0 = lanes(nc), m1 = lanes(nc - 8);
    __m256 c0[MR], c1[MR];
    MOE_UNROLL for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm256_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb, *ar = a + kk * stride;
        _mm_prefetch((const char *)(br + MOE_PF_ROWS * ldb), _MM_HINT_T0);
        const __m256 b0 = full ? _mm256_loadu_ps(br) : _mm256_maskload_ps(br, m0);
        const __m256 b1 = full ? _mm256_loadu_ps(br + 8) : _mm256_maskload_ps(br + 8, m1);
        MOE_UNROLL for (int i = 0; i < MR; i++)
            if (i < mr) {
                const __m256 av = _mm256_broadcast_ss(ar + i);
                c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
            }
    }
    MOE_UNROLL for (int i = 0; i < MR; i++)
        if (i < mr) {
            _mm256_storeu_ps(c + i * SK_MOE_NR, c0[i]);
            _mm256_storeu_ps(c + i * SK_MOE_NR + 8, c1[i]);
        }
}

/* One token row (decode): all 32 columns of each panel row in one pass, with two independent
 * accumulator sets over the two halves of k: two sequential streams through the panel keep
 * more cache misses in flight than one (batch 1 is weight streaming: 3-6% faster per FFN
 * in a DRAM-resident chain on an AVX2 AMD EPYC than even/odd k over one stream), and the
 * FMAs are not serialised on one chain per column vector. */
static void tile_row(const float *a, int64_t k, const float *b, int64_t ldb, int64_t nc, float *c) {
    const __m256i m[4] = {lanes(nc), lanes(nc - 8), lanes(nc - 16), lanes(nc - 24)};
    __m256 p[4], q[4];
    MOE_UNROLL for (int v = 0; v < 4; v++) p[v] = q[v] = _mm256_setzero_ps();
    int64_t kk = 0;
    if (nc == SK_MOE_NR) {
        const int64_t h = k / 2;
        const float *bh = b + h * ldb;
        for (; kk < h; kk++) {
            const float *br = b + kk * ldb, *bq = bh + kk * ldb;
            const __m256 a0 = _mm256_broadcast_ss(a + kk), a1 = _mm256_broadcast_ss(a + h + kk);
            MOE_UNROLL for (int v = 0; v < 4; v++) {
                p[v] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(br + 8 * v), p[v]);
                q[v] = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bq + 8 * v), q[v]);
            }
        }
        kk = 2 * h;
    }
    for (; kk < k; kk++) {
        const float *br = b + kk * ldb;
        const __m256 a0 = _mm256_broadcast_ss(a + kk);
        MOE_UNROLL for (int v = 0; v < 4; v++) p[v] = _mm256_fmadd_ps(a0, _mm256_maskload_ps(br + 8 * v, m[v]), p[v]);
    }
    MOE_UNROLL for (int v = 0; v < 4; v++) _mm256_storeu_ps(c + 8 * v, _mm256_add_ps(p[v], q[v]));
}

/* One function per (row count, full): each its own register allocation. */
#define MOE_SUB_FNS(r)                                                                            \
    static __attribute__((noinline)) void sub##r(const float *a, int stride, int64_t k,           \
                                                 const float *b, int64_t ldb, int64_t nc,         \
                                                 float *c) {                                      \
        if (nc >= 16) subtile(a, stride, r, k, b, ldb, nc, c, 1);                                 \
        else subtile(a, stride, r, k, b, ldb, nc, c, 0);                                          \
    }
MOE_SUB_FNS(1) MOE_SUB_FNS(2) MOE_SUB_FNS(3) MOE_SUB_FNS(4) MOE_SUB_FNS(5) MOE_SUB_FNS(6)
#undef MOE_SUB_FNS
typedef void (*sub_fn)(const float *, int, int64_t, const float *, int64_t, int64_t, float *);
static const sub_fn SUB[MR] = {sub1, sub2, sub3, sub4, sub5, sub6};

void sk_moe_tile_avx2(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                      float *c) {
    if (mr < 1 || mr > SK_MOE_MR) return;
    if (mr == 1) {
        tile_row(a, k, b, ldb, nc, c);
        return;
    }
    for (int64_t j = 0; j < nc; j += 16)
        for (int r = 0; r < mr; r += MR) {
            const int rows = mr - r < MR ? mr - r : MR;
            SUB[rows - 1](a + r, mr, k, b + j, ldb, nc - j, c + r * SK_MOE_NR + j);
        }
}

static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
}

static inline __m256 act256(__m256 v, int act) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    switch (act) {
    case MOE_RELU: return _mm256_max_ps(v, _mm256_setzero_ps());
    case MOE_GELU: {
        const __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f));
        const __m256 az = _mm256_andnot_ps(sign, z);
        const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(az, _mm256_set1_ps(0.3275911f), one));
        __m256 q = _mm256_set1_ps(1.061405429f);
        q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-1.453152027f));
        q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.421413741f));
        q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(-0.284496736f));
        q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(0.254829592f));
        q = _mm256_mul_ps(q, t);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
        const __m256 erf = _mm256_or_ps(_mm256_fnmadd_ps(q, e, one), _mm256_and_ps(z, sign));
        return _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf));
    }
    case MOE_GELU_TANH: {
        const __m256 inner = _mm256_mul_ps(
            _mm256_set1_ps(0.7978845608028654f),
            _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(v, v), v), _mm256_set1_ps(0.044715f), v));
        const __m256 e = exp256(_mm256_add_ps(inner, inner));
        const __m256 th = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
        return _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, th));
    }
    default:
        return _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), v))));
    }
}

void sk_moe_act_avx2(float *h, const float *bias, const float *up, float gate, int64_t n, int act) {
    const __m256 g = _mm256_set1_ps(gate);
    for (int64_t j = 0; j < n; j += 8) {
        const __m256i m = lanes(n - j);
        __m256 v = act256(_mm256_add_ps(_mm256_maskload_ps(h + j, m), _mm256_maskload_ps(bias + j, m)), act);
        if (up) v = _mm256_mul_ps(v, _mm256_maskload_ps(up + j, m));
        _mm256_maskstore_ps(h + j, m, _mm256_mul_ps(v, g));
    }
}
#endif
