/* Sparse convolution in ORT's NCHWc layout: shared declarations (scheme in nchwc_conv_avx512.c). */
#ifndef SPARSEC_NCHWC_CONV_INTERNAL_H
#define SPARSEC_NCHWC_CONV_INTERNAL_H
#include <stdint.h>

#include "sk_internal.h"

#define SK_NCHWC_MAX_KH 16 /* kernel rows */

enum { SK_NCHWC_ACT_NONE = 0, SK_NCHWC_ACT_RELU = 1, SK_NCHWC_ACT_CLIP = 2 };

/* A depthwise conv computed inside the 1x1 sparse conv that reads its output (sk_nchwc_dw in
 * sk_nchwc.h): the conv's x is then the depthwise input, h x w its plane. */
typedef struct {
    const float *w;    /* [ib][kh][kw][16] */
    const float *bias; /* [ib * 16] or NULL */
    int kh, kw, sh, sw, pt, pl, dh, dw;
    int act;
    float clip_lo, clip_hi;
} sk_nchwc_dw_args;

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
    const sk_nchwc_dw_args *dwop; /* NULL, or a depthwise conv ahead of this 1x1 (x is its input) */
    int row_kh[SK_NCHWC_MAX_KH]; /* per call of a row: the kernel rows inside the input */
} sk_nchwc_args;

#if defined(__x86_64__) || defined(_M_X64)
int sk_nchwc_conv_avx512(const sk_nchwc_args *a); /* SK_OK, or SK_ERR_MEMORY (a depthwise scratch) */
/* Output row oh of image x's depthwise conv (a->dwop), every input block, into buf [ib][wo][16]
 * (nchwc_dw_avx512.c). */
void sk_nchwc_dw_row(const sk_nchwc_args *a, const float *x, int64_t oh, float *buf);
#endif

#endif
