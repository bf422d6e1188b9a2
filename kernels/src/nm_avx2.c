/* N:M sparse x dense on AVX2 + FMA: the AVX-512 scheme on two 8-lane halves of a tile.
 * AVX2 has 16 ymm registers, so the register block is NM2_R rows x NM2_T tiles x 2 halves. */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdlib.h>

#include "sk_internal.h"
#include "sk_transpose.h"

#define NM2_R 2
#define NM2_T 2
#define NM2_CHUNK_BYTES (96 * 1024)

typedef struct {
    const float *x;
    int64_t ldx, g0, g1;
    const float *vals;
    const uint16_t *meta;
    int64_t tile_vals, tile_meta;
    int n;
    float *y;
    int64_t ldy;
    int last_width; /* valid columns of the last tile of this call (1..16) */
    int accumulate;
} nm2_args;

static inline __attribute__((always_inline)) __m256i nm2_decode(const int M, const uint16_t *md,
                                                                const int h) {
    if (M == 4) {
        const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        const __m256i w = _mm256_set1_epi32((int)sk_load_u32(md));
        return _mm256_srlv_epi32(w, _mm256_add_epi32(sh, _mm256_set1_epi32(16 * h)));
    }
    if (M == 8) {
        const __m256i sh2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
        const __m256i sh1 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i lo = _mm256_srlv_epi32(_mm256_set1_epi32((int)sk_load_u32(md)),
                                             _mm256_add_epi32(sh2, _mm256_set1_epi32(16 * h)));
        const __m256i hi = _mm256_srlv_epi32(_mm256_set1_epi32((int)md[2] << 2),
                                             _mm256_add_epi32(sh1, _mm256_set1_epi32(8 * h)));
        return _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(3)),
                               _mm256_and_si256(hi, _mm256_set1_epi32(4)));
    }
    const __m256i sh = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    return _mm256_srlv_epi32(_mm256_set1_epi64x((long long)sk_load_u64(md)),
                             _mm256_add_epi32(sh, _mm256_set1_epi32(16 * h)));
}

/* x for one row and group: xa holds the group (M <= 8), xb the upper half for M = 16. */
static inline __attribute__((always_inline)) void nm2_load_x(const int M, const float *p,
                                                             __m256 *xa, __m256 *xb) {
    if (M == 4) {
        *xa = _mm256_broadcast_ps((const __m128 *)p);
    } else {
        *xa = _mm256_loadu_ps(p);
        if (M == 16) *xb = _mm256_loadu_ps(p + 8);
    }
}

static inline __attribute__((always_inline)) __m256 nm2_gather(const int M, __m256 xa, __m256 xb,
                                                               __m256i idx) {
    if (M == 4) return _mm256_permutevar_ps(xa, idx);
    if (M == 8) return _mm256_permutevar8x32_ps(xa, idx);
    const __m256 pa = _mm256_permutevar8x32_ps(xa, idx), pb = _mm256_permutevar8x32_ps(xb, idx);
    return _mm256_blendv_ps(pa, pb, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline __m256i nm2_mask(int width, int h) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(width - 8 * h), lane);
}

static inline __attribute__((always_inline)) void nm2_mk(const int M, const int R, const int T,
                                                         const nm2_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    const int n = p->n;
    __m256 acc[R][T][2];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < 2; h++) {
                const __m256i mk = nm2_mask(t == T - 1 ? p->last_width : SK_TILE, h);
                acc[r][t][h] = p->accumulate
                                   ? _mm256_maskload_ps(p->y + r * p->ldy + t * SK_TILE + 8 * h, mk)
                                   : _mm256_setzero_ps();
            }
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    for (int64_t g = p->g0; g < p->g1; g++) {
        __m256 xa[R], xb[R];
        for (int r = 0; r < R; r++) {
            xb[r] = _mm256_setzero_ps();
            nm2_load_x(M, p->x + r * p->ldx + g * M, &xa[r], &xb[r]);
        }
        for (int j = 0; j < n; j++) {
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    const __m256i idx = nm2_decode(M, meta + t * p->tile_meta + j * W, h);
                    const __m256 v = _mm256_loadu_ps(vals + t * p->tile_vals + j * SK_TILE + 8 * h);
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++)
                        acc[r][t][h] =
                            _mm256_fmadd_ps(v, nm2_gather(M, xa[r], xb[r], idx), acc[r][t][h]);
                }
            }
        }
        vals += n * SK_TILE;
        meta += n * W;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < 2; h++) {
                const __m256i mk = nm2_mask(t == T - 1 ? p->last_width : SK_TILE, h);
                _mm256_maskstore_ps(p->y + r * p->ldy + t * SK_TILE + 8 * h, mk, acc[r][t][h]);
            }
}

