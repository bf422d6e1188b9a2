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
#include <stdlib.h>

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
    const __m512i *idx; /* pre-decoded indices [(g - g0) * n + j][t], or NULL */
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

/* PRE: read index vectors decoded once per K-chunk (nm_predecode) instead of decoding the
 * metadata again for every row block; with 4 rows per block decoding costs up to 1.25
 * vector ops per FMA (M = 8), a load costs 0.25. */
/* NS > 0 fixes the slots per group at compile time (fully unrolled slot loop: matters for
 * 1:M, whose groups hold a single record). */
static inline __attribute__((always_inline)) void nm_mk(const int M, const int R, const int T,
                                                        const int PRE, const int NS,
                                                        const nm_mk_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    const int n = NS > 0 ? NS : p->n;
    __m512 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            const __mmask16 mk = t == T - 1 ? p->last_mask : (__mmask16)0xFFFF;
            acc[r][t] = p->accumulate ? _mm512_maskz_loadu_ps(mk, p->y + r * p->ldy + t * SK_TILE)
                                      : _mm512_setzero_ps();
        }
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    const __m512i *pre = p->idx;
#pragma GCC unroll 2
    for (int64_t g = p->g0; g < p->g1; g++) {
        __m512 xg[R];
        for (int r = 0; r < R; r++) xg[r] = nm_load_x(M, p->x + r * p->ldx + g * M);
#pragma GCC unroll 4
        for (int j = 0; j < n; j++) {
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m512i idx = PRE ? _mm512_load_si512(pre + j * T + t)
                                        : nm_decode(M, meta + t * p->tile_meta + j * W);
                const __m512 v = _mm512_loadu_ps(vals + t * p->tile_vals + j * SK_TILE);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++)
                    acc[r][t] = _mm512_fmadd_ps(v, nm_gather(M, xg[r], idx), acc[r][t]);
            }
        }
        vals += n * SK_TILE;
        meta += n * W;
        pre += PRE ? n * T : 0;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            const __mmask16 mk = t == T - 1 ? p->last_mask : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(p->y + r * p->ldy + t * SK_TILE, mk, acc[r][t]);
        }
}

/* Decode the index vectors of one K-chunk of NM_T tiles, laid out [group][slot][tile].
 * pair: read groups two at a time as one virtual 2N:2M group (slot j of the second group
 * becomes slot N + j with its positions shifted by M). A 1:M chunk then runs the 2:2M
 * microkernel: twice the FMAs per x load and per loop trip, which is where 1:M spends its
 * time (N = 1 runs ~40% slower per FMA than N = 2). */
static void nm_predecode(const int m, const uint16_t *meta, int64_t tile_meta, int n,
                         int64_t groups, int pair, __m512i *out) {
    const int W = sk_nm_meta_words(m);
    for (int64_t g = 0; g < groups; g++)
        for (int j = 0; j < n; j++)
            for (int t = 0; t < NM_T; t++) {
                const uint16_t *md = meta + t * tile_meta + (g * n + j) * W;
                __m512i idx = m == 4 ? nm_decode(4, md) : (m == 8 ? nm_decode(8, md) : nm_decode(16, md));
                if (pair) /* clean position (M=4 leaves neighbours' bits above bit 1) + shift */
                    idx = _mm512_add_epi32(_mm512_and_si512(idx, _mm512_set1_epi32(m - 1)),
                                           _mm512_set1_epi32((int)(g & 1) * m));
                *out++ = idx;
            }
}

typedef void (*nm_mk_fn)(const nm_mk_args *);
/* Instantiations: [M][variant][slots: any, 1, 2, 4][rows - 1]. Variants: one tile; NM_T tiles;
 * NM_T tiles with pre-decoded indices. Multi-level macros so NM_T expands before pasting. */
#define NM_MK_NAME_(M_, R_, T_, P_, N_) nm_mk_##M_##_##R_##_##T_##_##P_##_##N_
#define NM_MK_NAME(M_, R_, T_, P_, N_) NM_MK_NAME_(M_, R_, T_, P_, N_)
#define NM_MK_DEF(M_, R_, T_, P_, N_)                                      \
    static void NM_MK_NAME(M_, R_, T_, P_, N_)(const nm_mk_args *p) {      \
        nm_mk(M_, R_, T_, P_, N_, p);                                      \
    }
#define NM_MK_ROWS(M_, T_, P_, N_) \
    NM_MK_DEF(M_, 1, T_, P_, N_) NM_MK_DEF(M_, 2, T_, P_, N_) NM_MK_DEF(M_, 3, T_, P_, N_) \
    NM_MK_DEF(M_, 4, T_, P_, N_)
#define NM_MK_SLOTS(M_, T_, P_) \
    NM_MK_ROWS(M_, T_, P_, 0) NM_MK_ROWS(M_, T_, P_, 1) NM_MK_ROWS(M_, T_, P_, 2) \
    NM_MK_ROWS(M_, T_, P_, 4)
