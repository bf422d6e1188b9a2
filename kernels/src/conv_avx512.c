/* Sparse convolution on AVX-512: 64 output positions (4 zmm) x 2 output channels per
 * register block, 8 independent accumulators (enough for two FMA ports at 4 cycles' latency).
 * Per kept-weight pair: two broadcasts and 8 FMAs whose input vectors are memory operands at
 * the pair's precomputed offsets. The position block's input rows (all channels and taps) stay
 * in L1/L2 while the row pairs of a chunk stream their weights.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "conv_internal.h"

#define NV 4
#define LANES 16
#define PB (NV * LANES)

typedef struct {
    const float *xq;
    const int32_t *off;
    const float *val;
    int64_t steps;
    float b0, b1;
    const float *init0, *init1; /* partial sums of earlier chunks (NULL: start from the bias) */
    __mmask16 lmask; /* load mask of the last vector (tail blocks) */
} g2_in;

/* The accumulators are named variables, not arrays: with `__m512 a0[NV], a1[NV]` GCC kept them
 * in registers for the FMAs but also stored all 8 to the stack on every step (perf annotate of
 * the 7x7 tail variant: the stores and the FMAs after them took most of its samples). Measured
 * (AMD EPYC, Zen 4 flags, 2 threads, ORT op): MobileNetV2 1x1 layers at 80% mean 1.44 -> 1.69x
 * dense, 960->160 at 7x7 0.159 -> 0.122 ms (bench/results/conv_bench_layers_amd_zen4flags*.json). */
#define G2_ACC(v)                                                                                \
    __m512 a0##v = nv > (v) ? (p->init0 ? _mm512_loadu_ps(p->init0 + LANES * (v)) : _mm512_set1_ps(p->b0)) \
                            : _mm512_setzero_ps();                                               \
    __m512 a1##v = nv > (v) ? (p->init1 ? _mm512_loadu_ps(p->init1 + LANES * (v)) : _mm512_set1_ps(p->b1)) \
                            : _mm512_setzero_ps()
#define G2_STEP(v)                                                                               \
    do {                                                                                         \
        if (nv > (v)) {                                                                          \
            const int last = tail && (v) == nv - 1;                                              \
            const __m512 x0 = last ? _mm512_maskz_loadu_ps(p->lmask, p0 + LANES * (v))           \
                                   : _mm512_loadu_ps(p0 + LANES * (v));                          \
            const __m512 x1 = last ? _mm512_maskz_loadu_ps(p->lmask, p1 + LANES * (v))           \
                                   : _mm512_loadu_ps(p1 + LANES * (v));                          \
            a0##v = _mm512_fmadd_ps(w0, x0, a0##v);                                              \
            a1##v = _mm512_fmadd_ps(w1, x1, a1##v);                                              \
        }                                                                                        \
    } while (0)
#define G2_OUT(v) do { if (nv > (v)) { o0[v] = a0##v; o1[v] = a1##v; } } while (0)

static inline __attribute__((always_inline)) void g2(const int nv, const int tail, const g2_in *p,
                                                     __m512 *o0, __m512 *o1) {
    G2_ACC(0); G2_ACC(1); G2_ACC(2); G2_ACC(3);
    const int32_t *off = p->off;
    const float *val = p->val;
    const float *xq = p->xq;
    for (int64_t s = 0; s < p->steps; s++) {
        const float *p0 = xq + off[2 * s], *p1 = xq + off[2 * s + 1];
        /* Materialize the addresses: base + displacement loads stay micro-fused with their FMA
         * on Intel (an indexed memory operand of a 3-operand FMA is un-laminated). */
        __asm__("" : "+r"(p0), "+r"(p1));
        const __m512 w0 = _mm512_set1_ps(val[2 * s]), w1 = _mm512_set1_ps(val[2 * s + 1]);
        G2_STEP(0); G2_STEP(1); G2_STEP(2); G2_STEP(3);
    }
    G2_OUT(0); G2_OUT(1); G2_OUT(2); G2_OUT(3);
}

typedef void (*g2_fn)(const g2_in *, __m512 *, __m512 *);
#define G2_DEF(NV_, T_) \
    static void g2_##NV_##_##T_(const g2_in *p, __m512 *o0, __m512 *o1) { g2(NV_, T_, p, o0, o1); }
