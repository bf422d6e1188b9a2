/* Block-sparse (BK x 16 blocks) x dense on AVX-512.
 *
 * A block row is one zmm of 16 columns; every row of the register block multiplies it by
 * a broadcast x element (folded into the FMA as a memory operand), so the inner loop is as
 * dense-GEMM-like as the sparsity allows. Each thread owns a contiguous range of tiles and
 * walks row blocks outermost: the x rows of a block stay in L2 while the thread's blocks
 * stream, and the whole packed weight (10-20% of dense) is re-read from L3, not DRAM.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "sk_internal.h"

#define BLK_R 8

typedef struct {
    const float *x;
    int64_t ldx;
    const int32_t *kidx;
    const float *vals; /* block b0 */
    int32_t b0, b1;
    int bk;
    float *y;
    int64_t ldy;
    __mmask16 mask;
} blk_mk_args;

static inline __attribute__((always_inline)) void blk_mk(const int R, const blk_mk_args *p) {
    __m512 acc[R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const float *v = p->vals;
    for (int32_t b = p->b0; b < p->b1; b++) {
        const float *xk = p->x + p->kidx[b];
        for (int i = 0; i < p->bk; i++) {
            const __m512 w = _mm512_loadu_ps(v);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(w, _mm512_set1_ps(xk[r * p->ldx + i]), acc[r]);
            v += SK_TILE;
        }
    }
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(p->y + r * p->ldy, p->mask, acc[r]);
}

/* Batch 1: four partial sums so the FMA latency chain does not bound the block stream. */
static void blk_mk_gemv(const blk_mk_args *p) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    const float *v = p->vals;
    int q = 0;
    for (int32_t b = p->b0; b < p->b1; b++) {
        const float *xk = p->x + p->kidx[b];
        for (int i = 0; i < p->bk; i++) {
            acc[q] = _mm512_fmadd_ps(_mm512_loadu_ps(v), _mm512_set1_ps(xk[i]), acc[q]);
            q = (q + 1) & 3;
            v += SK_TILE;
        }
    }
    const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_mask_storeu_ps(p->y, p->mask, s);
}

typedef void (*blk_mk_fn)(const blk_mk_args *);
#define BLK_MK_DEF(R_) \
    static void blk_mk_##R_(const blk_mk_args *p) { blk_mk(R_, p); }
BLK_MK_DEF(1) BLK_MK_DEF(2) BLK_MK_DEF(3) BLK_MK_DEF(4) BLK_MK_DEF(5) BLK_MK_DEF(6)
BLK_MK_DEF(7) BLK_MK_DEF(8)
static const blk_mk_fn BLK_MK[BLK_R] = {blk_mk_gemv, blk_mk_2, blk_mk_3, blk_mk_4,
                                         blk_mk_5,   blk_mk_6, blk_mk_7, blk_mk_8};

static void block_avx512_body(const void *args, int me, int nth) {
    const sk_block_args *a = args;
    const int64_t ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int tail = (int)(a->cols % SK_TILE);
    const __mmask16 tail_mask = tail ? (__mmask16)((1u << tail) - 1) : (__mmask16)0xFFFF;
    {
        const int64_t t_begin = ntiles * me / nth, t_end = ntiles * (me + 1) / nth;
        for (int64_t r0 = 0; r0 < a->rows; r0 += BLK_R) {
            const int rr = (int)(a->rows - r0 < BLK_R ? a->rows - r0 : BLK_R);
            for (int64_t t = t_begin; t < t_end; t++) {
                const int32_t b0 = a->tile_ptr[t];
                blk_mk_args p = {a->x + r0 * a->ldx,
                                 a->ldx,
                                 a->kidx,
                                 a->values + (int64_t)b0 * a->bk * SK_TILE,
                                 b0,
                                 a->tile_ptr[t + 1],
                                 a->bk,
                                 a->y + r0 * a->ldy + t * SK_TILE,
                                 a->ldy,
                                 t + 1 == ntiles ? tail_mask : (__mmask16)0xFFFF};
                BLK_MK[rr - 1](&p);
            }
        }
    }
}

void sk_block_avx512(const sk_block_args *a) {
    (void)blk_mk_1;
    sk_run_parallel(a->threads, block_avx512_body, a);
}
#endif
