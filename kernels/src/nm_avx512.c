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
#include <stdatomic.h>
#include <stdlib.h>

#include "sk_internal.h"
#define SK_TRANSPOSE_AVX512
#include "sk_transpose.h"

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
    const float *bias;  /* this call's first tile's bias, added as y is stored (last K chunk), or NULL */
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
    for (int t = 0; t < T; t++) {
        const __mmask16 mk = t == T - 1 ? p->last_mask : (__mmask16)0xFFFF;
        const __m512 b = p->bias ? _mm512_maskz_loadu_ps(mk, p->bias + t * SK_TILE) : _mm512_setzero_ps();
        for (int r = 0; r < R; r++)
            _mm512_mask_storeu_ps(p->y + r * p->ldy + t * SK_TILE, mk, _mm512_add_ps(acc[r][t], b));
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
                                tile_meta, n, NULL, a->ldy, 0xFFFF, gs > 0, scratch, NULL};
                const float *bias = ge == groups && a->bias ? a->bias : NULL;
                if (tc == NM_T) {
                    p.vals = a->values + t0 * tile_vals + gs * n * SK_TILE;
                    p.meta = a->meta + t0 * tile_meta + gs * n * W;
                    p.y = a->y + r0 * a->ldy + t0 * SK_TILE;
                    p.bias = bias ? bias + t0 * SK_TILE : NULL;
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
                        p.bias = bias ? bias + t * SK_TILE : NULL;
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

/* ---- Row-vectorised batch path (N >= 2 from NM_RV_MIN_ROWS = 24 rows, 1:M from 64) ----
 *
 * The lanes of a vector are 16 ROWS instead of 16 columns: x is transposed once per call
 * (per block of NM_RV_RB rows) into xt[k][rows], and for every output column and kept
 * weight (value v at row k of W) the microkernel does acc[col][rows] += bcast(v) *
 * xt[k][rows], a plain load whose address comes from the scalar position: no per-FMA
 * permute (the columns-as-lanes path above needs one per FMA, which caps it near 0.7 of
 * the FMA rate on Zen 4). One in-register permute broadcasts a value to all lanes and is
 * shared by the NM_RV_R row vectors. Register block: 8 columns (half a tile) x 32 rows
 * (16 accumulators). A tile's packed records are re-read once per (32-row, half-tile)
 * block, from L2. With 32-row blocks 1:M measured ~15% slower here than the paired 2:2M
 * columns-as-lanes microkernel; with 64-row blocks (below) faster. */
#define NM_RV_RT 32 /* rows per register block below NM_RV_R4_ROWS rows (2 zmm x 8 columns) */
/* 1:M from NM_RV_R4_ROWS rows runs this path too, with register blocks of 64 rows (4 zmm) x 4
 * columns: the value broadcast (one permute) and the scalar position decode serve 4 FMAs
 * instead of 2, and a tile's records are read once per 64 rows. Measured (AMD EPYC with
 * AVX-512, 2 threads, kernel alone, alternating runs): 1:8 at 64 rows 4096x11008 5.3-6.6 ->
 * 4.8-5.7 ms, 11008x4096 5.2-7.7 -> 4.4-5.6 ms, 1:4 4096x4096 3.3-3.9 -> 2.4-2.7 ms, 1:8 at 128
 * rows 4096x4096 4.2-6.0 -> 3.4-4.0 ms, all against the columns-as-lanes path. For 2:4 the
 * same blocks measured no different from 32 x 8 (BERT-base shapes at 128 rows, 1 thread,
 * 2.3-2.5 ms either way), so N >= 2 keeps 32-row blocks. */
#ifndef NM_RV_R4_ROWS
#define NM_RV_R4_ROWS 64
#endif
#define NM_RV_RT4 64 /* rows per register block of 1:M from NM_RV_R4_ROWS rows (4 zmm x 4 columns) */
#define NM_RV_OS NM_RV_RT4 /* row stride of one column in the partial-sum buffer `outb` */
/* The first half-tile pass over a tile reads its packed records from DRAM, and waited on them:
 * a cpu-clock profile (4096x11008, 64 rows, 1 thread) put 57% of that pass's samples on the
 * instructions right after the value and metadata loads, and the pass took 2.3x the second
 * (which finds the records in L2). It prefetches NM_RV_PF bytes of values ahead (and the
 * metadata in proportion). Measured on an AMD EPYC with AVX-512, 2 threads, 64 rows, 2:4:
 * 4096x11008 18.0 -> 12.6 ms, 11008x4096 15.8 -> 15.0 ms (1024-16384 bytes tried; 4096-8192
 * best); prefetching in the second pass too gained nothing. */
#ifndef NM_RV_PF
#define NM_RV_PF 4096
#endif
/* K in chunks of NM_RV_KC (32 rows x 128 floats = 16 KB of xt, L1) once xt outgrows
 * NM_RV_XT_MAX: each chunk serves a group of NM_RV_TG tiles before the next, partial sums
 * waiting in `outb`, and each tile's pass prefetches the records of the chunk that comes next.
 * One tile at a time streamed the whole xt (1.4 MB at K = 11008, more than this L2) per 16
 * columns. Measured (AMD EPYC with AVX-512, 1 thread, 2:4, 64 rows): 11008x4096 25.2-27.3 ->
 * 19.6-20.1 ms, 4096x11008 21.3-22.9 -> 19.8-20.2 ms, 4096x4096 8.2-8.6 -> 7.6-7.9 ms;
 * 768x3072 at 128 rows unchanged. Chunks of 256 and 512 measured 3-8% slower than 128; chunks
 * without the next-chunk prefetch were slower than no chunks (the records then came from DRAM
 * in an order no hardware prefetcher follows). */
#ifndef NM_RV_XT_MAX
#define NM_RV_XT_MAX (64 * 1024)
#endif
#ifndef NM_RV_KC
#define NM_RV_KC 128
#endif
#ifndef NM_RV_TG
#define NM_RV_TG 16
#endif
/* Where xt outgrows L2 (K = 11008 at 32 or 64 rows), every group of tiles streams it from L3
 * again: larger groups then. Measured (AMD EPYC with AVX-512, 2 threads, kernel alone, 4
 * alternating runs, static split): groups of 64 at 11008x4096, 64 rows, 1:8 3.9-5.7 -> 3.8-5.5
 * ms (3 of 4 runs 3.8-3.9), 2:4 12.1-22.2 -> 11.7-12.2 ms; at K = 4096 (xt 1 MB, this L2) they
 * measured slower (1:8 4096x11008 3.6-5.1 -> 4.9-5.2 ms), so they keep NM_RV_TG. With the
 * dynamic hand-out below, groups of 32 and 64 tie (1:8 11008x4096 3.4-5.4 / 3.7-5.3 ms);
 * 32 gives the hand-out twice the units. */
#ifndef NM_RV_TG_BIG
#define NM_RV_TG_BIG 32
#endif
#ifndef NM_RV_XT_BIG
#define NM_RV_XT_BIG (1 << 20)
#endif

typedef struct {
    const float *xt; /* xt[k * 16R + r] for this block's first row (R row vectors) */
    int64_t groups;
    const float *vals;     /* record (t, 0, 0) */
    const uint16_t *meta;  /* record (t, 0, 0) */
    int n;
    int accumulate;          /* start from out's partial sums (a later K chunk) */
    const char *pf_vals;     /* the first pass prefetches from here on, as it reads vals, */
    const char *pf_meta;     /* and from here, as it reads meta */
    float *out; /* out[c * NM_RV_OS + r], 64-byte aligned */
} nm_rv_args;

static inline __attribute__((always_inline)) uint32_t nm_rv_pos(const int M, const int L,
                                                              uint32_t w, uint32_t hi, uint64_t q) {
    return M == 4 ? (w >> (2 * L)) & 3u
                  : (M == 8 ? ((w >> (2 * L)) & 3u) | (((hi >> L) & 1u) << 2)
                            : (uint32_t)(q >> (32 * (L & 1) + 4 * (L >> 1))) & 15u);
}

/* The accumulators are named variables, not an array: with `__m512 acc[8][2]` GCC 12 kept them
 * in registers within an iteration but stored all 16 to `out` at the end of every group
 * iteration (objdump: 16 vmovaps per 32 FMAs in the hot loop; unroll pragmas and restrict did
 * not remove them). Up to 8 columns x 4 row vectors are named; a block uses C x R of them
 * (C * R <= 16) and the compiler drops the rest. */
#define NM_RV_ACC1(c, i) \
    __m512 a##c##i = p->accumulate && R > (i) ? _mm512_load_ps(p->out + (c) * NM_RV_OS + 16 * (i)) : _mm512_setzero_ps()
#define NM_RV_ACC(c) NM_RV_ACC1(c, 0); NM_RV_ACC1(c, 1); NM_RV_ACC1(c, 2); NM_RV_ACC1(c, 3)
#define NM_RV_STEP(c)                                                                  \
    do {                                                                               \
        const float *xp = xg + (int64_t)nm_rv_pos(M, C0 + (c), w, hi, q) * ldt;        \
        const __m512 vb = _mm512_permutexvar_ps(_mm512_set1_epi32(C0 + (c)), vv);      \
        a##c##0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xp), a##c##0);                   \
        if (R > 1) a##c##1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xp + 16), a##c##1);  \
        if (R > 2) a##c##2 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xp + 32), a##c##2);  \
        if (R > 3) a##c##3 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(xp + 48), a##c##3);  \
    } while (0)
#define NM_RV_OUT1(c, i) \
    do { if (R > (i)) _mm512_store_ps(out + (c) * NM_RV_OS + 16 * (i), a##c##i); } while (0)
#define NM_RV_OUT(c) NM_RV_OUT1(c, 0); NM_RV_OUT1(c, 1); NM_RV_OUT1(c, 2); NM_RV_OUT1(c, 3)

/* Columns per register block: 8 for up to 2 row vectors, 4 for 3-4. */
#define NM_RV_COLS(R_) ((R_) > 2 ? 4 : 8)

static inline __attribute__((always_inline)) void nm_rv_mk(const int M, const int NS, const int R,
                                                           const int C0, const nm_rv_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    const int C = NM_RV_COLS(R);
    const int n = NS > 0 ? NS : p->n;
    const int64_t ldt = 16 * R; /* a block of R row vectors is transposed with that stride */
    NM_RV_ACC(0); NM_RV_ACC(1); NM_RV_ACC(2); NM_RV_ACC(3);
    NM_RV_ACC(4); NM_RV_ACC(5); NM_RV_ACC(6); NM_RV_ACC(7);
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    const float *xg = p->xt;
    float *out = p->out;
    const char *pfv = p->pf_vals, *pfm = p->pf_meta;
    /* Each group's metadata is loaded a group ahead of its use, in one load (sk_nm_group_meta)
     * where it fits 8 bytes. Read where it is used, every x address waited on a metadata load: the
     * same loop with positions computed from the loop counter instead ran 20% faster (2:4 768x3072
     * at 128 rows, 1 thread, 2.3 -> 1.8 ms), and a cpu-clock profile put the stalls on the first FMA
     * after each group's load. Measured (AMD EPYC with AVX-512, 1 thread, mins of 8 interleaved
     * rounds): 2:4 768x3072 at 128 rows 2.23 -> 1.95 ms, 4096x4096 at 64 rows 7.52 -> 6.70 ms, 1:8
     * 11008x4096 at 64 rows 6.80 -> 6.44 ms. */
    const int ahead = NS > 0 && NS * W <= 4; /* a group's metadata fits one 8-byte load */
    uint64_t mnext = ahead ? sk_nm_group_meta(meta, NS * W, p->groups == 1) : 0;
    for (int64_t g = 0; g < p->groups; g++) {
        if (C0 == 0 && NM_RV_PF > 0)
            _mm_prefetch(pfm + g * n * W * (int64_t)sizeof(uint16_t), _MM_HINT_T0);
        const uint64_t mg = mnext;
        if (ahead) /* the next group's (the last group re-reads its own) */
            mnext = sk_nm_group_meta(g + 1 < p->groups ? meta + n * W : meta, NS * W, g + 2 >= p->groups);
#pragma GCC unroll 4
        for (int j = 0; j < n; j++) {
            if (C0 == 0 && NM_RV_PF > 0)
                _mm_prefetch(pfv + (g * n + j) * SK_TILE * (int64_t)sizeof(float), _MM_HINT_T0);
            const __m512 vv = _mm512_loadu_ps(vals + j * SK_TILE);
            const uint16_t *md = meta + j * W;
            const uint64_t rec = ahead ? mg >> (16 * W * j) : 0u; /* this record's words */
            const uint32_t w = M == 16 ? 0u : (ahead ? (uint32_t)rec : sk_load_u32(md));
            const uint32_t hi = M == 8 ? (ahead ? (uint32_t)(rec >> 32) & 0xFFFFu : md[2]) : 0u;
            const uint64_t q = M == 16 ? (ahead ? rec : sk_load_u64(md)) : 0u;
            NM_RV_STEP(0); NM_RV_STEP(1); NM_RV_STEP(2); NM_RV_STEP(3);
            if (C > 4) { NM_RV_STEP(4); NM_RV_STEP(5); NM_RV_STEP(6); NM_RV_STEP(7); }
        }
        vals += n * SK_TILE;
        meta += n * W;
        xg += M * ldt;
    }
    NM_RV_OUT(0); NM_RV_OUT(1); NM_RV_OUT(2); NM_RV_OUT(3);
    if (C > 4) { NM_RV_OUT(4); NM_RV_OUT(5); NM_RV_OUT(6); NM_RV_OUT(7); }
}

typedef void (*nm_rv_fn)(const nm_rv_args *);
/* Instantiations: [M][slots: any, 2, 4][row vectors - 1][column block]; 1-2 row vectors have
 * two column blocks of 8 per tile, 3-4 have four of 4 (the table's unused entries are NULL). */
#define NM_RV_NAME(M_, N_, R_, H_) nm_rv_##M_##_##N_##_##R_##_##H_
#define NM_RV_DEF(M_, N_, R_, H_)                                        \
    static void NM_RV_NAME(M_, N_, R_, H_)(const nm_rv_args *p) {        \
        nm_rv_mk(M_, N_, R_, NM_RV_COLS(R_) * H_, p);                    \
    }
#define NM_RV_DEFS_R(M_, N_)                                                                  \
    NM_RV_DEF(M_, N_, 1, 0) NM_RV_DEF(M_, N_, 1, 1) NM_RV_DEF(M_, N_, 2, 0) NM_RV_DEF(M_, N_, 2, 1) \
    NM_RV_DEF(M_, N_, 3, 0) NM_RV_DEF(M_, N_, 3, 1) NM_RV_DEF(M_, N_, 3, 2) NM_RV_DEF(M_, N_, 3, 3) \
    NM_RV_DEF(M_, N_, 4, 0) NM_RV_DEF(M_, N_, 4, 1) NM_RV_DEF(M_, N_, 4, 2) NM_RV_DEF(M_, N_, 4, 3)
#define NM_RV_DEFS(M_) NM_RV_DEFS_R(M_, 0) NM_RV_DEFS_R(M_, 1) NM_RV_DEFS_R(M_, 2) NM_RV_DEFS_R(M_, 4)
NM_RV_DEFS(4) NM_RV_DEFS(8) NM_RV_DEFS(16)
#define NM_RV_TAB_R(M_, N_)                                                                    \
    {{NM_RV_NAME(M_, N_, 1, 0), NM_RV_NAME(M_, N_, 1, 1), NULL, NULL},                         \
     {NM_RV_NAME(M_, N_, 2, 0), NM_RV_NAME(M_, N_, 2, 1), NULL, NULL},                         \
     {NM_RV_NAME(M_, N_, 3, 0), NM_RV_NAME(M_, N_, 3, 1), NM_RV_NAME(M_, N_, 3, 2), NM_RV_NAME(M_, N_, 3, 3)}, \
     {NM_RV_NAME(M_, N_, 4, 0), NM_RV_NAME(M_, N_, 4, 1), NM_RV_NAME(M_, N_, 4, 2), NM_RV_NAME(M_, N_, 4, 3)}}
#define NM_RV_TAB(M_) {NM_RV_TAB_R(M_, 0), NM_RV_TAB_R(M_, 1), NM_RV_TAB_R(M_, 2), NM_RV_TAB_R(M_, 4)}
static const nm_rv_fn NM_RV[3][4][4][4] = {NM_RV_TAB(4), NM_RV_TAB(8), NM_RV_TAB(16)};

/* One 16 x 16 block: dst[c * ldd + r] = src[r * lds + c] for the rows in `rows` (the others 0). */
static inline __attribute__((always_inline)) void nm_rv_t16(const float *src, int64_t lds,
                                                            float *dst, int64_t ldd, __mmask16 rows) {
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_maskz_loadu_ps((rows >> i) & 1 ? 0xFFFF : 0, src + i * lds);
    sk_tr16x16_ps(r);
    for (int i = 0; i < 16; i++) _mm512_store_ps(dst + i * ldd, r[i]);
}

/* xt[kk * ldt + r] = x[r * ldx + kk] for r < rows, 0 for rows <= r < ldt (ldt % 16 == 0).
 * 16 x 16 blocks transposed in registers; the last k % 16 columns one at a time. Gathers
 * (one per 16 floats) had done it all: where the row stride is a multiple of 4 KB (K = 3072,
 * 11008: every row of a gather falls in the same L1 set) they took 3.6-4x as long (128 x 3072,
 * 1 thread, AMD EPYC with AVX-512: 0.37-0.49 -> 0.10-0.12 ms; 128 x 768: 0.037 -> 0.022 ms;
 * bench/transpose_microbench.c, transpose_microbench_amd_zen4flags.json). With the
 * register-transposed output store below, 2 threads, mins of 8 interleaved rounds: 2:4 at 128
 * rows 768x768 1.05 -> 0.99 ms, 3072x768 2.02 -> 1.81 ms, 768x3072 1.87 -> 1.80 ms; 64 rows on
 * the 4096/11008 shapes 2-7% (bench/kernel_lib_ab.py, kernel_transpose_ab_amd_avx512.json). */
static void nm_rv_transpose(const float *x, int64_t ldx, int64_t rows, int64_t k, float *xt,
                            int64_t ldt) {
    const int64_t k16 = k / 16 * 16;
    for (int64_t v = 0; v < ldt; v += 16) {
        const int64_t nr = rows - v < 16 ? (rows - v > 0 ? rows - v : 0) : 16;
        const __mmask16 mk = (__mmask16)((1u << nr) - 1u);
        const float *base = x + v * ldx;
        for (int64_t kk = 0; kk < k16; kk += 16) nm_rv_t16(base + kk, ldx, xt + kk * ldt + v, ldt, mk);
        for (int64_t kk = k16; kk < k; kk++)
            for (int64_t r = 0; r < 16; r++) xt[kk * ldt + v + r] = r < nr ? base[r * ldx + kk] : 0.0f;
    }
}

/* y[i * ldy + c] = out[c * NM_RV_OS + i] + b[c] for i < rows, the columns in cm: 8 columns x
 * 8 rows of partial sums transposed in registers (a gather per row had done it). */
static inline __attribute__((always_inline)) void nm_rv_store8(const float *out, float *y, int64_t ldy,
                                                               int rows, __mmask8 cm, __m256 b) {
    __m256 r[8];
    for (int c = 0; c < 8; c++) r[c] = _mm256_load_ps(out + c * NM_RV_OS);
    sk_tr8x8_ps(r);
    for (int i = 0; i < rows; i++) _mm256_mask_storeu_ps(y + i * ldy, cm, _mm256_add_ps(r[i], b));
}

/* Work is handed out dynamically, (row block, tile group) units from a shared counter, not
 * split in equal shares: on a VM whose vCPUs get preempted the static split waited for the
 * slower thread (2 threads, 11008x4096 at 64 rows: per-call medians 1.3-1.5x the fastest
 * call). A thread transposes a row block the first time it claims one of its units; units
 * are claimed in order, so each thread transposes each row block at most once. */
typedef struct {
    sk_nm_args a;
    atomic_llong next; /* the next unclaimed unit */
} nm_rv_shared;

static void nm_rv_body(const void *args, int tid, int nth) {
    nm_rv_shared *sh = (nm_rv_shared *)args;
    const sk_nm_args *a = &sh->a;
    (void)tid;
    (void)nth;
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int ni = n == 1 ? 1 : (n == 2 ? 2 : (n == 4 ? 3 : 0));
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    const int64_t rb_full = n == 1 && a->rows >= NM_RV_R4_ROWS ? NM_RV_RT4 : NM_RV_RT; /* rows per block */
    const int64_t rb_max = a->rows < rb_full ? a->rows : rb_full;
    const int64_t ldt_max = sk_ceil_div(rb_max, 16) * 16;
    const int64_t xt_bytes = a->k * ldt_max * (int64_t)sizeof(float);
    float *xt = NULL, *outb = NULL;
    /* K in chunks only where xt outgrows NM_RV_XT_MAX; else one chunk, as before. */
    const int chunked = xt_bytes > NM_RV_XT_MAX;
    const int64_t gc = chunked ? (NM_RV_KC / m > 0 ? NM_RV_KC / m : 1) : groups;
    const int64_t tg_size = !chunked ? 1 : (xt_bytes > NM_RV_XT_BIG ? NM_RV_TG_BIG : NM_RV_TG);
    enum { OUTT = SK_TILE * NM_RV_OS }; /* partial sums of one tile */
    const int64_t units_per_rb = sk_ceil_div(ntiles, tg_size);
    const int64_t units = sk_ceil_div(a->rows, rb_full) * units_per_rb;
    int64_t have_rb = -1; /* the row block in xt */
    for (;;) {
        const int64_t u = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
        if (u >= units) break;
        const int64_t r0 = u / units_per_rb * rb_full, tg = u % units_per_rb * tg_size;
        const int64_t tge = tg + tg_size < ntiles ? tg + tg_size : ntiles;
        const int64_t rb = a->rows - r0 < rb_full ? a->rows - r0 : rb_full;
        const int64_t ldt = sk_ceil_div(rb, 16) * 16;
        const int rv = (int)(ldt / 16), cb = NM_RV_COLS(rv);
        if (xt == NULL) {
            xt = aligned_alloc(64, (size_t)xt_bytes);
            outb = aligned_alloc(64, sizeof(float) * (size_t)tg_size * OUTT);
        }
        if (have_rb != r0) {
            nm_rv_transpose(a->x + r0 * a->ldx, a->ldx, rb, a->k, xt, ldt);
            have_rb = r0;
        }
        for (int64_t g0 = 0; g0 < groups; g0 += gc) {
            const int64_t gn = groups - g0 < gc ? groups - g0 : gc;
            for (int64_t t = tg; t < tge; t++) {
                const int width = (int)(a->cols - t * SK_TILE < SK_TILE ? a->cols - t * SK_TILE
                                                                        : SK_TILE);
                const float *vals = a->values + t * tile_vals + g0 * n * SK_TILE;
                const uint16_t *meta = a->meta + t * tile_meta + g0 * n * W;
                /* Prefetch target: unchunked, this tile's records NM_RV_PF bytes ahead; chunked,
                 * the chunk that comes next (the next tile's, or the group's first at the next
                 * chunk), one chunk's work ahead. */
                const float *pv = (const float *)((const char *)vals + NM_RV_PF);
                const uint16_t *pm = (const uint16_t *)((const char *)meta + NM_RV_PF / 8);
                if (chunked) {
                    const int64_t nt = t + 1 < tge ? t + 1 : tg, ng = t + 1 < tge ? g0 : g0 + gc;
                    pv = a->values + nt * tile_vals + ng * n * SK_TILE;
                    pm = a->meta + nt * tile_meta + ng * n * W;
                }
                for (int h = 0; h * cb < width; h++) {
                    const nm_rv_args p = {xt + g0 * m * ldt, gn, vals, meta, n, g0 > 0,
                                          (const char *)pv, (const char *)pm,
                                          outb + (t - tg) * OUTT + h * cb * NM_RV_OS};
                    NM_RV[mi][ni][rv - 1][h](&p);
                }
            }
        }
        for (int64_t t = tg; t < tge; t++) {
            const int width = (int)(a->cols - t * SK_TILE < SK_TILE ? a->cols - t * SK_TILE
                                                                    : SK_TILE);
            for (int h = 0; h * 8 < width; h++) { /* 8 columns of the tile at a time */
                const float *out = outb + (t - tg) * OUTT + h * 8 * NM_RV_OS;
                const int cw = width - h * 8 < 8 ? width - h * 8 : 8;
                const __mmask8 cm = (__mmask8)((1u << cw) - 1u);
                float *yo = a->y + r0 * a->ldy + t * SK_TILE + h * 8;
                const __m256 b = a->bias ? _mm256_maskz_loadu_ps(cm, a->bias + t * SK_TILE + h * 8)
                                         : _mm256_setzero_ps();
                for (int64_t i = 0; i < rb; i += 8)
                    nm_rv_store8(out + i, yo + i * a->ldy, a->ldy, rb - i < 8 ? (int)(rb - i) : 8, cm, b);
            }
        }
    }
    free(outb);
    free(xt);
}

/* Rows from which the row-vectorised path runs (N >= 2; 1:M from NM_RV_R4_ROWS). Measured (2 threads, 4096x4096 and
 * 768x3072, 2:4 and 4:8): the paths tie at 16-24 rows; at 32 the row path is 1.3-1.6x faster.
 * $SPARSEC_NM_ROWVEC_MIN_ROWS overrides it (tests and benchmarks of both paths). */
#define NM_RV_MIN_ROWS 24

static int64_t nm_rv_min_rows(void) {
    const char *env = getenv("SPARSEC_NM_ROWVEC_MIN_ROWS");
    return env && *env ? strtoll(env, NULL, 10) : NM_RV_MIN_ROWS;
}

void sk_nm_avx512(const sk_nm_args *a) {
    const int64_t min_rows = nm_rv_min_rows();
    if (a->rows >= min_rows && (a->n >= 2 || a->rows >= NM_RV_R4_ROWS || min_rows <= 1)) {
        nm_rv_shared sh = {*a, 0};
        sk_run_parallel(a->threads, nm_rv_body, &sh);
    } else {
        sk_run_parallel(a->threads, nm_avx512_body, a);
    }
}
#endif
