/* Sparse convolution in ORT's NCHWc layout: shared declarations (scheme in nchwc_conv_avx512.c). */
#ifndef SPARSEC_NCHWC_CONV_INTERNAL_H
#define SPARSEC_NCHWC_CONV_INTERNAL_H
#include <stdint.h>

#include "sk_internal.h"

#define SK_NCHWC_MAX_KH 16 /* kernel rows */

enum { SK_NCHWC_ACT_NONE = 0, SK_NCHWC_ACT_RELU = 1, SK_NCHWC_ACT_CLIP = 2 };

typedef struct {
    const float *x; /* [batch][ib][h][w][16] */
    int64_t batch, ib, h, w, ob, ho, wo;
    int kh, kw, sh, sw, pt, pl, dh, dw;
    int64_t k;              /* most pairs of any (output block, tap, input block) */
    const int32_t *offs;    /* [ob * kh * kw * ib + 1]: block i's pairs are offs[i]..offs[i+1];
                             * NULL: k pairs every block */
    const int32_t *idx;     /* [pairs][16] lane's input channel in the block */
    const float *vals;      /* same shape: the weights */
    const float *bias;      /* [ob * 16] or NULL */
    const float *sum;       /* like y, added before the activation, or NULL */
    int act;
    float clip_lo, clip_hi; /* SK_NCHWC_ACT_CLIP */
    float *y;               /* [batch][ob][ho][wo][16] */
    int threads;
    int row_kh[SK_NCHWC_MAX_KH]; /* per call of a row: the kernel rows inside the input */
} sk_nchwc_args;

#if defined(__x86_64__) || defined(_M_X64)
void sk_nchwc_conv_avx512(const sk_nchwc_args *a);
#endif

#endif