typedef void (*nm2_fn)(const nm2_args *);
#define NM2_DEF(M_, R_, T_) \
    static void nm2_mk_##M_##_##R_##_##T_(const nm2_args *p) { nm2_mk(M_, R_, T_, p); }
#define NM2_DEFS(M_) NM2_DEF(M_, 1, 1) NM2_DEF(M_, 2, 1) NM2_DEF(M_, 1, 2) NM2_DEF(M_, 2, 2)
NM2_DEFS(4) NM2_DEFS(8) NM2_DEFS(16)
#define NM2_ROW(M_) {{nm2_mk_##M_##_1_1, nm2_mk_##M_##_2_1}, {nm2_mk_##M_##_1_2, nm2_mk_##M_##_2_2}}
/* [M index][T index (1, NM2_T)][rows - 1] */
static const nm2_fn NM2[3][2][NM2_R] = {NM2_ROW(4), NM2_ROW(8), NM2_ROW(16)};

static void nm_avx2_body(const void *args, int tid, int nth) {
    const sk_nm_args *a = args;
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t ntg = sk_ceil_div(ntiles, NM2_T);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    int64_t gchunk = groups;
    if (a->rows > NM2_R) {
        gchunk = NM2_CHUNK_BYTES / ((int64_t)NM2_T * n * SK_TILE * 4);
        if (gchunk < 1) gchunk = 1;
    }
    const int tail = (int)(a->cols % SK_TILE);
    int64_t tg_begin, tg_end;
    sk_split(ntg, tid, nth, &tg_begin, &tg_end);
    for (int64_t tg = tg_begin; tg < tg_end; tg++) {
        const int64_t t0 = tg * NM2_T;
        const int64_t tc = ntiles - t0 < NM2_T ? ntiles - t0 : NM2_T;
        for (int64_t gs = 0; gs < groups; gs += gchunk) {
            const int64_t ge = gs + gchunk < groups ? gs + gchunk : groups;
            for (int64_t r0 = 0; r0 < a->rows; r0 += NM2_R) {
                const int rr = (int)(a->rows - r0 < NM2_R ? a->rows - r0 : NM2_R);
                nm2_args p = {a->x + r0 * a->ldx, a->ldx, gs,   ge,      NULL, NULL,
                              tile_vals,          tile_meta, n, NULL, a->ldy, SK_TILE,
                              gs > 0};
                const int64_t step = tc == NM2_T ? NM2_T : 1;
                for (int64_t t = t0; t < t0 + tc; t += step) {
                    p.vals = a->values + t * tile_vals + gs * n * SK_TILE;
                    p.meta = a->meta + t * tile_meta + gs * n * W;
                    p.y = a->y + r0 * a->ldy + t * SK_TILE;
                    p.last_width = (t + step == ntiles && tail) ? tail : SK_TILE;
                    NM2[mi][step == NM2_T][rr - 1](&p);
                }
            }
        }
    }
}

/* ---- Rows as lanes (rows >= NM2_RV_MIN_ROWS): the AVX-512 row-vectorised scheme
 * (see nm_avx512.c) on 8-row vectors. x is transposed per block of 16 rows into
 * xt[k][16]; for each column and kept value, a broadcast load of the value and a plain
 * load of xt[k] (address from the scalar position) feed the FMAs, no permute. Register
 * block: 4 columns x 16 rows (8 accumulators).
 * Each kept value costs two 32-byte loads of xt, so where xt comes from sets the pace: K runs
 * in chunks of NM2_RV_KC (16 rows x 256 floats = 16 KB, L1) and each chunk serves a group
 * of NM2_RV_TG tiles before the next, partial sums waiting in `outb`. One tile at a time
 * streamed a whole xt (1 MB at 64 rows, K = 4096) from L3 per 16 columns. Measured on an
 * AVX2 AMD EPYC, 2 threads, 64-128 rows: 1:8 1.4-1.6x faster (it ran the column path before:
 * N = 1 now takes this one too), 2:4 3-7%. */
