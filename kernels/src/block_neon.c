/* Block-sparse (BK x 16) x dense on AArch64 NEON: four float32x4 quarters per block row,
 * each FMA'd with a scalar x element (vfmaq_n_f32). */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "sk_internal.h"

#define BLKN_R 4

static inline __attribute__((always_inline)) void blkn_mk(const int R, const sk_block_args *a,
                                                          int64_t t, int64_t r0) {
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
    for (int32_t b = a->tile_ptr[t]; b < a->tile_ptr[t + 1]; b++) {
        const float *xk = a->x + r0 * a->ldx + a->kidx[b];
        for (int i = 0; i < a->bk; i++) {
            const float *v = a->values + ((int64_t)b * a->bk + i) * SK_TILE;
            for (int q = 0; q < 4; q++) {
                const float32x4_t w = vld1q_f32(v + 4 * q);
                for (int r = 0; r < R; r++) acc[r][q] = vfmaq_n_f32(acc[r][q], w, xk[r * a->ldx + i]);
            }
        }
    }
    const int64_t c0 = t * SK_TILE;
    const int width = (int)(a->cols - c0 < SK_TILE ? a->cols - c0 : SK_TILE);
    for (int r = 0; r < R; r++) {
        float out[SK_TILE];
        for (int q = 0; q < 4; q++) vst1q_f32(out + 4 * q, acc[r][q]);
        memcpy(a->y + (r0 + r) * a->ldy + c0, out, (size_t)width * sizeof(float));
    }
}

static void block_neon_body(const void *args, int tid, int nth) {
    const sk_block_args *a = args;
    int64_t t_begin, t_end;
    sk_split(sk_ceil_div(a->cols, SK_TILE), tid, nth, &t_begin, &t_end);
    for (int64_t t = t_begin; t < t_end; t++)
        for (int64_t r0 = 0; r0 < a->rows; r0 += BLKN_R) {
            switch (a->rows - r0 < BLKN_R ? a->rows - r0 : BLKN_R) {
            case 1: blkn_mk(1, a, t, r0); break;
            case 2: blkn_mk(2, a, t, r0); break;
            case 3: blkn_mk(3, a, t, r0); break;
            default: blkn_mk(4, a, t, r0); break;
            }
        }
}

void sk_block_neon(const sk_block_args *a) { sk_run_parallel(a->threads, block_neon_body, a); }
#endif
