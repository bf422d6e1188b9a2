/* Sparse convolution in ONNX Runtime's NCHWc layout (16 channels a block, AVX-512).
 *
 * ORT runs a CNN's dense convolutions in NCHW16c: a tensor is [C/16][H][W][16], so one zmm
 * holds 16 channels of one position. MLAS's NCHWc conv puts 16 output channels in the lanes
 * and broadcasts each input channel's value: 16 FMAs per 16 input channels, position and
 * output block. An op of ours in the same layout runs inside ORT's NCHWc chain with no
 * reorders around it (an NCHW kernel op costs two reorders per conv, as much as the conv
 * saved on MobileNetV2 and ResNet-50).
 *
 * Scheme: each output channel (lane) keeps at most K of every 16 input channels of a tap (2:4
 * and 4:8: K = 8; 1:4: 4; 1:8: 2). The packed weight holds, per (output block, tap, input
 * block), K pairs (index vector, value vector): lane l of pair j is the j-th kept input
 * channel of output channel l and its weight. Per position: one load of the 16 input
 * channels, K in-register permutes (vpermps picks each lane's channel) and K FMAs: 8 FMAs
 * instead of 16 at 2:4. The permutes run on other ports than the FMAs on AMD Zen 4 (a
 * microbenchmark of 12 positions x 16 input channels: 2.5x the dense broadcast-FMA loop);
 * on Intel parts with a second FMA unit on port 5 they compete with it, which is why lowering
 * measures before it chooses.
 *
 * Register block: 12 positions of one output row (named accumulators: GCC spills arrays of
 * accumulators, see conv_avx512.c) with the K index and value vectors of a (tap, input block)
 * in registers: 12 + 2 * 8 + 2 = 30 zmm.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "nchwc_conv_internal.h"


static inline __m512i load_idx(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }

static inline __m512 finish(__m512 acc, const float *sum, const sk_nchwc_args *a) {
    if (sum) acc = _mm512_add_ps(acc, _mm512_loadu_ps(sum));
    if (a->act == SK_NCHWC_ACT_RELU) acc = _mm512_max_ps(acc, _mm512_setzero_ps());
    if (a->act == SK_NCHWC_ACT_CLIP)
        acc = _mm512_min_ps(_mm512_max_ps(acc, _mm512_set1_ps(a->clip_lo)), _mm512_set1_ps(a->clip_hi));
    return acc;
}

/* Per (tap, input block): the K pairs of one output block into registers, then FMAs for the
 * 12 positions whose inputs start at `xp` (stride `xs` floats between positions). */
#define PAIR(j)                                                                                   \
    const __m512i i##j = load_idx(ix + (j) * 16);                                                 \
    const __m512 w##j = _mm512_loadu_ps(wv + (j) * 16);
#define FMA8(a, x)                                                                                \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i0, x), w0, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i1, x), w1, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i2, x), w2, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i3, x), w3, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i4, x), w4, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i5, x), w5, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i6, x), w6, a);                                     \
    a = _mm512_fmadd_ps(_mm512_permutexvar_ps(i7, x), w7, a);

/* P interior positions, K = 8 (accumulators in a fully unrolled array: the asm of every
 * variant has no zmm stack access inside the input-block loop). */
