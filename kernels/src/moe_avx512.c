/* MoE FFN panels and activations on AVX-512 (F, DQ, BW, VL).
 *
 * Tile (the experts' GEMMs): up to 12 token rows x 32 columns, 24 zmm accumulators; A is the
 * interleaved token tile ([k][mr]: one pointer, a broadcast per row and k), B one 32-column
 * weight panel streamed contiguously. Each B vector feeds 12 FMAs, so the panels stream
 * from L2 at a third of the bytes per FMA of a 6-row block; the stall on B loads was the
 * 6x32 row-pointer panel's bottleneck (about 31 vs 55 GMAC/s single-threaded on the
 * 768x192 experts at 32 tokens).
 * Panel (the router): register block of up to 6 rows x 32 columns (12 zmm accumulators), the B rows
 * streamed with (masked) unaligned loads, A broadcast per row; one row (decode) uses 64
 * columns so four independent FMA chains hide the FMA latency while the weights stream.
 * Activations: exp by range reduction + degree-6 polynomial + scalef; erf by Abramowitz &
 * Stegun 7.1.26 (abs. error <= 1.5e-7); tanh = 1 - 2 / (exp(2z) + 1).
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "moe_internal.h"

#define MR 6

static inline __mmask16 lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

static inline __attribute__((always_inline)) void block(const float *const *a, const int mr,
                                                        int64_t k, const float *b, int64_t ldb,
                                                        int64_t nc, float *const *c,
                                                        int64_t coff, int accumulate) {
    const __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16);
    __m512 c0[MR], c1[MR];
    for (int i = 0; i < MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, br), b1 = _mm512_maskz_loadu_ps(m1, br + 16);
        for (int i = 0; i < MR; i++)
            if (i < mr) {
                const __m512 av = _mm512_set1_ps(a[i][kk]);
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
    }
    for (int i = 0; i < MR; i++)
        if (i < mr) {
            float *cr = c[i] + coff;
            if (accumulate) {
                c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, cr));
                c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, cr + 16));
            }
            _mm512_mask_storeu_ps(cr, m0, c0[i]);
            _mm512_mask_storeu_ps(cr + 16, m1, c1[i]);
        }
}

/* One row, 64 columns: four accumulators. */
static void row64(const float *a, int64_t k, const float *b, int64_t ldb, int64_t nc, float *cr,
                  int accumulate) {
    const __mmask16 m[4] = {lanes(nc), lanes(nc - 16), lanes(nc - 32), lanes(nc - 48)};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb;
        const __m512 av = _mm512_set1_ps(a[kk]);
        for (int v = 0; v < 4; v++)
            acc[v] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m[v], br + 16 * v), acc[v]);
    }
    for (int v = 0; v < 4; v++) {
        if (accumulate) acc[v] = _mm512_add_ps(acc[v], _mm512_maskz_loadu_ps(m[v], cr + 16 * v));
        _mm512_mask_storeu_ps(cr + 16 * v, m[v], acc[v]);
    }
}

void sk_moe_panel_avx512(const float *const *a, int64_t rows, int64_t k, const float *b,
                         int64_t ldb, int64_t ncols, float *const *c, int64_t coff,
                         int accumulate) {
    if (rows == 1) {
        for (int64_t j = 0; j < ncols; j += 64)
            row64(a[0], k, b + j, ldb, ncols - j, c[0] + coff + j, accumulate);
        return;
    }
    for (int64_t j = 0; j < ncols; j += 32) {
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

#define MOE_UNROLL _Pragma("GCC unroll 12")

/* Columns 0..15 full, 16..31 under mask m1 (nc > 16). Loops run to the constant SK_MOE_MR
 * with `i < mr` inside; unrolled explicitly: at -O3 GCC 12 otherwise stores the
 * accumulator arrays to the stack on every k step. */
static inline __attribute__((always_inline)) void tile32(const float *a, const int mr, int64_t k,
                                                         const float *b, int64_t ldb,
                                                         __mmask16 m1, float *c) {
    __m512 c0[SK_MOE_MR], c1[SK_MOE_MR];
    MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++) c0[i] = c1[i] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        const float *br = b + kk * ldb, *ar = a + kk * mr;
        const __m512 b0 = _mm512_loadu_ps(br), b1 = _mm512_maskz_loadu_ps(m1, br + 16);
        MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++)
            if (i < mr) {
                const __m512 av = _mm512_set1_ps(ar[i]);
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
    }
    MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++)
        if (i < mr) {
            _mm512_storeu_ps(c + i * SK_MOE_NR, c0[i]);
            _mm512_storeu_ps(c + i * SK_MOE_NR + 16, c1[i]);
        }
}