#define NM2_RV_C 4
#define NM2_RV_RT 16
#define NM2_RV_MIN_ROWS 24
#define NM2_RV_RB 64 /* rows transposed per block: a tile's records stay in L2 across them */
#define NM2_RV_KC 256 /* K per chunk */
#define NM2_RV_TG 16  /* tiles per chunk pass */

typedef struct {
    const float *xt; /* xt[k * NM2_RV_RT + r] */
    int64_t groups;
    const float *vals;    /* record (t, 0, 0) */
    const uint16_t *meta; /* record (t, 0, 0) */
    int n;
    int accumulate; /* start from out's partial sums (a later K chunk) */
    float *out;     /* out[c * NM2_RV_RT + r] */
} nm2_rv_args;

static inline __attribute__((always_inline)) void nm2_rv_mk(const int M, const int NS, const int C0,
                                                            const nm2_rv_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    const int n = NS > 0 ? NS : p->n;
    /* Every loop over acc is unrolled: GCC 12 otherwise keeps acc in memory and stores it
     * after every FMA (objdump showed 8 stores per 8 FMAs in the hot loop). */
    __m256 acc[NM2_RV_C][2];
#pragma GCC unroll 4
    for (int c = 0; c < NM2_RV_C; c++) {
        acc[c][0] = p->accumulate ? _mm256_load_ps(p->out + c * NM2_RV_RT) : _mm256_setzero_ps();
        acc[c][1] = p->accumulate ? _mm256_load_ps(p->out + c * NM2_RV_RT + 8) : _mm256_setzero_ps();
    }
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    const float *xg = p->xt;
    /* Metadata a group ahead, as in nm_avx512.c's row path (no x address waits on a load). */
    const int ahead = NS > 0 && NS * W <= 4;
    uint64_t mnext = ahead ? sk_nm_group_meta(meta, NS * W, p->groups == 1) : 0;
    for (int64_t g = 0; g < p->groups; g++) {
        const uint64_t mg = mnext;
        if (ahead)
            mnext = sk_nm_group_meta(g + 1 < p->groups ? meta + n * W : meta, NS * W, g + 2 >= p->groups);
#pragma GCC unroll 4
        for (int j = 0; j < n; j++) {
            const float *vp = vals + j * SK_TILE;
            const uint16_t *md = meta + j * W;
            const uint64_t rec = ahead ? mg >> (16 * W * j) : 0u;
            const uint32_t w = M == 16 ? 0u : (ahead ? (uint32_t)rec : sk_load_u32(md));
            const uint32_t hi = M == 8 ? (ahead ? (uint32_t)(rec >> 32) & 0xFFFFu : md[2]) : 0u;
            const uint64_t q = M == 16 ? (ahead ? rec : sk_load_u64(md)) : 0u;
#pragma GCC unroll 4
            for (int c = 0; c < NM2_RV_C; c++) {
                const int L = C0 + c;
                const uint32_t pos =
                    M == 4 ? (w >> (2 * L)) & 3u
                           : (M == 8 ? ((w >> (2 * L)) & 3u) | (((hi >> L) & 1u) << 2)
                                     : (uint32_t)(q >> (32 * (L & 1) + 4 * (L >> 1))) & 15u);
                const float *xp = xg + pos * NM2_RV_RT;
                const __m256 vb = _mm256_broadcast_ss(vp + L);
                acc[c][0] = _mm256_fmadd_ps(vb, _mm256_load_ps(xp), acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(vb, _mm256_load_ps(xp + 8), acc[c][1]);
            }
        }
        vals += n * SK_TILE;
        meta += n * W;
        xg += M * NM2_RV_RT;
    }
#pragma GCC unroll 4
    for (int c = 0; c < NM2_RV_C; c++) {
        _mm256_store_ps(p->out + c * NM2_RV_RT, acc[c][0]);
        _mm256_store_ps(p->out + c * NM2_RV_RT + 8, acc[c][1]);
    }
}

typedef void (*nm2_rv_fn)(const nm2_rv_args *);
/* Instantiations: [M][slots: any, 1, 2, 4][quarter tile] (1: 1:M's one-record groups take the
 * metadata-ahead load). */
#define NM2_RV_NAME(M_, N_, Q_) nm2_rv_##M_##_##N_##_##Q_
#define NM2_RV_DEF(M_, N_, Q_) \
    static void NM2_RV_NAME(M_, N_, Q_)(const nm2_rv_args *p) { nm2_rv_mk(M_, N_, 4 * Q_, p); }
#define NM2_RV_DEFS_Q(M_, N_) \
    NM2_RV_DEF(M_, N_, 0) NM2_RV_DEF(M_, N_, 1) NM2_RV_DEF(M_, N_, 2) NM2_RV_DEF(M_, N_, 3)
#define NM2_RV_DEFS(M_) NM2_RV_DEFS_Q(M_, 0) NM2_RV_DEFS_Q(M_, 1) NM2_RV_DEFS_Q(M_, 2) NM2_RV_DEFS_Q(M_, 4)
NM2_RV_DEFS(4) NM2_RV_DEFS(8) NM2_RV_DEFS(16)
#define NM2_RV_TAB_Q(M_, N_)                                                          \
    {NM2_RV_NAME(M_, N_, 0), NM2_RV_NAME(M_, N_, 1), NM2_RV_NAME(M_, N_, 2),          \
     NM2_RV_NAME(M_, N_, 3)}
#define NM2_RV_TAB(M_) {NM2_RV_TAB_Q(M_, 0), NM2_RV_TAB_Q(M_, 1), NM2_RV_TAB_Q(M_, 2), NM2_RV_TAB_Q(M_, 4)}
static const nm2_rv_fn NM2_RV[3][4][4] = {NM2_RV_TAB(4), NM2_RV_TAB(8), NM2_RV_TAB(16)};

/* One 8 x 8 block in registers: dst[c * NM2_RV_RT + r] = src[r * lds + c] for r < rows (the
 * others 0). */
static inline __attribute__((always_inline)) void nm2_rv_t8(const float *src, int64_t lds, int rows,
                                                            float *dst) {
    __m256 r[8];
    for (int i = 0; i < 8; i++) r[i] = i < rows ? _mm256_loadu_ps(src + i * lds) : _mm256_setzero_ps();
    sk_tr8x8_ps(r);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * NM2_RV_RT, r[i]);
}

