/* sparsec sparse 2-D convolution in ONNX Runtime's NCHWc layout (16-channel blocks, fp32,
 * AVX-512): public C API. Scheme in nchwc_conv_avx512.c; packing in kernels/packing_nchwc.py. */
#ifndef SPARSEC_SK_NCHWC_H
#define SPARSEC_SK_NCHWC_H
#include <stdint.h>

/* y[batch][ob][ho][wo][16] = act(conv(x[batch][ib][h][w][16], W) + bias + sum), act 0 none,
 * 1 relu, 2 clip(lo, hi). Packed W: pairs of 16-lane vectors, idx and vals [pairs][16]: per
 * block (output block, tap, input block) in order [ob][kh][kw][ib], lane l of its j-th pair is
 * the j-th kept input channel of output channel 16*ob+l within the input block, and its
 * weight (padding pairs hold weight 0). Block i's pairs are offs[i]..offs[i+1] (offs has
 * ob*kh*kw*ib + 1 entries, each block at most k <= 16 pairs); offs NULL: k pairs per block.
 * bias ([ob*16]) and sum (like y) may be NULL. Output size from the usual formula;
 * SK_ERR_SHAPE if it is not (ho, wo). Needs AVX-512 (SK_ERR_ISA otherwise); isa 2 only. */
int sk_nchwc_conv(const float *x, int64_t batch, int64_t ib, int64_t h, int64_t w, int64_t ob,
                  int64_t ho, int64_t wo, int kh, int kw, int sh, int sw, int pt, int pl, int pb, int pr,
                  int dh, int dw, int64_t k, const int32_t *offs, const int32_t *idx, const float *vals,
                  const float *bias, const float *sum, int act, float clip_lo, float clip_hi, float *y, int isa,
                  int threads);

/* A depthwise convolution (one channel a group) whose output only a 1x1 stride-1 conv reads,
 * run inside that conv by sk_nchwc_conv_dw: its output is never written to memory. w
 * [ib][kh][kw][16] (ORT's NCHWc depthwise layout: channel 16*b+l of block b in lane l), bias
 * [ib*16] or NULL, act and clip as sk_nchwc_conv's. */
typedef struct {
    const float *w, *bias;
    int kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, act;
    float clip_lo, clip_hi;
} sk_nchwc_dw;

/* y[batch][ob][ho][wo][16] = act(conv1x1(dw(x[batch][ib][h][w][16])) + bias + sum): sk_nchwc_conv
 * of a 1x1 packed weight (kh = kw = 1) over the depthwise conv's output; (ho, wo) is the
 * depthwise output plane. */
int sk_nchwc_conv_dw(const float *x, int64_t batch, int64_t ib, int64_t h, int64_t w, const sk_nchwc_dw *dw,
                     int64_t ob, int64_t ho, int64_t wo, int64_t k, const int32_t *offs, const int32_t *idx,
                     const float *vals, const float *bias, const float *sum, int act, float clip_lo, float clip_hi,
                     float *y, int isa, int threads);

/* Checks of a packed weight (every idx entry < 16; offs from 0, non-decreasing, at most k
 * pairs a block), for callers that check once at creation. */
int sk_nchwc_check_idx(const int32_t *idx, int64_t n);
int sk_nchwc_check_offs(const int32_t *offs, int64_t blocks, int64_t k, int64_t pairs);


#endif