/* Columns under mask m0 (nc <= 16). */
static inline __attribute__((always_inline)) void tile16(const float *a, const int mr, int64_t k,
                                                         const float *b, int64_t ldb,
                                                         __mmask16 m0, float *c) {
    __m512 c0[SK_MOE_MR];
    MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++) c0[i] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < k; kk++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + kk * ldb);
        MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++)
            if (i < mr) c0[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[kk * mr + i]), b0, c0[i]);
    }
    MOE_UNROLL for (int i = 0; i < SK_MOE_MR; i++)
        if (i < mr) _mm512_storeu_ps(c + i * SK_MOE_NR, c0[i]);
}

/* One function per row count: each gets its own register allocation (inlined into one
 * switch, GCC spilled accumulators of the larger ones). */
typedef void (*tile_fn)(const float *, int64_t, const float *, int64_t, __mmask16, float *);
#define MOE_TILE_FNS(r)                                                                         \
    static __attribute__((noinline)) void wide##r(const float *a, int64_t k, const float *b,    \
                                                  int64_t ldb, __mmask16 m, float *c) {         \
        tile32(a, r, k, b, ldb, m, c);                                                          \
    }                                                                                           \
    static __attribute__((noinline)) void narrow##r(const float *a, int64_t k, const float *b,  \
                                                    int64_t ldb, __mmask16 m, float *c) {       \
        tile16(a, r, k, b, ldb, m, c);                                                          \
    }
MOE_TILE_FNS(1) MOE_TILE_FNS(2) MOE_TILE_FNS(3) MOE_TILE_FNS(4) MOE_TILE_FNS(5) MOE_TILE_FNS(6)
MOE_TILE_FNS(7) MOE_TILE_FNS(8) MOE_TILE_FNS(9) MOE_TILE_FNS(10) MOE_TILE_FNS(11) MOE_TILE_FNS(12)
#undef MOE_TILE_FNS
static const tile_fn WIDE[SK_MOE_MR] = {wide1, wide2, wide3, wide4, wide5, wide6,
                                        wide7, wide8, wide9, wide10, wide11, wide12};
static const tile_fn NARROW[SK_MOE_MR] = {narrow1, narrow2, narrow3, narrow4, narrow5, narrow6,
                                          narrow7, narrow8, narrow9, narrow10, narrow11, narrow12};

void sk_moe_tile_avx512(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                        float *c) {
    if (mr < 1 || mr > SK_MOE_MR) return;
    if (nc > 16) WIDE[mr - 1](a, k, b, ldb, lanes(nc - 16), c);
    else NARROW[mr - 1](a, k, b, ldb, lanes(nc), c);
}

static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 act512(__m512 v, int act) {
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    switch (act) {
    case MOE_RELU: return _mm512_max_ps(v, _mm512_setzero_ps());
    case MOE_GELU: {
        const __m512 z = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
        const __m512 az = _mm512_abs_ps(z);
        const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(az, _mm512_set1_ps(0.3275911f), one));
        __m512 q = _mm512_set1_ps(1.061405429f);
        q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-1.453152027f));
        q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.421413741f));
        q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-0.284496736f));
        q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(0.254829592f));
        q = _mm512_mul_ps(q, t);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
        __m512 erf_abs = _mm512_fnmadd_ps(q, e, one);
        /* copy the sign of z */
        const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_castps_si512(erf_abs),
            _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32((int)0x80000000u))));
        return _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, erf));
    }
    case MOE_GELU_TANH: {
        const __m512 inner = _mm512_mul_ps(
            _mm512_set1_ps(0.7978845608028654f),
            _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(v, v), v), _mm512_set1_ps(0.044715f), v));
        const __m512 e = exp512(_mm512_add_ps(inner, inner));
        const __m512 th = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
        return _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, th));
    }
    default: /* silu */
        return _mm512_div_ps(v, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), v))));
    }
}

void sk_moe_act_avx512(float *h, const float *bias, const float *up, float gate, int64_t n,
                       int act) {
    const __m512 g = _mm512_set1_ps(gate);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = lanes(n - j);
        __m512 v = act512(_mm512_add_ps(_mm512_maskz_loadu_ps(m, h + j), _mm512_maskz_loadu_ps(m, bias + j)), act);
        if (up) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, up + j));
        _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(v, g));
    }
}
#endif
