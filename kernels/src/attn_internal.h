/* Block-sparse attention kernels: arguments shared by the ISA files (not public API). */
#ifndef SPARSEC_ATTN_INTERNAL_H
#define SPARSEC_ATTN_INTERNAL_H
#include <stdint.h>

#include "sk_internal.h"

typedef struct {
    const float *q, *k, *v; /* [B, Hq, Sq, D], [B, Hkv, Sk, D], [B, Hkv, Sk, Dv] */
    float *y;               /* [B, Hq, Sq, Dv] */
    int64_t batch, hq, hkv, sq, sk, d, dv;
    float scale;
    int causal;
    int64_t block;
    /* Layout: per layout head either (local[h], sinks[h]) in blocks (local < 0: all), or a
     * block mask [layout_heads, mask_q, mask_k] (absolute query block, key block); plus
     * topk[h] key blocks picked at run time from pooled Q.K (NULL when every topk is 0, so the
     * static path does no extra work). */
    int64_t layout_heads;
    const int32_t *local, *sinks, *topk;
    const uint8_t *mask;
    int64_t mask_q, mask_k;
    const float *bias; /* optional additive bias, element strides (0 = broadcast) */
    int64_t bias_stride[4];
    int64_t q_block0, q_blocks; /* absolute query blocks covered by the Sq query rows */
    int threads;
    const int32_t *summary; /* per layout head 0/1: left-out key blocks read as mean keys (NULL: none) */
    int topk_score;         /* 0: pooled q-sum . k-mean; 1: pooled query's softmax mass per key block */
} sk_attn_args;

static inline int sk_attn_block_allowed(const sk_attn_args *a, int lh, int64_t qb, int64_t kb) {
    if (a->causal && kb > qb) return 0;
    if (a->mask)
        return qb < a->mask_q && kb < a->mask_k && a->mask[(lh * a->mask_q + qb) * a->mask_k + kb];
    const int64_t w = a->local[lh], diff = qb - kb;
    const int64_t dist = a->causal ? diff : (diff < 0 ? -diff : diff);
    return w < 0 || dist < w || kb < a->sinks[lh];
}

int sk_attn_scalar(const sk_attn_args *a);
#if defined(__x86_64__) || defined(_M_X64)
int sk_attn_avx2(const sk_attn_args *a);
int sk_attn_avx512(const sk_attn_args *a);
#endif
#if defined(__aarch64__)
int sk_attn_neon(const sk_attn_args *a);
#endif

#endif
