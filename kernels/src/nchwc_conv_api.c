/* Argument checks and dispatch of the NCHWc sparse convolution (sk_nchwc.h). */
#include <stddef.h>

#include "nchwc_conv_internal.h"
#include "sk.h"
#include "sk_nchwc.h"

static int64_t out_size(int64_t n, int k, int s, int d, int p0, int p1) {
    const int64_t span = (int64_t)(k - 1) * d + 1, padded = n + p0 + p1;
    return padded < span ? -1 : (padded - span) / s + 1;
}

int sk_nchwc_check_idx(const int32_t *idx, int64_t n) {
    if (n > 0 && !idx) return SK_ERR_NULL;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= 16) return SK_ERR_INDEX;
    return SK_OK;
}

int sk_nchwc_check_offs(const int32_t *offs, int64_t blocks, int64_t k, int64_t pairs) {
    if (!offs) return SK_ERR_NULL;
    if (offs[0] != 0 || offs[blocks] != pairs) return SK_ERR_SHAPE;
    for (int64_t i = 0; i < blocks; i++)
        if (offs[i + 1] < offs[i] || offs[i + 1] - offs[i] > k) return SK_ERR_SHAPE;
    return SK_OK;
}

int sk_nchwc_conv(const float *x, int64_t batch, int64_t ib, int64_t h, int64_t w, int64_t ob,
                  int64_t ho, int64_t wo, int kh, int kw, int sh, int sw, int pt, int pl, int pb, int pr,
                  int dh, int dw, int64_t k, const int32_t *offs, const int32_t *idx, const float *vals,
                  const float *bias, const float *sum, int act, float clip_lo, float clip_hi, float *y, int isa,
                  int threads) {
    if (batch < 0 || ib < 1 || h < 1 || w < 1 || ob < 1 || kh < 1 || kw < 1 || kh > SK_NCHWC_MAX_KH
        || sh < 1 || sw < 1 || dh < 1 || dw < 1 || pt < 0 || pl < 0 || pb < 0 || pr < 0 || k < 1
        || k > 16 || act < 0 || act > 2)
        return SK_ERR_SHAPE;
    if (out_size(h, kh, sh, dh, pt, pb) != ho || out_size(w, kw, sw, dw, pl, pr) != wo) return SK_ERR_SHAPE;
    if (!x || !y || !idx || !vals) return SK_ERR_NULL;
    if (isa != SK_ISA_AVX512 || !sk_isa_supported(isa)) return SK_ERR_ISA;
    if (batch == 0) return SK_OK;
    sk_nchwc_args a = {x, batch, ib, h, w, ob, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw, k, offs, idx, vals,
                       bias, sum, act, clip_lo, clip_hi, y, threads > 0 ? threads : sk_max_threads(), NULL, {0}};
#if defined(__x86_64__) || defined(_M_X64)
    return sk_nchwc_conv_avx512(&a);
#else
    (void)a;
    return SK_ERR_ISA;
#endif
}

int sk_nchwc_conv_dw(const float *x, int64_t batch, int64_t ib, int64_t h, int64_t w, const sk_nchwc_dw *d,
                     int64_t ob, int64_t ho, int64_t wo, int64_t k, const int32_t *offs, const int32_t *idx,
                     const float *vals, const float *bias, const float *sum, int act, float clip_lo, float clip_hi,
                     float *y, int isa, int threads) {
    if (!d) return SK_ERR_NULL;
    if (batch < 0 || ib < 1 || h < 1 || w < 1 || ob < 1 || d->kh < 1 || d->kw < 1 || d->kh * d->kw > 64
        || d->sh < 1 || d->sw < 1 || d->dh < 1 || d->dw < 1 || d->pt < 0 || d->pl < 0 || d->pb < 0 || d->pr < 0
        || d->act < 0 || d->act > 2 || k < 1 || k > 16 || act < 0 || act > 2)
        return SK_ERR_SHAPE;
    if (out_size(h, d->kh, d->sh, d->dh, d->pt, d->pb) != ho || out_size(w, d->kw, d->sw, d->dw, d->pl, d->pr) != wo)
        return SK_ERR_SHAPE;
    if (!x || !y || !idx || !vals || !d->w) return SK_ERR_NULL;
    if (isa != SK_ISA_AVX512 || !sk_isa_supported(isa)) return SK_ERR_ISA;
    if (batch == 0) return SK_OK;
#if defined(__x86_64__) || defined(_M_X64)
    const sk_nchwc_dw_args da = {d->w, d->bias, d->kh, d->kw, d->sh, d->sw, d->pt, d->pl, d->dh, d->dw,
                                 d->act, d->clip_lo, d->clip_hi};
    sk_nchwc_args a = {x, batch, ib, h, w, ob, ho, wo, 1, 1, 1, 1, 0, 0, 1, 1, k, offs, idx, vals,
                       bias, sum, act, clip_lo, clip_hi, y, threads > 0 ? threads : sk_max_threads(), &da, {0}};
    return sk_nchwc_conv_avx512(&a);
#else
    (void)threads, (void)offs, (void)bias, (void)sum, (void)clip_lo, (void)clip_hi;
    return SK_ERR_ISA;
#endif
}
