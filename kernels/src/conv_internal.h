/* Sparse 2-D convolution (NCHW, spatial positions in vector lanes): shared declarations.
 *
 * Every convolution runs as one sparse x dense product over a "virtual grid" of output
 * positions: the input is (when needed) padded and split into stride x stride phase planes
 * of Hq x Wq, so that each kept weight (ci, kh, kw) reads the plane at a fixed element offset
 * from the output position q = h * Wq + w. A row of the grid holds Wq >= Wo positions; the
 * extra ones are computed and dropped at the store. 1x1 stride-1 unpadded convs read the
 * input in place (Wq = Wo, no copy). The idea follows XNNPACK's f32-spmm (sparse 1x1 NCHW,
 * Elsen et al. "Fast Sparse ConvNets"); the offsets generalize it to k x k and strides.
 *
 * Packed weight (kernels/packing_conv.py): output channels in lockstep pairs (SK_CONV_G rows
 * share one step count, the shorter row padded with zero weights), rows permuted so that
 * paired rows have similar counts. For group g, step s, row j of the pair:
 *   slot = (row_ptr[g] + s) * G + j,  vals[slot], taps[slot] = ci*KH*KW + kh*KW + kw,
 *   perm[g*G + j] = output channel (-1: padding row, not stored).
 * N:M weights have equal counts per row: no padding at all. Input channels are cut into
 * chunks (row_ptr[c * groups + g]); partial sums of a block live in a per-thread scratch
 * between chunks, so a chunk's input rows for the block stay in L1.
 */
#ifndef SPARSEC_CONV_INTERNAL_H
#define SPARSEC_CONV_INTERNAL_H
#include <stdint.h>

#include "sk_internal.h"

#define SK_CONV_G 2

enum { SK_CONV_ACT_NONE = 0, SK_CONV_ACT_RELU = 1, SK_CONV_ACT_RELU6 = 2 };

/* Work of one call over prepared planes. */
typedef struct {
    const float *x;       /* planes of batch item 0 */
    int64_t x_batch;      /* elements between batch items' planes */
    int64_t x_avail;      /* readable elements from x + item start (for the tail masks) */
    int64_t batch, q, wq, wo, ho;
    int64_t groups;       /* row pairs */
    int64_t chunks;       /* input-channel chunks */
    float *scratch;       /* chunks > 1: per thread, groups * G * 64 floats */
    const int32_t *perm, *row_ptr, *off;
    const float *vals, *bias;
    int act;
    float *y;
    int64_t y_batch, y_plane; /* y_plane = ho * wo */
    int threads;
} sk_conv_args;

#define SK_CONV_MAX_BLOCK 64 /* positions per block, the widest ISA's */

void sk_conv_scalar(const sk_conv_args *a);
#if defined(__x86_64__) || defined(_M_X64)
void sk_conv_avx2(const sk_conv_args *a);
void sk_conv_avx512(const sk_conv_args *a);
#endif

/* Work items: (batch item, position block, row chunk), chunked so every thread gets some. */
static inline void sk_conv_items(const sk_conv_args *a, int64_t block, int nth, int64_t *pblocks,
                                 int64_t *rchunks, int64_t *chunk) {
    *pblocks = sk_ceil_div(a->q, block);
    int64_t want = 4 * (int64_t)nth, have = *pblocks * a->batch;
    int64_t rc = have >= want ? 1 : sk_ceil_div(want, have);
    if (rc > a->groups) rc = a->groups;
    if (rc < 1) rc = 1;
    *chunk = sk_ceil_div(a->groups, rc);
    *rchunks = sk_ceil_div(a->groups, *chunk);
}

static inline float sk_conv_act(float v, int act) {
    if (act == SK_CONV_ACT_NONE) return v;
    v = v > 0.0f ? v : 0.0f;
    return act == SK_CONV_ACT_RELU6 && v > 6.0f ? 6.0f : v;
}

#endif