/* xb[kk * NM2_RV_RT + r] = x[r * ldx + kk] for r < rows, 0 up to NM2_RV_RT: 8 x 8 blocks in
 * registers, the last k % 8 columns one at a time. A scalar loop had done it, one float at a
 * time into lines 64 bytes apart. Measured with the AVX2 kernels forced on an AMD EPYC with
 * AVX-512, 2 threads, mins of 8 interleaved rounds: 2:4 at 128 rows 768x768 0.77 -> 0.64 ms,
 * 3072x768 2.61 -> 2.40 ms; 64 rows on the 4096/11008 shapes 0-13%
 * (bench/kernel_lib_ab.py, kernel_transpose_ab_amd_avx512_forced_avx2.json). */
static void nm2_rv_transpose(const float *x, int64_t ldx, int64_t rows, int64_t k, float *xb) {
    const int64_t k8 = k / 8 * 8;
    for (int h = 0; h < NM2_RV_RT; h += 8) {
        const int nr = (int)(rows - h < 8 ? (rows - h > 0 ? rows - h : 0) : 8);
        for (int64_t kk = 0; kk < k8; kk += 8)
            nm2_rv_t8(x + h * ldx + kk, ldx, nr, xb + kk * NM2_RV_RT + h);
        for (int64_t kk = k8; kk < k; kk++)
            for (int r = 0; r < 8; r++) xb[kk * NM2_RV_RT + h + r] = r < nr ? x[(h + r) * ldx + kk] : 0.0f;
    }
}