#define DEF_TILE(NP)                                                                              \
    static void tile##NP##_k8(const sk_nchwc_args *a, const float *const *xrow, int nrows,        \
                              int64_t col0, const int32_t *idx_ob, const float *val_ob,           \
                              const float *bias, float *y, const float *sum) {                    \
        __m512 acc[NP];                                                                           \
        const __m512 init = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();                   \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) acc[p] = init;                      \
        const int64_t xs = 16 * a->sw, ib_stride = a->h * a->w * 16;                              \
        for (int r = 0; r < nrows; r++) {                                                         \
            const int kh = a->row_kh[r];                                                          \
            for (int kw = 0; kw < a->kw; kw++) {                                                  \
                const float *xb = xrow[r] + (col0 * a->sw - a->pl + kw * a->dw) * 16;             \
                const int64_t tap = (int64_t)kh * a->kw + kw;                                     \
                const int32_t *ix = idx_ob + tap * a->ib * 8 * 16;                                \
                const float *wv = val_ob + tap * a->ib * 8 * 16;                                  \
                for (int64_t ib = 0; ib < a->ib; ib++, ix += 8 * 16, wv += 8 * 16) {              \
                    const float *xp = xb + ib * ib_stride;                                        \
                    PAIR(0) PAIR(1) PAIR(2) PAIR(3) PAIR(4) PAIR(5) PAIR(6) PAIR(7)               \
                    _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) {                       \
                        const __m512 xv = _mm512_loadu_ps(xp + p * xs);                           \
                        FMA8(acc[p], xv)                                                          \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                                     \
            _mm512_storeu_ps(y + p * 16, finish(acc[p], sum ? sum + p * 16 : NULL, a));           \
    }
DEF_TILE(12)
DEF_TILE(4)

/* Up to 4 positions anywhere in the row (borders, tails), K = 8: a position's input vector is
 * a masked load, all-zero where its tap falls into the padding (no fault: masked-off lanes
 * are not read). One position at a time cost ~3x a tiled one: 3 of 7 columns of ResNet-50's
 * last stage are borders. */
#define DEF_MTILE(NP) \
static void tile##NP##m_k8(const sk_nchwc_args *a, const float *const *xrow, int nrows, int64_t col0, int npos, \
                      const int32_t *idx_ob, const float *val_ob, const float *bias, float *y, \
                      const float *sum) { \
    __m512 acc[NP]; \
    const __m512 init = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps(); \
    _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) acc[p] = init; \
    const int64_t ib_stride = a->h * a->w * 16; \
    for (int r = 0; r < nrows; r++) { \
        const int kh = a->row_kh[r]; \
        for (int kw = 0; kw < a->kw; kw++) { \
            int64_t off[NP]; \
            __mmask16 m[NP]; \
            _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) { \
                const int64_t iw = (col0 + p) * a->sw - a->pl + kw * a->dw; \
                const int ok = p < npos && iw >= 0 && iw < a->w; \
                off[p] = ok ? iw * 16 : 0; \
                m[p] = ok ? 0xFFFF : 0; \
            } \
            const int64_t tap = (int64_t)kh * a->kw + kw; \
            const int32_t *ix = idx_ob + tap * a->ib * 8 * 16; \
            const float *wv = val_ob + tap * a->ib * 8 * 16; \
            for (int64_t ib = 0; ib < a->ib; ib++, ix += 8 * 16, wv += 8 * 16) { \
                const float *xp = xrow[r] + ib * ib_stride; \
                PAIR(0) PAIR(1) PAIR(2) PAIR(3) PAIR(4) PAIR(5) PAIR(6) PAIR(7) \
                _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) { \
                    const __m512 xv = _mm512_maskz_loadu_ps(m[p], xp + off[p]); \
                    FMA8(acc[p], xv) \
                } \
            } \
        } \
    } \
    /* Constant indices only: a loop to npos would make GCC keep acc in memory (stored to the \
     * stack after every FMA of the input-block loop). */ \
    _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) \
        if (p < npos) _mm512_storeu_ps(y + p * 16, finish(acc[p], sum ? sum + p * 16 : NULL, a)); \
}
DEF_MTILE(4)
DEF_MTILE(3)
DEF_MTILE(2)

/* One position, any K, any column (taps outside the input skipped): borders and tails. */
static void one_pos(const sk_nchwc_args *a, const float *xrow[], int nrows, int64_t col,
                    const int32_t *idx_ob, const float *val_ob, const float *bias, float *y,
                    const float *sum) {
    __m512 acc = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
    const int64_t ib_stride = a->h * a->w * 16, k = a->k;
    for (int r = 0; r < nrows; r++) {
        const int kh = a->row_kh[r];
        for (int kw = 0; kw < a->kw; kw++) {
            const int64_t iw = col * a->sw - a->pl + kw * a->dw;
            if (iw < 0 || iw >= a->w) continue;
            const int64_t tap = (int64_t)kh * a->kw + kw;
            const int32_t *ix = idx_ob + tap * a->ib * k * 16;
            const float *wv = val_ob + tap * a->ib * k * 16;
            for (int64_t ib = 0; ib < a->ib; ib++) {
                const __m512 xv = _mm512_loadu_ps(xrow[r] + ib * ib_stride + iw * 16);
                for (int64_t j = 0; j < k; j++, ix += 16, wv += 16)
                    acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(load_idx(ix), xv), _mm512_loadu_ps(wv), acc);
            }
        }
    }
    _mm512_storeu_ps(y, finish(acc, sum, a));
}

/* Weight bytes of the output blocks that share one pass over the input (kept in L2). */
#define GROUP_BYTES (256 << 10)