G2_DEF(1, 0) G2_DEF(2, 0) G2_DEF(3, 0) G2_DEF(4, 0)
G2_DEF(1, 1) G2_DEF(2, 1) G2_DEF(3, 1) G2_DEF(4, 1)
static const g2_fn G2[2][NV] = {{g2_1_0, g2_2_0, g2_3_0, g2_4_0}, {g2_1_1, g2_2_1, g2_3_1, g2_4_1}};

static inline __m512 activate(__m512 v, int act) {
    if (act == SK_CONV_ACT_NONE) return v;
    v = _mm512_max_ps(v, _mm512_setzero_ps());
    return act == SK_CONV_ACT_RELU6 ? _mm512_min_ps(v, _mm512_set1_ps(6.0f)) : v;
}

static void conv_avx512_body(const void *args, int tid, int nth) {
    const sk_conv_args *a = args;
    int64_t pblocks, rchunks, chunk, i0, i1;
    sk_conv_items(a, PB, nth, &pblocks, &rchunks, &chunk);
    sk_split(a->batch * pblocks * rchunks, tid, nth, &i0, &i1);
    const int contiguous = a->wq == a->wo;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t rc = it % rchunks, pb = (it / rchunks) % pblocks, b = it / (rchunks * pblocks);
        const int64_t q0 = pb * PB, nq = a->q - q0 < PB ? a->q - q0 : PB;
        const int nv = (int)sk_ceil_div(nq, LANES), tail = nq < PB;
        /* Where each vector's lanes go: contiguous, or the valid lanes compressed to dest. */
        __mmask16 smask[NV];
        int64_t sdest[NV];
        for (int v = 0; v < nv; v++) {
            const int64_t qv = q0 + LANES * v;
            if (contiguous) {
                const int64_t n = a->q - qv < LANES ? a->q - qv : LANES;
                smask[v] = (__mmask16)((1u << n) - 1);
                sdest[v] = qv;
                continue;
            }
            int64_t h = qv / a->wq, w = qv - h * a->wq, first = -1;
            unsigned m = 0;
            for (int l = 0; l < LANES && qv + l < a->q; l++) {
                if (w < a->wo) {
                    m |= 1u << l;
                    if (first < 0) first = h * a->wo + w;
                }
                if (++w == a->wq) w = 0, h++;
            }
            smask[v] = (__mmask16)m;
            sdest[v] = first < 0 ? 0 : first;
        }
        const int64_t last = nq - LANES * (nv - 1);
        g2_in in = {a->x + b * a->x_batch + q0, 0, 0, 0, 0, 0, 0, 0, (__mmask16)((1u << last) - 1)};
        float *scratch = a->scratch ? a->scratch + (int64_t)tid * a->groups * SK_CONV_G * PB : NULL;
        float *yb = a->y + b * a->y_batch;
        const g2_fn fn = G2[tail][nv - 1];
        const int64_t g_begin = rc * chunk;
        const int64_t g_end = (rc + 1) * chunk < a->groups ? (rc + 1) * chunk : a->groups;
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
                __m512 o[2][NV];
                fn(&in, o[0], o[1]);
                if (!final) {
                    for (int v = 0; v < nv; v++) {
                        _mm512_storeu_ps(part + LANES * v, o[0][v]);
                        _mm512_storeu_ps(part + PB + LANES * v, o[1][v]);
                    }
                    continue;
                }
                for (int j = 0; j < 2; j++) {
                    const int32_t r = j ? r1 : r0;
                    if (r < 0) continue;
                    float *yr = yb + (int64_t)r * a->y_plane;
                    for (int v = 0; v < nv; v++) {
                        const __m512 val = activate(o[j][v], a->act);
                        if (contiguous && smask[v] == 0xFFFF) {
                            _mm512_storeu_ps(yr + sdest[v], val);
                        } else if (contiguous) {
                            _mm512_mask_storeu_ps(yr + sdest[v], smask[v], val);
                        } else if (smask[v]) {
                            const unsigned n = (unsigned)__builtin_popcount(smask[v]);
                            _mm512_mask_storeu_ps(yr + sdest[v], (__mmask16)((1u << n) - 1),
                                                  _mm512_maskz_compress_ps(smask[v], val));
                        }
                    }
                }
            }
        }
    }
}

void sk_conv_avx512(const sk_conv_args *a) { sk_run_parallel(a->threads, conv_avx512_body, a); }
#endif
