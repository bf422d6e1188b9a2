/* Fused block-sparse attention (public C API, loaded through ctypes and the ORT custom op).
 *
 * Y[b, h] = softmax(scale * Q[b, h] K[b, g]^T + bias, masked) V[b, g], g = h / (Hq / Hkv),
 * fp32, row-major: Q [B, Hq, Sq, D], K [B, Hkv, Sk, D], V [B, Hkv, Sk, Dv], Y [B, Hq, Sq, Dv],
 * Sq <= Sk, query row i at position i + Sk - Sq. Key k is read by a query at position p when
 * (!causal || k <= p) and the block pair (p / block, k / block) is in the layout: per layout
 * head (1 or Hq of them) either a local window `local[h]` blocks (< 0: all) plus `sinks[h]`
 * leading blocks, or `mask` [layout_heads, mask_q, mask_k] of 0/1 bytes. `topk` (optional,
 * per layout head, >= 0) adds, per (batch, head, query block qb), the topk[h] key blocks kb
 * with the highest (sum of the call's Q rows in qb) . (mean of K rows in kb) among those the
 * static layout leaves out (kb <= qb if causal); ties to the lower kb. `bias` (optional)
 * is read at b*s0 + h*s1 + i*s2 + k*s3 (strides in elements, 0 to broadcast). Rows with no
 * allowed key give zeros. The semantics of com.sparsec.SparseAttention.
 */
#ifndef SPARSEC_SK_ATTN_H
#define SPARSEC_SK_ATTN_H
#include <stdint.h>

#define SK_ATTN_MAX_DIM 256

int sk_attention(const float *q, const float *k, const float *v, float *y, int64_t batch,
                 int64_t hq, int64_t hkv, int64_t sq, int64_t sk, int64_t d, int64_t dv,
                 float scale, int causal, int64_t block, int64_t layout_heads,
                 const int32_t *local, const int32_t *sinks, const int32_t *topk,
                 const int32_t *summary, int topk_score, const uint8_t *mask,
                 int64_t mask_q, int64_t mask_k, const float *bias, const int64_t *bias_stride,
                 int isa, int threads);

#endif
