/* N:M sparse x dense on AVX-512 (F, DQ, BW, VL).
 *
 * One zmm holds the kept values of 16 output columns for one (group, slot). The x value
 * each lane needs is fetched with an in-register permute of the group's M inputs, so
 * values and 2/3/4-bit positions stream strictly sequentially (batch 1 is bound by that
 * stream) and a decoded index vector is reused by every row of the register block
 * (batch >= 32 is bound by permute + FMA issue). Register block: NM_R rows x NM_T tiles.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>

#include "sk_internal.h"

#define NM_R 4
#define NM_T 4
/* Bytes of packed values per K-chunk and tile group kept hot in L2 across row blocks. */
#define NM_CHUNK_BYTES (96 * 1024)

typedef struct {
    const float *x;
    int64_t ldx, g0, g1;
    const float *vals;     /* record (t0, g0, 0) */
    const uint16_t *meta;  /* record (t0, g0, 0) */
    int64_t tile_vals, tile_meta; /* stride between tiles, in elements */
    int n;
    float *y;
    int64_t ldy;
    __mmask16 last_mask; /* store mask of the last tile of this call */
    int accumulate;
} nm_mk_args;

static inline __attribute__((always_inline)) __m512i nm_decode(const int M, const uint16_t *md) {
    if (M == 4) {
        const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                             28, 30);
        return _mm512_srlv_epi32(_mm512_set1_epi32((int)sk_load_u32(md)), sh); /* bits 1:0 */
    }
    if (M == 8) {
        const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                             28, 30);
        const __m512i lo = _mm512_srlv_epi32(_mm512_set1_epi32((int)sk_load_u32(md)), sh);
        const __m512i hi = _mm512_maskz_mov_epi32((__mmask16)md[2], _mm512_set1_epi32(4));
        /* (lo & 3) | hi: bit 3 must be clear, vpermps reads bits 3:0 */
        return _mm512_ternarylogic_epi32(lo, _mm512_set1_epi32(3), hi, 0xEA);
    }
    const __m512i sh = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    return _mm512_srlv_epi32(_mm512_set1_epi64((long long)sk_load_u64(md)), sh); /* bits 3:0 */
}

static inline __attribute__((always_inline)) __m512 nm_load_x(const int M, const float *p) {
    if (M == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
    if (M == 8) return _mm512_broadcast_f32x8(_mm256_loadu_ps(p));
    return _mm512_loadu_ps(p);
}

static inline __attribute__((always_inline)) __m512 nm_gather(const int M, __m512 xg, __m512i idx) {
    if (M == 4) return _mm512_permutevar_ps(xg, idx); /* in-lane, cheaper than vpermps */
    return _mm512_permutexvar_ps(idx, xg);
}

static inline __attribute__((always_inline)) void nm_mk(const int M, const int R, const int T,
                                                        const nm_mk_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    const int n = p->n;
    __m512 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            const __mmask16 mk = t == T - 1 ? p->last_mask : (__mmask16)0xFFFF;
            acc[r][t] = p->accumulate ? _mm512_maskz_loadu_ps(mk, p->y + r * p->ldy + t * SK_TILE)
                                      : _mm512_setzero_ps();
        }
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    for (int64_t g = p->g0; g < p->g1; g++) {
        __m512 xg[R];
        for (int r = 0; r < R; r++) xg[r] = nm_load_x(M, p->x + r * p->ldx + g * M);
        for (int j = 0; j < n; j++) {
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m512i idx = nm_decode(M, meta + t * p->tile_meta + j * W);
                const __m512 v = _mm512_loadu_ps(vals + t * p->tile_vals + j * SK_TILE);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++)
                    acc[r][t] = _mm512_fmadd_ps(v, nm_gather(M, xg[r], idx), acc[r][t]);
            }
        }
        vals += n * SK_TILE;
        meta += n * W;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            const __mmask16 mk = t == T - 1 ? p->last_mask : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(p->y + r * p->ldy + t * SK_TILE, mk, acc[r][t]);
        }
}