static void body(const void *args, int tid, int nth) {
    const sk_nchwc_args *a = args;
    const int64_t pack_ob = (int64_t)a->kh * a->kw * a->ib * a->k * 16;
    /* Output blocks in groups whose packed weights fit in L2: each input tile (all input
     * blocks, in L1) serves every block of the group before the next tile is read. One
     * block at a time re-read the whole input per block (from L3 for the 3 MB planes of
     * ResNet-50's first stage). */
    int64_t gob = GROUP_BYTES / (pack_ob * 5);
    gob = gob < 1 ? 1 : gob > a->ob ? a->ob : gob;
    const int64_t groups = sk_ceil_div(a->ob, gob);
    const int64_t rows = groups * a->batch * a->ho;
    /* Few rows (1x1 convs run as one row of the whole plane, small late layers): rows are cut
     * into chunks of whole 12-column tiles so that every thread gets work. */
    int64_t chunks = rows >= 4 * nth ? 1 : sk_ceil_div(4 * nth, rows);
    int64_t cw = sk_ceil_div(sk_ceil_div(a->wo, chunks), 12) * 12;
    chunks = sk_ceil_div(a->wo, cw);
    int64_t begin, end;
    sk_split(rows * chunks, tid, nth, &begin, &end);
    const int64_t plane_in = a->ib * a->h * a->w * 16, plane_out = a->ho * a->wo * 16;
    /* Interior columns: every tap's input column inside the row. */
    int64_t lo = (a->pl + a->sw - 1) / a->sw;
    int64_t hi = a->w - 1 - (int64_t)(a->kw - 1) * a->dw + a->pl;
    hi = hi < 0 ? 0 : hi / a->sw + 1;
    if (hi > a->wo) hi = a->wo;
    if (lo > hi) lo = hi;
    for (int64_t item = begin; item < end; item++) {
        const int64_t chunk = item % chunks, r = item / chunks;
        const int64_t oh = r % a->ho, b = (r / a->ho) % a->batch, g = r / (a->ho * a->batch);
        const int64_t ob0 = g * gob, ob1 = ob0 + gob < a->ob ? ob0 + gob : a->ob;
        const float *xrow[SK_NCHWC_MAX_KH];
        sk_nchwc_args row = *a;
        int nrows = 0;
        for (int kh = 0; kh < a->kh; kh++) {
            const int64_t ih = oh * a->sh - a->pt + kh * a->dh;
            if (ih < 0 || ih >= a->h) continue;
            xrow[nrows] = a->x + b * plane_in + ih * a->w * 16;
            row.row_kh[nrows++] = kh;
        }
        const int64_t c1 = (chunk + 1) * cw < a->wo ? (chunk + 1) * cw : a->wo;
        const int64_t in_hi = hi < c1 ? hi : c1;
        for (int64_t c = chunk * cw; c < c1;) {
            /* Interior positions in 12-wide tiles, then 4-wide ones; borders and the rest in
             * masked tiles of up to 4 (a masked tile costs about an interior 4-wide one, and
             * 4 positions one at a time ~3x that). Narrow rows (ResNet-50's 7x7 stage) are
             * masked tiles throughout (7 = 4 + 3). */
            const int64_t left = c1 - c;
            const int inside = c >= lo && in_hi - lo >= 12;
            const int width = a->k != 8                    ? 1
                              : inside && c + 12 <= in_hi  ? 12
                              : inside && c + 4 <= in_hi   ? 4
                                                           : (int)(left < 4 ? left : 4);
            const int masked = width < 12 && !(inside && c + width <= in_hi);
            for (int64_t ob = ob0; ob < ob1; ob++) {
                const int64_t out = (b * a->ob + ob) * plane_out + oh * a->wo * 16 + c * 16;
                const int32_t *ix = a->idx + ob * pack_ob;
                const float *wv = a->vals + ob * pack_ob, *bias = a->bias ? a->bias + ob * 16 : NULL;
                const float *sum = a->sum ? a->sum + out : NULL;
                if (a->k != 8) one_pos(&row, xrow, nrows, c, ix, wv, bias, a->y + out, sum);
                else if (width == 12) tile12_k8(&row, xrow, nrows, c, ix, wv, bias, a->y + out, sum);
                else if (!masked && width == 4) tile4_k8(&row, xrow, nrows, c, ix, wv, bias, a->y + out, sum);
                else if (width == 4) tile4m_k8(&row, xrow, nrows, c, width, ix, wv, bias, a->y + out, sum);
                else if (width == 3) tile3m_k8(&row, xrow, nrows, c, width, ix, wv, bias, a->y + out, sum);
                else if (width == 2) tile2m_k8(&row, xrow, nrows, c, width, ix, wv, bias, a->y + out, sum);
                else one_pos(&row, xrow, nrows, c, ix, wv, bias, a->y + out, sum);
            }
            c += width;
        }
    }
}

void sk_nchwc_conv_avx512(const sk_nchwc_args *a) {
    sk_nchwc_args flat = *a;
    if (a->kh == 1 && a->kw == 1 && a->sh == 1 && a->sw == 1 && a->pt == 0 && a->pl == 0
        && a->ho == a->h && a->wo == a->w) {
        /* A 1x1 conv maps position to position: the plane is one long row (full tiles). */
        flat.w = flat.wo = a->h * a->w;
        flat.h = flat.ho = 1;
    }
    sk_run_parallel(flat.threads, body, &flat);
}
#endif