#define NM_MK_ALL(M_) NM_MK_SLOTS(M_, 1, 0) NM_MK_SLOTS(M_, NM_T, 0) NM_MK_SLOTS(M_, NM_T, 1)
NM_MK_ALL(4) NM_MK_ALL(8) NM_MK_ALL(16)
#define NM_MK_ROW_TABLE(M_, T_, P_, N_)                                                   \
    {NM_MK_NAME(M_, 1, T_, P_, N_), NM_MK_NAME(M_, 2, T_, P_, N_),                        \
     NM_MK_NAME(M_, 3, T_, P_, N_), NM_MK_NAME(M_, 4, T_, P_, N_)}
#define NM_MK_SLOT_TABLE(M_, T_, P_)                                                      \
    {NM_MK_ROW_TABLE(M_, T_, P_, 0), NM_MK_ROW_TABLE(M_, T_, P_, 1),                      \
     NM_MK_ROW_TABLE(M_, T_, P_, 2), NM_MK_ROW_TABLE(M_, T_, P_, 4)}
#define NM_MK_TABLE(M_) \
    {NM_MK_SLOT_TABLE(M_, 1, 0), NM_MK_SLOT_TABLE(M_, NM_T, 0), NM_MK_SLOT_TABLE(M_, NM_T, 1)}
static const nm_mk_fn NM_MK[3][3][4][NM_R] = {NM_MK_TABLE(4), NM_MK_TABLE(8), NM_MK_TABLE(16)};

static void nm_avx512_body(const void *args, int tid, int nth) {
    const sk_nm_args *a = args;
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int ni = n <= 2 ? n : (n == 4 ? 3 : 0);
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t ntg = sk_ceil_div(ntiles, NM_T);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    /* Batch 1 streams each value once: no K chunking. Larger batches revisit a chunk of
     * packed values once per row block, so the chunk is sized to stay in L2. */
    int64_t gchunk = groups;
    if (a->rows > NM_R) {
        gchunk = NM_CHUNK_BYTES / ((int64_t)NM_T * n * SK_TILE * 4);
        gchunk = gchunk < 2 ? 2 : gchunk & ~(int64_t)1; /* even: pairing needs whole pairs */
    }
    const int tail = (int)(a->cols % SK_TILE);
    const __mmask16 tail_mask = tail ? (__mmask16)((1u << tail) - 1) : (__mmask16)0xFFFF;
    /* Pre-decoding pays off once a chunk is visited by two or more row blocks. */
    const int predecode = a->rows > NM_R;
    const int pair = predecode && n <= 2 && m <= 8 && groups % 2 == 0;
    const int pmi = m == 4 ? 1 : 2; /* microkernel of the paired 2:2M view */
    {
    __m512i *scratch = predecode ? aligned_alloc(64, (size_t)gchunk * n * NM_T * sizeof(__m512i))
                                 : NULL;
    int64_t tg_begin, tg_end;
    sk_split(ntg, tid, nth, &tg_begin, &tg_end);
    for (int64_t tg = tg_begin; tg < tg_end; tg++) {
        const int64_t t0 = tg * NM_T;
        const int64_t tc = ntiles - t0 < NM_T ? ntiles - t0 : NM_T;
        for (int64_t gs = 0; gs < groups; gs += gchunk) {
            const int64_t ge = gs + gchunk < groups ? gs + gchunk : groups;
            const int pre = scratch && tc == NM_T;
            if (pre) nm_predecode(m, a->meta + t0 * tile_meta + gs * n * W, tile_meta, n, ge - gs,
                                  pair, scratch);
            for (int64_t r0 = 0; r0 < a->rows; r0 += NM_R) {
                const int rr = (int)(a->rows - r0 < NM_R ? a->rows - r0 : NM_R);
                nm_mk_args p = {a->x + r0 * a->ldx, a->ldx, gs, ge, NULL, NULL, tile_vals,
                                tile_meta, n, NULL, a->ldy, 0xFFFF, gs > 0, scratch};
                if (tc == NM_T) {
                    p.vals = a->values + t0 * tile_vals + gs * n * SK_TILE;
                    p.meta = a->meta + t0 * tile_meta + gs * n * W;
                    p.y = a->y + r0 * a->ldy + t0 * SK_TILE;
                    p.last_mask = t0 + NM_T == ntiles ? tail_mask : (__mmask16)0xFFFF;
                    if (pre && pair) { /* virtual groups of 2m: same x and value offsets */
                        p.g0 = gs / 2;
                        p.g1 = ge / 2;
                        p.n = 2 * n;
                        NM_MK[pmi][2][n == 1 ? 2 : 3][rr - 1](&p);
                    } else {
                        NM_MK[mi][1 + pre][ni][rr - 1](&p);
                    }
                } else {
                    for (int64_t t = t0; t < t0 + tc; t++) {
                        p.vals = a->values + t * tile_vals + gs * n * SK_TILE;
                        p.meta = a->meta + t * tile_meta + gs * n * W;
                        p.y = a->y + r0 * a->ldy + t * SK_TILE;
                        p.last_mask = t + 1 == ntiles ? tail_mask : (__mmask16)0xFFFF;
                        NM_MK[mi][0][ni][rr - 1](&p);
                    }
                }
            }
        }
    }
    free(scratch);
    }
}

void sk_nm_avx512(const sk_nm_args *a) { sk_run_parallel(a->threads, nm_avx512_body, a); }
#endif
