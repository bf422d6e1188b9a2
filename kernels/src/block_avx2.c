/* Block-sparse (BK x 16) x dense on AVX2 + FMA: the AVX-512 scheme on two 8-lane halves. */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "sk_internal.h"

#define BLK2_R 6

typedef struct {
    const float *x;
    int64_t ldx;
    const int32_t *kidx;
    const float *vals;
    int32_t b0, b1;
    int bk;
    float *y;
    int64_t ldy;
    int width;
} blk2_args;

static inline __attribute__((always_inline)) void blk2_mk(const int R, const blk2_args *p) {
    __m256 acc[R][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *v = p->vals;
    for (int32_t b = p->b0; b < p->b1; b++) {
        const float *xk = p->x + p->kidx[b];
        for (int i = 0; i < p->bk; i++) {
            const __m256 w0 = _mm256_loadu_ps(v), w1 = _mm256_loadu_ps(v + 8);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                const __m256 xv = _mm256_broadcast_ss(xk + r * p->ldx + i);
                acc[r][0] = _mm256_fmadd_ps(w0, xv, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(w1, xv, acc[r][1]);
            }
            v += SK_TILE;
        }
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(p->width), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(p->width - 8), lane);
    for (int r = 0; r < R; r++) {
        _mm256_maskstore_ps(p->y + r * p->ldy, m0, acc[r][0]);
        _mm256_maskstore_ps(p->y + r * p->ldy + 8, m1, acc[r][1]);
    }
}

typedef void (*blk2_fn)(const blk2_args *);
#define BLK2_DEF(R_) \
    static void blk2_mk_##R_(const blk2_args *p) { blk2_mk(R_, p); }
BLK2_DEF(1) BLK2_DEF(2) BLK2_DEF(3) BLK2_DEF(4) BLK2_DEF(5) BLK2_DEF(6)
static const blk2_fn BLK2[BLK2_R] = {blk2_mk_1, blk2_mk_2, blk2_mk_3,
                                      blk2_mk_4, blk2_mk_5, blk2_mk_6};

static void block_avx2_body(const void *args, int me, int nth) {
    const sk_block_args *a = args;
    const int64_t ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int tail = (int)(a->cols % SK_TILE);
    {
        const int64_t t_begin = ntiles * me / nth, t_end = ntiles * (me + 1) / nth;
        for (int64_t r0 = 0; r0 < a->rows; r0 += BLK2_R) {
            const int rr = (int)(a->rows - r0 < BLK2_R ? a->rows - r0 : BLK2_R);
            for (int64_t t = t_begin; t < t_end; t++) {
                const int32_t b0 = a->tile_ptr[t];
                blk2_args p = {a->x + r0 * a->ldx, a->ldx, a->kidx,
                               a->values + (int64_t)b0 * a->bk * SK_TILE, b0, a->tile_ptr[t + 1],
                               a->bk, a->y + r0 * a->ldy + t * SK_TILE, a->ldy,
                               (t + 1 == ntiles && tail) ? tail : SK_TILE};
                BLK2[rr - 1](&p);
            }
        }
    }
}

void sk_block_avx2(const sk_block_args *a) {
    sk_run_parallel(a->threads, block_avx2_body, a);
}
#endif
