/* Sparse convolution on AVX2 + FMA: the AVX-512 scheme (conv_avx512.c) on 8-lane vectors,
 * 32 output positions x 2 output channels per register block (8 ymm accumulators). Partial
 * vectors (grid columns past Wo, the block tail) go through a small buffer. */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "conv_internal.h"

#define NV 4
#define LANES 8
#define PB (NV * LANES)

typedef struct {
    const float *xq;
    const int32_t *off;
    const float *val;
    int64_t steps;
    float b0, b1;
    const float *init0, *init1; /* partial sums of earlier chunks (NULL: start from the bias) */
    __m256i lmask;
} g2_in;

static inline __attribute__((always_inline)) void g2(const int nv, const int tail, const g2_in *p,
                                                     __m256 *o0, __m256 *o1) {
    /* Every loop over the accumulators is unrolled: GCC 12 otherwise keeps them in memory
     * and stores them on every step (objdump). */
    __m256 a0[NV], a1[NV];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        a0[v] = p->init0 ? _mm256_loadu_ps(p->init0 + LANES * v) : _mm256_set1_ps(p->b0);
        a1[v] = p->init1 ? _mm256_loadu_ps(p->init1 + LANES * v) : _mm256_set1_ps(p->b1);
    }
    const int32_t *off = p->off;
    const float *val = p->val;
    for (int64_t s = 0; s < p->steps; s++) {
        const float *p0 = p->xq + off[2 * s], *p1 = p->xq + off[2 * s + 1];
        const __m256 w0 = _mm256_broadcast_ss(val + 2 * s), w1 = _mm256_broadcast_ss(val + 2 * s + 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            __m256 x0, x1;
            if (tail && v == nv - 1) {
                x0 = _mm256_maskload_ps(p0 + LANES * v, p->lmask);
                x1 = _mm256_maskload_ps(p1 + LANES * v, p->lmask);
            } else {
                x0 = _mm256_loadu_ps(p0 + LANES * v);
                x1 = _mm256_loadu_ps(p1 + LANES * v);
            }
            a0[v] = _mm256_fmadd_ps(w0, x0, a0[v]);
            a1[v] = _mm256_fmadd_ps(w1, x1, a1[v]);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        o0[v] = a0[v];
        o1[v] = a1[v];
    }
}

typedef void (*g2_fn)(const g2_in *, __m256 *, __m256 *);
#define G2_DEF(NV_, T_) \
    static void g2_##NV_##_##T_(const g2_in *p, __m256 *o0, __m256 *o1) { g2(NV_, T_, p, o0, o1); }
G2_DEF(1, 0) G2_DEF(2, 0) G2_DEF(3, 0) G2_DEF(4, 0)
G2_DEF(1, 1) G2_DEF(2, 1) G2_DEF(3, 1) G2_DEF(4, 1)
static const g2_fn G2[2][NV] = {{g2_1_0, g2_2_0, g2_3_0, g2_4_0}, {g2_1_1, g2_2_1, g2_3_1, g2_4_1}};

static inline __m256 activate(__m256 v, int act) {
    if (act == SK_CONV_ACT_NONE) return v;
    v = _mm256_max_ps(v, _mm256_setzero_ps());
    return act == SK_CONV_ACT_RELU6 ? _mm256_min_ps(v, _mm256_set1_ps(6.0f)) : v;
}

static void conv_avx2_body(const void *args, int tid, int nth) {
    const sk_conv_args *a = args;
    int64_t pblocks, rchunks, chunk, i0, i1;
    sk_conv_items(a, PB, nth, &pblocks, &rchunks, &chunk);
    sk_split(a->batch * pblocks * rchunks, tid, nth, &i0, &i1);
    const int contiguous = a->wq == a->wo;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t rc = it % rchunks, pb = (it / rchunks) % pblocks, b = it / (rchunks * pblocks);
        const int64_t q0 = pb * PB, nq = a->q - q0 < PB ? a->q - q0 : PB;
        const int nv = (int)sk_ceil_div(nq, LANES), tail = nq < PB;
        /* Destination of every lane of the block (-1: dropped), and whether a vector is whole
         * and contiguous (one plain store). */
        int64_t dest[PB];
        int whole[NV];
        {
            int64_t h = q0 / a->wq, w = q0 - h * a->wq;
            for (int l = 0; l < PB; l++) {
                dest[l] = l < nq && w < a->wo ? h * a->wo + w : -1;
                if (++w == a->wq) w = 0, h++;
            }
            for (int v = 0; v < nv; v++) {
                whole[v] = dest[LANES * v] >= 0 && dest[LANES * v + LANES - 1] == dest[LANES * v] + LANES - 1;
            }
        }
        const int64_t last = nq - LANES * (nv - 1);
        int32_t lm[LANES];
        for (int l = 0; l < LANES; l++) lm[l] = l < last ? -1 : 0;
        g2_in in = {a->x + b * a->x_batch + q0, 0, 0, 0, 0, 0, 0, 0,
                    _mm256_loadu_si256((const __m256i *)lm)};
        float *scratch = a->scratch ? a->scratch + (int64_t)tid * a->groups * SK_CONV_G * PB : NULL;
        float *yb = a->y + b * a->y_batch;
        const g2_fn fn = G2[tail][nv - 1];
        const int64_t g_begin = rc * chunk;
        const int64_t g_end = (rc + 1) * chunk < a->groups ? (rc + 1) * chunk : a->groups;
        (void)contiguous;
        for (int64_t c = 0; c < a->chunks; c++) {
            const int final = c == a->chunks - 1;
            for (int64_t g = g_begin; g < g_end; g++) {
                const int32_t r0 = a->perm[2 * g], r1 = a->perm[2 * g + 1];
                const int64_t rp = c * a->groups + g;
                float *part = scratch ? scratch + (g - g_begin) * SK_CONV_G * PB : NULL;
                in.off = a->off + 2 * (int64_t)a->row_ptr[rp];
                in.val = a->vals + 2 * (int64_t)a->row_ptr[rp];
                in.steps = a->row_ptr[rp + 1] - a->row_ptr[rp];
                in.b0 = a->bias && r0 >= 0 ? a->bias[r0] : 0.0f;
                in.b1 = a->bias && r1 >= 0 ? a->bias[r1] : 0.0f;
                in.init0 = c ? part : NULL;
                in.init1 = c ? part + PB : NULL;
                __m256 o[2][NV];
                fn(&in, o[0], o[1]);
                if (!final) {
                    for (int v = 0; v < nv; v++) {
                        _mm256_storeu_ps(part + LANES * v, o[0][v]);
                        _mm256_storeu_ps(part + PB + LANES * v, o[1][v]);
                    }
                    continue;
                }
                for (int j = 0; j < 2; j++) {
                    const int32_t r = j ? r1 : r0;
                    if (r < 0) continue;
                    float *yr = yb + (int64_t)r * a->y_plane;
                    for (int v = 0; v < nv; v++) {
                        const __m256 val = activate(o[j][v], a->act);
                        if (whole[v]) {
                            _mm256_storeu_ps(yr + dest[LANES * v], val);
                            continue;
                        }
                        float buf[LANES];
                        _mm256_storeu_ps(buf, val);
                        for (int l = 0; l < LANES; l++)
                            if (dest[LANES * v + l] >= 0) yr[dest[LANES * v + l]] = buf[l];
                    }
                }
            }
        }
    }
}

void sk_conv_avx2(const sk_conv_args *a) { sk_run_parallel(a->threads, conv_avx2_body, a); }
#endif
