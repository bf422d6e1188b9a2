/* Depthwise convolution rows in ORT's NCHWc layout (16 channels a block, AVX-512), for the
 * sparse 1x1 conv that runs a depthwise conv inside it (nchwc_conv_avx512.c, body_dw).
 *
 * A depthwise conv has no reduction over channels: lane l of an output vector is channel l's
 * taps times its inputs, one FMA per tap and position. What limits it is loads: one input
 * vector per tap and position (what a per-position tap table gives, and MLAS's NCHWc depthwise
 * kernel on this machine runs at about that speed) is 9 loads per 9 FMAs at 3x3. Here a row
 * segment of NP outputs loads its (NP - 1) * S + KW input vectors of each kernel row once into
 * registers and every tap reuses them: 10 loads for 24 FMAs (3x3, stride 1, NP 8). Columns
 * outside the input are masked loads (all-zero lanes, nothing read), rows outside are skipped.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "nchwc_conv_internal.h"

/* The activation as a clamp (none: +-inf, relu: 0..inf): no branch per store. */
static void dw_bounds(const sk_nchwc_dw_args *d, __m512 *lo, __m512 *hi) {
    const float inf = __builtin_inff();
    *lo = _mm512_set1_ps(d->act == SK_NCHWC_ACT_CLIP ? d->clip_lo : d->act == SK_NCHWC_ACT_RELU ? 0.0f : -inf);
    *hi = _mm512_set1_ps(d->act == SK_NCHWC_ACT_CLIP ? d->clip_hi : inf);
}

/* NP outputs (npos stored) of output row oh from column c0, dilation 1, horizontal stride S,
 * for every input block c: into out + c * cstride + p * 16. The column masks are the same for
 * every block and kernel row: computed once a call. */
#define DEF_DWROW(NP, KW, S)                                                                      \
    static __attribute__((noinline)) void dwrow##NP##_k##KW##_s##S(const sk_nchwc_args *a, const float *x, int64_t oh, \
                                                                  int64_t c0, int npos, float *out, int64_t cstride) { \
        const sk_nchwc_dw_args *d = a->dwop;                                                      \
        enum { NX = (NP - 1) * S + KW };                                                          \
        const int64_t iw0 = c0 * S - d->pl, plane_in = a->h * a->w * 16, taps = (int64_t)d->kh * KW; \
        __mmask16 cm[NX];                                                                         \
        for (int j = 0; j < NX; j++) cm[j] = iw0 + j >= 0 && iw0 + j < a->w ? 0xFFFF : 0;         \
        __m512 lo, hi;                                                                            \
        dw_bounds(d, &lo, &hi);                                                                   \
        for (int64_t c = 0; c < a->ib; c++) {                                                     \
            const float *xb = x + c * plane_in, *wb = d->w + c * taps * 16;                       \
            const __m512 init = d->bias ? _mm512_loadu_ps(d->bias + c * 16) : _mm512_setzero_ps(); \
            __m512 acc[NP];                                                                       \
            _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) acc[p] = init;                  \
            for (int kh = 0; kh < d->kh; kh++) {                                                  \
                const int64_t ih = oh * d->sh - d->pt + (int64_t)kh * d->dh;                      \
                if (ih < 0 || ih >= a->h) continue;                                               \
                const float *xr = xb + (ih * a->w + iw0) * 16; /* column -1 and on: masked */   \
                const float *wk = wb + kh * KW * 16;                                              \
                __m512 xv[NX];                                                                    \
                _Pragma("GCC unroll 32") for (int j = 0; j < NX; j++)                             \
                    xv[j] = _mm512_maskz_loadu_ps(cm[j], xr + j * 16);                            \
                _Pragma("GCC unroll 8") for (int kw = 0; kw < KW; kw++) {                         \
                    const __m512 wv = _mm512_loadu_ps(wk + kw * 16);                              \
                    _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                         \
                        acc[p] = _mm512_fmadd_ps(xv[p * S + kw], wv, acc[p]);                     \
                }                                                                                 \
            }                                                                                     \
            float *o = out + c * cstride;                                                         \
            _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                                 \
                if (p < npos) _mm512_storeu_ps(o + p * 16, _mm512_min_ps(_mm512_max_ps(acc[p], lo), hi)); \
        }                                                                                         \
    }
DEF_DWROW(8, 3, 1)
DEF_DWROW(8, 3, 2)
DEF_DWROW(8, 5, 1)
DEF_DWROW(6, 5, 2)

typedef void (*dwrow_fn)(const sk_nchwc_args *, const float *, int64_t, int64_t, int, float *, int64_t);

/* Any other geometry (dilation, other widths or strides): one position at a time. */
static void dw_position(const sk_nchwc_args *a, const float *xb, const float *wb, __m512 init, int64_t oh,
                        int64_t ow, float *out) {
    const sk_nchwc_dw_args *d = a->dwop;
    __m512 acc = init, lo, hi;
    for (int kh = 0; kh < d->kh; kh++) {
        const int64_t ih = oh * d->sh - d->pt + (int64_t)kh * d->dh;
        if (ih < 0 || ih >= a->h) continue;
        for (int kw = 0; kw < d->kw; kw++) {
            const int64_t iw = ow * d->sw - d->pl + (int64_t)kw * d->dw;
            if (iw < 0 || iw >= a->w) continue;
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(xb + (ih * a->w + iw) * 16),
                                  _mm512_loadu_ps(wb + (kh * d->kw + kw) * 16), acc);
        }
    }
    dw_bounds(d, &lo, &hi);
    _mm512_storeu_ps(out, _mm512_min_ps(_mm512_max_ps(acc, lo), hi));
}

void sk_nchwc_dw_row(const sk_nchwc_args *a, const float *x, int64_t oh, float *buf) {
    const sk_nchwc_dw_args *d = a->dwop;
    const int64_t plane_in = a->h * a->w * 16, taps = (int64_t)d->kh * d->kw;
    dwrow_fn row = NULL;
    int np = 8;
    if (d->dw == 1 && d->kw == 3 && d->sw == 1) row = dwrow8_k3_s1;
    if (d->dw == 1 && d->kw == 3 && d->sw == 2) row = dwrow8_k3_s2;
    if (d->dw == 1 && d->kw == 5 && d->sw == 1) row = dwrow8_k5_s1;
    if (d->dw == 1 && d->kw == 5 && d->sw == 2) row = dwrow6_k5_s2, np = 6;
    if (row) {
        for (int64_t c0 = 0; c0 < a->wo; c0 += np)
            row(a, x, oh, c0, (int)(a->wo - c0 < np ? a->wo - c0 : np), buf + c0 * 16, a->wo * 16);
        return;
    }
    for (int64_t c = 0; c < a->ib; c++) {
        const float *xb = x + c * plane_in, *wb = d->w + c * taps * 16;
        const __m512 init = d->bias ? _mm512_loadu_ps(d->bias + c * 16) : _mm512_setzero_ps();
        for (int64_t ow = 0; ow < a->wo; ow++) dw_position(a, xb, wb, init, oh, ow, buf + (c * a->wo + ow) * 16);
    }
}
#endif
