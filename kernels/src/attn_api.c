/* Block-sparse attention entry point: argument checks and ISA dispatch. */
#include <stddef.h>

#include "attn_internal.h"
#include "sk_attn.h"

int sk_attention(const float *q, const float *k, const float *v, float *y, int64_t batch,
                 int64_t hq, int64_t hkv, int64_t sq, int64_t sk, int64_t d, int64_t dv,
                 float scale, int causal, int64_t block, int64_t layout_heads,
                 const int32_t *local, const int32_t *sinks, const int32_t *topk,
                 const int32_t *summary, int topk_score, const uint8_t *mask,
                 int64_t mask_q, int64_t mask_k, const float *bias, const int64_t *bias_stride,
                 int isa, int threads) {
    if (batch < 0 || hq < 1 || hkv < 1 || hq % hkv || sq < 0 || sk < 1 || sq > sk || d < 1 ||
        d > SK_ATTN_MAX_DIM || dv < 1 || dv > SK_ATTN_MAX_DIM || block < 1 || block > 1024 ||
        (causal != 0 && causal != 1) || (layout_heads != 1 && layout_heads != hq))
        return SK_ERR_SHAPE;
    if (!q || !k || !v || !y || (!mask && (!local || !sinks)) || (bias && !bias_stride))
        return SK_ERR_NULL;
    if (mask && (mask_q < 1 || mask_k < 1)) return SK_ERR_SHAPE;
    /* All-zero top-k is the static layout: drop it so the kernel skips the pre-pass. */
    int dynamic = 0;
    for (int64_t h = 0; topk && h < layout_heads; h++) {
        if (topk[h] < 0) return SK_ERR_SHAPE;
        dynamic |= topk[h] > 0;
    }
    /* Summary keys (0/1 per head; all 0: none). */
    int summarised = 0;
    for (int64_t h = 0; summary && h < layout_heads; h++) {
        if (summary[h] != 0 && summary[h] != 1) return SK_ERR_SHAPE;
        summarised |= summary[h];
    }
    if (topk_score != 0 && topk_score != 1) return SK_ERR_SHAPE;
    if (!sk_isa_supported(isa)) return SK_ERR_ISA;
    if (batch == 0 || sq == 0) return SK_OK;
    const int64_t off = sk - sq;
    sk_attn_args a = {q, k, v, y, batch, hq, hkv, sq, sk, d, dv, scale, causal, block,
                      layout_heads, local, sinks, dynamic ? topk : NULL, mask, mask_q, mask_k, bias, {0, 0, 0, 0},
                      off / block, (sq - 1 + off) / block - off / block + 1,
                      threads > 0 ? threads : sk_max_threads(), summarised ? summary : NULL, topk_score};
    if (bias)
        for (int i = 0; i < 4; i++) a.bias_stride[i] = bias_stride[i];
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case SK_ISA_AVX512: return sk_attn_avx512(&a);
    case SK_ISA_AVX2: return sk_attn_avx2(&a);
#endif
#if defined(__aarch64__)
    case SK_ISA_NEON: return sk_attn_neon(&a);
#endif
    default: return sk_attn_scalar(&a);
    }
}