typedef void (*nm_mk_fn)(const nm_mk_args *);
#define NM_MK_DEF(M_, R_, T_) \
    static void nm_mk_##M_##_##R_##_##T_(const nm_mk_args *p) { nm_mk(M_, R_, T_, p); }
#define NM_MK_ROWS(M_, T_) \
    NM_MK_DEF(M_, 1, T_) NM_MK_DEF(M_, 2, T_) NM_MK_DEF(M_, 3, T_) NM_MK_DEF(M_, 4, T_)
NM_MK_ROWS(4, 1) NM_MK_ROWS(4, 4) NM_MK_ROWS(8, 1) NM_MK_ROWS(8, 4) NM_MK_ROWS(16, 1)
NM_MK_ROWS(16, 4)
#define NM_MK_ROW_TABLE(M_, T_) \
    {nm_mk_##M_##_1_##T_, nm_mk_##M_##_2_##T_, nm_mk_##M_##_3_##T_, nm_mk_##M_##_4_##T_}
/* [M index][T index (1, NM_T)][rows - 1] */
static const nm_mk_fn NM_MK[3][2][NM_R] = {
    {NM_MK_ROW_TABLE(4, 1), NM_MK_ROW_TABLE(4, 4)},
    {NM_MK_ROW_TABLE(8, 1), NM_MK_ROW_TABLE(8, 4)},
    {NM_MK_ROW_TABLE(16, 1), NM_MK_ROW_TABLE(16, 4)},
};

void sk_nm_avx512(const sk_nm_args *a) {
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t ntg = sk_ceil_div(ntiles, NM_T);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    /* Batch 1 streams each value once: no K chunking. Larger batches revisit a chunk of
     * packed values once per row block, so the chunk is sized to stay in L2. */
    int64_t gchunk = groups;
    if (a->rows > NM_R) {
        gchunk = NM_CHUNK_BYTES / ((int64_t)NM_T * n * SK_TILE * 4);
        if (gchunk < 1) gchunk = 1;
    }
    const int tail = (int)(a->cols % SK_TILE);
    const __mmask16 tail_mask = tail ? (__mmask16)((1u << tail) - 1) : (__mmask16)0xFFFF;
#pragma omp parallel for schedule(static) num_threads(a->threads)
    for (int64_t tg = 0; tg < ntg; tg++) {
        const int64_t t0 = tg * NM_T;
        const int64_t tc = ntiles - t0 < NM_T ? ntiles - t0 : NM_T;
        for (int64_t gs = 0; gs < groups; gs += gchunk) {
            const int64_t ge = gs + gchunk < groups ? gs + gchunk : groups;
            for (int64_t r0 = 0; r0 < a->rows; r0 += NM_R) {
                const int rr = (int)(a->rows - r0 < NM_R ? a->rows - r0 : NM_R);
                nm_mk_args p = {a->x + r0 * a->ldx, a->ldx, gs, ge, NULL, NULL, tile_vals,
                                tile_meta, n, NULL, a->ldy, 0xFFFF, gs > 0};
                if (tc == NM_T) {
                    p.vals = a->values + t0 * tile_vals + gs * n * SK_TILE;
                    p.meta = a->meta + t0 * tile_meta + gs * n * W;
                    p.y = a->y + r0 * a->ldy + t0 * SK_TILE;
                    p.last_mask = t0 + NM_T == ntiles ? tail_mask : (__mmask16)0xFFFF;
                    NM_MK[mi][1][rr - 1](&p);
                } else {
                    for (int64_t t = t0; t < t0 + tc; t++) {
                        p.vals = a->values + t * tile_vals + gs * n * SK_TILE;
                        p.meta = a->meta + t * tile_meta + gs * n * W;
                        p.y = a->y + r0 * a->ldy + t * SK_TILE;
                        p.last_mask = t + 1 == ntiles ? tail_mask : (__mmask16)0xFFFF;
                        NM_MK[mi][0][rr - 1](&p);
                    }
                }
            }
        }
    }
}
#endif