static void nm2_rv_body(const void *args, int tid, int nth) {
    const sk_nm_args *a = args;
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int ni = n == 1 ? 1 : (n == 2 ? 2 : (n == 4 ? 3 : 0));
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    int64_t t_begin, t_end;
    sk_split(ntiles, tid, nth, &t_begin, &t_end);
    if (t_begin >= t_end) return;
    const int64_t nb_max = sk_ceil_div(a->rows < NM2_RV_RB ? a->rows : NM2_RV_RB, NM2_RV_RT);
    float *xt = aligned_alloc(32, (size_t)(nb_max * a->k * NM2_RV_RT * (int64_t)sizeof(float)));
    /* outb[tile in group][b][q]: 4-column x 16-row partial sums carried across K chunks */
    enum { QB = SK_TILE / NM2_RV_C, BB = NM2_RV_RB / NM2_RV_RT, OUTB = NM2_RV_C * NM2_RV_RT };
    float *outb = aligned_alloc(32, sizeof(float) * NM2_RV_TG * BB * QB * OUTB);
    const int64_t gc = NM2_RV_KC / m > 0 ? NM2_RV_KC / m : 1; /* groups per K chunk */
    for (int64_t r0 = 0; r0 < a->rows; r0 += NM2_RV_RB) {
        const int64_t rb = a->rows - r0 < NM2_RV_RB ? a->rows - r0 : NM2_RV_RB;
        const int64_t nb = sk_ceil_div(rb, NM2_RV_RT);
        for (int64_t b = 0; b < nb; b++) { /* xt[b][k][16]: rows r0 + 16b .. */
            float *xb = xt + b * a->k * NM2_RV_RT;
            const int64_t rr = rb - b * NM2_RV_RT < NM2_RV_RT ? rb - b * NM2_RV_RT : NM2_RV_RT;
            nm2_rv_transpose(a->x + (r0 + b * NM2_RV_RT) * a->ldx, a->ldx, rr, a->k, xb);
        }
        for (int64_t tg = t_begin; tg < t_end; tg += NM2_RV_TG) {
            const int64_t tge = tg + NM2_RV_TG < t_end ? tg + NM2_RV_TG : t_end;
            for (int64_t g0 = 0; g0 < groups; g0 += gc) {
                const int64_t gn = groups - g0 < gc ? groups - g0 : gc;
                for (int64_t b = 0; b < nb; b++) {
                    const float *xc = xt + (b * a->k + g0 * m) * NM2_RV_RT;
                    for (int64_t t = tg; t < tge; t++) {
                        const int64_t width = a->cols - t * SK_TILE < SK_TILE ? a->cols - t * SK_TILE : SK_TILE;
                        for (int q = 0; q * NM2_RV_C < width; q++) {
                            const nm2_rv_args p = {xc, gn, a->values + t * tile_vals + g0 * n * SK_TILE,
                                                   a->meta + t * tile_meta + g0 * n * W, n, g0 > 0,
                                                   outb + (((t - tg) * BB + b) * QB + q) * OUTB};
                            NM2_RV[mi][ni][q](&p);
                        }
                    }
                }
            }
            for (int64_t t = tg; t < tge; t++) {
                const int64_t width = a->cols - t * SK_TILE < SK_TILE ? a->cols - t * SK_TILE : SK_TILE;
                for (int64_t b = 0; b < nb; b++) {
                    const int64_t rr = rb - b * NM2_RV_RT < NM2_RV_RT ? rb - b * NM2_RV_RT : NM2_RV_RT;
                    for (int q = 0; q * NM2_RV_C < width; q++) {
                        const float *out = outb + (((t - tg) * BB + b) * QB + q) * OUTB;
                        const int64_t cw = width - q * NM2_RV_C < NM2_RV_C ? width - q * NM2_RV_C : NM2_RV_C;
                        float *yo = a->y + (r0 + b * NM2_RV_RT) * a->ldy + t * SK_TILE + q * NM2_RV_C;
                        for (int64_t i = 0; i < rr; i++)
                            for (int64_t c = 0; c < cw; c++) yo[i * a->ldy + c] = out[c * NM2_RV_RT + i];
                    }
                }
            }
        }
    }
    free(outb);
    free(xt);
}

void sk_nm_avx2(const sk_nm_args *a) {
    const char *env = getenv("SPARSEC_NM_ROWVEC_MIN_ROWS");
    const int64_t min_rows = env && *env ? strtoll(env, NULL, 10) : NM2_RV_MIN_ROWS;
    if (a->rows >= min_rows)
        sk_run_parallel(a->threads, nm2_rv_body, a);
    else
        sk_run_parallel(a->threads, nm_avx2_body, a);
}
#endif
