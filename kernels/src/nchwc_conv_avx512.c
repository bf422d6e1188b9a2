/* Sparse convolution in ONNX Runtime's NCHWc layout (16 channels a block, AVX-512).
 *
 * ORT runs a CNN's dense convolutions in NCHW16c: a tensor is [C/16][H][W][16], so one zmm
 * holds 16 channels of one position. MLAS's NCHWc conv puts 16 output channels in the lanes
 * and broadcasts each input channel's value: 16 FMAs per 16 input channels, position and
 * output block. An op of ours in the same layout runs inside ORT's NCHWc chain with no
 * reorders around it (an NCHW kernel op costs two reorders per conv, as much as the conv
 * saved on MobileNetV2 and ResNet-50).
 *
 * Scheme: per block (output block, tap, input block) as many pairs as its fullest lane keeps
 * of the block's 16 input channels (2:4 and 4:8: 8; 1:4: 4; unstructured 80%: ~6; an all-zero
 * block none; `offs` gives each block's range). Lane l of pair j is the j-th kept input channel
 * of output channel l and its weight. Per position: one load of the 16 input channels, then per
 * pair an in-register permute (vpermps picks each lane's channel) and an FMA: 8 FMAs instead of
 * 16 at 2:4. The permutes run on other ports than the FMAs on AMD Zen 4 (a microbenchmark of 12
 * positions x 16 input channels: 2.5x the dense broadcast-FMA loop); on Intel parts with a
 * second FMA unit on port 5 they compete with it, which is why lowering measures before it
 * chooses.
 *
 * Register block: 12 positions of one output row, their 12 input vectors of a (tap, input
 * block) and one pair at a time: 12 + 12 + 2 zmm (accumulators in fully unrolled arrays; GCC
 * keeps them in registers, see BLOCK_FMAS). Output rows narrower than 20 (ResNet-50's 14 and 7)
 * run as one flattened plane instead, in tiles of 7-12 positions across row ends.
 */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#include <immintrin.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "nchwc_conv_internal.h"
#include "sk.h"


static inline __m512i load_idx(const int32_t *p) { return _mm512_loadu_si512((const void *)p); }

static inline __m512 activate(__m512 v, int act, float lo, float hi) {
    if (act == SK_NCHWC_ACT_RELU) v = _mm512_max_ps(v, _mm512_setzero_ps());
    if (act == SK_NCHWC_ACT_CLIP) v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
    return v;
}

static inline __m512 finish(__m512 acc, const float *sum, const sk_nchwc_args *a) {
    if (sum) acc = _mm512_add_ps(acc, _mm512_loadu_ps(sum));
    return activate(acc, a->act, a->clip_lo, a->clip_hi);
}

/* Per (tap, input block) of an output block: the tile's NP input vectors (LOADX(p)) into
 * registers, then per pair of the block one index and one weight vector and, per position, a
 * permute (each lane picks its kept channel) and an FMA. A block has as many pairs as its
 * fullest lane (padding pairs have weight 0): 8 at 2:4, ~6 for unstructured 80%, none where
 * all 16 lanes are zero. 12 accumulators + 12 inputs + 2 pair vectors fit the 32 zmm (asm:
 * no zmm stack access in the loops); holding up to 8 pairs in registers instead, with a switch
 * on the count, made GCC spill the accumulators (ResNet-50 1.24x -> 1.03x). */
#define BLOCK_FMAS(blk, NP, LOADX)                                                                \
    {                                                                                             \
        const int64_t s0 = a->offs ? a->offs[blk] : (blk) * a->k;                                 \
        const int64_t n = a->offs ? a->offs[(blk) + 1] - s0 : a->k;                               \
        const int32_t *ix = a->idx + s0 * 16;                                                     \
        const float *wv = a->vals + s0 * 16;                                                      \
        if (n > 0) {                                                                              \
            __m512 xv[NP];                                                                        \
            _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) xv[p] = LOADX(p);               \
            for (int64_t j = 0; j < n; j++, ix += 16, wv += 16) {                                 \
                const __m512i iv = load_idx(ix);                                                  \
                const __m512 w = _mm512_loadu_ps(wv);                                             \
                _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                             \
                    acc[p] = _mm512_fmadd_ps(_mm512_permutexvar_ps(iv, xv[p]), w, acc[p]);       \
            }                                                                                     \
        }                                                                                         \
    }
#define LD_STRIDED(p) _mm512_loadu_ps(xp + (p) * xs)
#define LD_MASKED(p) _mm512_maskz_loadu_ps(m[p], xp + off[p])
#define LD_OFF(p) _mm512_loadu_ps(xp + off[p])

/* P interior positions of one row (accumulators in a fully unrolled array: the asm of every
 * variant has no zmm stack access inside the input-block loop). */
#define DEF_TILE(NP)                                                                              \
    static __attribute__((noinline)) void tile##NP(const sk_nchwc_args *a, const float *const *xrow, int nrows,             \
                         int64_t col0, int64_t ob, const float *bias, float *y, const float *sum) { \
        __m512 acc[NP];                                                                           \
        const __m512 init = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();                   \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) acc[p] = init;                      \
        const int64_t xs = 16 * a->sw, ib_stride = a->h * a->w * 16;                              \
        for (int r = 0; r < nrows; r++) {                                                         \
            const int kh = a->row_kh[r];                                                          \
            for (int kw = 0; kw < a->kw; kw++) {                                                  \
                const float *xb = xrow[r] + (col0 * a->sw - a->pl + kw * a->dw) * 16;             \
                const int64_t blk0 = ((ob * a->kh + kh) * a->kw + kw) * a->ib;                    \
                for (int64_t ib = 0; ib < a->ib; ib++) {                                          \
                    const float *xp = xb + ib * ib_stride;                                        \
                    BLOCK_FMAS(blk0 + ib, NP, LD_STRIDED)                                         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                                     \
            _mm512_storeu_ps(y + p * 16, finish(acc[p], sum ? sum + p * 16 : NULL, a));           \
    }
DEF_TILE(12)
DEF_TILE(4)

/* Up to 4 positions anywhere in the row (borders, tails): a position's input vector is a
 * masked load, all-zero where its tap falls into the padding (no fault: masked-off lanes are
 * not read). One position at a time cost ~3x a tiled one: 3 of 7 columns of ResNet-50's last
 * stage are borders. */
#define DEF_MTILE(NP)                                                                             \
    static __attribute__((noinline)) void tile##NP##m(const sk_nchwc_args *a, const float *const *xrow, int nrows,          \
                            int64_t col0, int npos, int64_t ob, const float *bias, float *y,      \
                            const float *sum) {                                                   \
        __m512 acc[NP];                                                                           \
        const __m512 init = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();                   \
        _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) acc[p] = init;                       \
        const int64_t ib_stride = a->h * a->w * 16;                                               \
        for (int r = 0; r < nrows; r++) {                                                         \
            const int kh = a->row_kh[r];                                                          \
            for (int kw = 0; kw < a->kw; kw++) {                                                  \
                int64_t off[NP];                                                                  \
                __mmask16 m[NP];                                                                  \
                _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++) {                            \
                    const int64_t iw = (col0 + p) * a->sw - a->pl + kw * a->dw;                   \
                    const int ok = p < npos && iw >= 0 && iw < a->w;                              \
                    off[p] = ok ? iw * 16 : 0;                                                    \
                    m[p] = ok ? 0xFFFF : 0;                                                       \
                }                                                                                 \
                const int64_t blk0 = ((ob * a->kh + kh) * a->kw + kw) * a->ib;                    \
                for (int64_t ib = 0; ib < a->ib; ib++) {                                          \
                    const float *xp = xrow[r] + ib * ib_stride;                                   \
                    BLOCK_FMAS(blk0 + ib, NP, LD_MASKED)                                          \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        /* Constant indices only: a loop to npos would make GCC keep acc in memory. */            \
        _Pragma("GCC unroll 4") for (int p = 0; p < NP; p++)                                      \
            if (p < npos) _mm512_storeu_ps(y + p * 16, finish(acc[p], sum ? sum + p * 16 : NULL, a)); \
    }
DEF_MTILE(4)
DEF_MTILE(3)
DEF_MTILE(2)
DEF_MTILE(1)

/* NP consecutive positions of the flattened output plane (q = oh * wo + ow): tiles run across
 * row ends, so narrow rows (ResNet-50's 14 and 7) fill whole 7-12-position tiles instead of
 * 4-wide and masked ones. Per tap, each position's input offset and load mask (zero where the
 * tap falls into the padding) come from a table that the caller builds once per tile for all
 * its output blocks (built per block it cost ~4% of the tile's time); taps with every position
 * inside use plain loads, taps with none are skipped. */
#define SK_FLAT_MAX_TAPS 64
typedef struct {
    int64_t off[SK_FLAT_MAX_TAPS][12];
    __mmask16 m[SK_FLAT_MAX_TAPS][12];
    int all[SK_FLAT_MAX_TAPS]; /* 1: every position inside; -1: none (the tap is skipped) */
    int npos;
} flat_taps;

static void flat_taps_build(const sk_nchwc_args *a, int64_t q0, int npos, flat_taps *t) {
    /* Each position's top-left input coordinate once (one division for the tile, not two per
     * position and tap: those cost more than a small depthwise tile's FMAs). */
    int64_t ih0[12], iw0[12], oh = q0 / a->wo, ow = q0 % a->wo;
    for (int p = 0; p < 12; p++) {
        ih0[p] = oh * a->sh - a->pt;
        iw0[p] = ow * a->sw - a->pl;
        if (++ow == a->wo) ow = 0, oh++;
    }
    t->npos = npos;
    for (int kh = 0; kh < a->kh; kh++)
        for (int kw = 0; kw < a->kw; kw++) {
            const int tap = kh * a->kw + kw;
            int all = 1, any = 0;
            for (int p = 0; p < 12; p++) {
                const int64_t ih = ih0[p] + kh * a->dh, iw = iw0[p] + kw * a->dw;
                const int ok = p < npos && ih >= 0 && ih < a->h && iw >= 0 && iw < a->w;
                t->off[tap][p] = ok ? (ih * a->w + iw) * 16 : 0;
                t->m[tap][p] = ok ? 0xFFFF : 0;
                all &= ok;
                any |= ok;
            }
            t->all[tap] = all ? 1 : any ? 0 : -1;
        }
}

#define DEF_TILEQ(NP)                                                                             \
    static __attribute__((noinline)) void tileq##NP(const sk_nchwc_args *a, const float *xb, const flat_taps *t, int64_t ob, \
                          const float *bias, float *y, const float *sum) {                        \
        __m512 acc[NP];                                                                           \
        const __m512 init = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();                   \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++) acc[p] = init;                      \
        const int64_t ib_stride = a->h * a->w * 16, taps = (int64_t)a->kh * a->kw;               \
        for (int64_t tap = 0; tap < taps; tap++) {                                                \
            if (t->all[tap] < 0) continue;                                                        \
            const int64_t *off = t->off[tap];                                                     \
            const __mmask16 *m = t->m[tap];                                                       \
            const int64_t blk0 = (ob * taps + tap) * a->ib;                                       \
            if (t->all[tap]) {                                                                    \
                for (int64_t ib = 0; ib < a->ib; ib++) {                                          \
                    const float *xp = xb + ib * ib_stride;                                        \
                    BLOCK_FMAS(blk0 + ib, NP, LD_OFF)                                             \
                }                                                                                 \
                continue;                                                                         \
            }                                                                                     \
            for (int64_t ib = 0; ib < a->ib; ib++) {                                              \
                const float *xp = xb + ib * ib_stride;                                            \
                BLOCK_FMAS(blk0 + ib, NP, LD_MASKED)                                              \
            }                                                                                     \
        }                                                                                         \
        const int npos = t->npos;                                                                 \
        _Pragma("GCC unroll 16") for (int p = 0; p < NP; p++)                                     \
            if (p < npos) _mm512_storeu_ps(y + p * 16, finish(acc[p], sum ? sum + p * 16 : NULL, a)); \
    }
DEF_TILEQ(12)
DEF_TILEQ(10)
DEF_TILEQ(8)
DEF_TILEQ(7)

typedef void (*tileq_fn)(const sk_nchwc_args *, const float *, const flat_taps *, int64_t, const float *,
                         float *, const float *);

static tileq_fn tileq_for(int np) { return np == 7 ? tileq7 : np == 8 ? tileq8 : np == 10 ? tileq10 : tileq12; }

/* Weight bytes of the output blocks that share one pass over the input (kept in L2). */
#define GROUP_BYTES (256 << 10)

/* Work goes out from a shared counter, one (group, image, output row, chunk) item at a time:
 * a static split waited for a preempted vCPU, and with unequal groups gave one thread 3x the
 * other's work (ResNet-50's stride-2 shortcut: groups of 25 and 7 blocks, one per thread). */
typedef struct {
    sk_nchwc_args a;
    atomic_llong next;
    atomic_int failed; /* body_dw: a thread's scratch could not be allocated */
} nchwc_shared;

/* Output blocks in groups whose packed weights (int32 index + float per element, the average
 * block's) fit in L2, of equal size: each input tile (all input blocks, in L1) serves every
 * block of the group before the next tile is read. One block at a time re-read the whole input
 * per block (from L3 for the 3 MB planes of ResNet-50's first stage). */
static int64_t group_blocks(const sk_nchwc_args *a, int64_t *groups) {
    const int64_t blocks = (int64_t)a->kh * a->kw * a->ib * a->ob;
    const int64_t pairs = a->offs ? a->offs[blocks] : blocks * a->k;
    const int64_t pack_ob = sk_ceil_div(pairs, a->ob) * 16 * 8;
    int64_t gob = GROUP_BYTES / (pack_ob > 0 ? pack_ob : 1);
    gob = gob < 1 ? 1 : gob > a->ob ? a->ob : gob;
    *groups = sk_ceil_div(a->ob, gob);
    return sk_ceil_div(a->ob, *groups);
}

static void body(const void *args, int tid, int nth) {
    nchwc_shared *sh = (nchwc_shared *)args;
    const sk_nchwc_args *a = &sh->a;
    (void)tid;
    int64_t groups;
    const int64_t gob = group_blocks(a, &groups);
    const int64_t rows = groups * a->batch * a->ho;
    /* Few rows (1x1 convs run as one row of the whole plane, small late layers): rows are cut
     * into chunks of whole 12-column tiles so that every thread gets work. */
    int64_t chunks = rows >= 4 * nth ? 1 : sk_ceil_div(4 * nth, rows);
    int64_t cw = sk_ceil_div(sk_ceil_div(a->wo, chunks), 12) * 12;
    chunks = sk_ceil_div(a->wo, cw);
    const int64_t items = rows * chunks;
    const int64_t plane_in = a->ib * a->h * a->w * 16, plane_out = a->ho * a->wo * 16;
    /* Interior columns: every tap's input column inside the row. */
    int64_t lo = (a->pl + a->sw - 1) / a->sw;
    int64_t hi = a->w - 1 - (int64_t)(a->kw - 1) * a->dw + a->pl;
    hi = hi < 0 ? 0 : hi / a->sw + 1;
    if (hi > a->wo) hi = a->wo;
    if (lo > hi) lo = hi;
    for (;;) {
        const int64_t item = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
        if (item >= items) break;
        const int64_t chunk = item % chunks, r = item / chunks;
        const int64_t oh = r % a->ho, b = (r / a->ho) % a->batch, g = r / (a->ho * a->batch);
        const int64_t ob0 = g * gob, ob1 = ob0 + gob < a->ob ? ob0 + gob : a->ob;
        const float *xrow[SK_NCHWC_MAX_KH];
        sk_nchwc_args row = *a;
        int nrows = 0;
        for (int kh = 0; kh < a->kh; kh++) {
            const int64_t ih = oh * a->sh - a->pt + kh * a->dh;
            if (ih < 0 || ih >= a->h) continue;
            xrow[nrows] = a->x + b * plane_in + ih * a->w * 16;
            row.row_kh[nrows++] = kh;
        }
        const int64_t c1 = (chunk + 1) * cw < a->wo ? (chunk + 1) * cw : a->wo;
        const int64_t in_hi = hi < c1 ? hi : c1;
        for (int64_t c = chunk * cw; c < c1;) {
            /* Interior positions in 12-wide tiles, then 4-wide ones; borders and the rest in
             * masked tiles of up to 4 (a masked tile costs about an interior 4-wide one, and
             * 4 positions one at a time ~3x that). Narrow rows (ResNet-50's 7x7 stage) are
             * masked tiles throughout (7 = 4 + 3). */
            const int64_t left = c1 - c;
            const int inside = c >= lo && in_hi - lo >= 12;
            const int width = inside && c + 12 <= in_hi  ? 12
                              : inside && c + 4 <= in_hi ? 4
                                                         : (int)(left < 4 ? left : 4);
            const int masked = width < 12 && !(inside && c + width <= in_hi);
            for (int64_t ob = ob0; ob < ob1; ob++) {
                const int64_t out = (b * a->ob + ob) * plane_out + oh * a->wo * 16 + c * 16;
                const float *bias = a->bias ? a->bias + ob * 16 : NULL;
                const float *sum = a->sum ? a->sum + out : NULL;
                float *y = a->y + out;
                if (width == 12) tile12(&row, xrow, nrows, c, ob, bias, y, sum);
                else if (!masked && width == 4) tile4(&row, xrow, nrows, c, ob, bias, y, sum);
                else if (width == 4) tile4m(&row, xrow, nrows, c, width, ob, bias, y, sum);
                else if (width == 3) tile3m(&row, xrow, nrows, c, width, ob, bias, y, sum);
                else if (width == 2) tile2m(&row, xrow, nrows, c, width, ob, bias, y, sum);
                else tile1m(&row, xrow, nrows, c, width, ob, bias, y, sum);
            }
            c += width;
        }
    }
}


/* Positions per tile for a plane: a tile computes all its positions and costs about one
 * position more for its weight loads, so the fewest (positions + 1) x tiles wins: 7x7 = 49 is
 * 5 tiles of 12 (65) or 7 of 7 (56); 14x14 stays at 12 (221 against 224 for 7). */
static int flat_np(int64_t plane) {
    static const int nps[] = {12, 10, 8, 7};
    static int forced = -1; /* SPARSEC_NCHWC_FLAT_NP, read once (as flat_below) */
    if (forced < 0) {
        const char *e = getenv("SPARSEC_NCHWC_FLAT_NP");
        forced = e ? atoi(e) : 0;
    }
    if (forced == 7 || forced == 8 || forced == 10 || forced == 12) return forced;
    int best = 12;
    for (int i = 1; i < 4; i++)
        if (sk_ceil_div(plane, nps[i]) * (nps[i] + 1) < sk_ceil_div(plane, best) * (best + 1)) best = nps[i];
    return best;
}

/* Narrow output rows: the plane in flattened tiles (tileq*), items of (group, image, chunk of
 * tiles) from the shared counter. */
static void body_flat(const void *args, int tid, int nth) {
    nchwc_shared *sh = (nchwc_shared *)args;
    const sk_nchwc_args *a = &sh->a;
    (void)tid;
    int64_t groups;
    const int64_t gob = group_blocks(a, &groups);
    const int64_t plane = a->ho * a->wo;
    const int np = flat_np(plane);
    const tileq_fn tile = tileq_for(np);
    const int64_t rows = groups * a->batch, tiles = sk_ceil_div(plane, np);
    int64_t chunks = rows >= 8 * nth ? 1 : sk_ceil_div(8 * nth, rows);
    if (chunks > tiles) chunks = tiles;
    const int64_t cw = sk_ceil_div(tiles, chunks) * np;
    chunks = sk_ceil_div(plane, cw);
    const int64_t items = rows * chunks;
    const int64_t plane_in = a->ib * a->h * a->w * 16;
    flat_taps taps;
    for (;;) {
        const int64_t item = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
        if (item >= items) break;
        const int64_t chunk = item % chunks, r = item / chunks;
        const int64_t b = r % a->batch, g = r / a->batch;
        const int64_t ob0 = g * gob, ob1 = ob0 + gob < a->ob ? ob0 + gob : a->ob;
        const int64_t q1 = (chunk + 1) * cw < plane ? (chunk + 1) * cw : plane;
        for (int64_t q = chunk * cw; q < q1; q += np) {
            flat_taps_build(a, q, (int)(q1 - q < np ? q1 - q : np), &taps);
            for (int64_t ob = ob0; ob < ob1; ob++) {
                const int64_t out = ((b * a->ob + ob) * plane + q) * 16;
                const float *bias = a->bias ? a->bias + ob * 16 : NULL;
                tile(a, a->x + b * plane_in, &taps, ob, bias, a->y + out, a->sum ? a->sum + out : NULL);
            }
        }
    }
}

/* A depthwise conv ahead of the 1x1 sparse conv (MobileNet's inverted residual: expand,
 * depthwise, project). Items of (image, output row, part of the output blocks) from the shared
 * counter: the row's depthwise outputs, every input block, go into the thread's scratch
 * [ib][wo][16] (nchwc_dw_avx512.c; L1/L2-resident), then the 1x1 conv runs over it in
 * flattened tiles as over any plane. The depthwise output is never written to the model's
 * memory and read back by another op call. Bands of 2-7 rows ran slower than one row on
 * MobileNetV2's layers (the scratch leaves L1). Few rows (batch 1, 7x7 planes: 7 items for 2
 * threads is fine, 3 is not) split the output blocks in parts, each computing the row's
 * depthwise outputs again. A thread's scratch is kept between calls: allocated per call,
 * buffers over glibc's mmap threshold cost page faults every call. */
static _Thread_local float *scratch_buf;
static _Thread_local size_t scratch_cap;

static float *thread_scratch(size_t bytes) {
    if (bytes <= scratch_cap) return scratch_buf;
    free(scratch_buf);
    scratch_buf = aligned_alloc(64, (bytes + 63) / 64 * 64);
    scratch_cap = scratch_buf ? bytes : 0;
    return scratch_buf;
}

static void body_dw(const void *args, int tid, int nth) {
    nchwc_shared *sh = (nchwc_shared *)args;
    const sk_nchwc_args *a = &sh->a;
    (void)tid;
    const int64_t plane = a->ho * a->wo, plane_in = a->ib * a->h * a->w * 16;
    const int64_t units = a->batch * a->ho;
    int64_t parts = units >= 2 * nth ? 1 : sk_ceil_div(2 * nth, units);
    if (parts > a->ob) parts = a->ob;
    const int64_t per = sk_ceil_div(a->ob, parts);
    parts = sk_ceil_div(a->ob, per);
    const int64_t items = units * parts;
    float *buf = thread_scratch((size_t)(a->ib * a->wo) * 16 * sizeof(float));
    if (!buf) {
        atomic_store(&sh->failed, 1);
        return;
    }
    sk_nchwc_args p1 = *a; /* the 1x1 conv over the scratch: one row of wo positions */
    p1.h = 1, p1.w = a->wo, p1.kh = p1.kw = 1;
    const int np = flat_np(a->wo);
    const tileq_fn tile = tileq_for(np);
    flat_taps id; /* the 1x1 conv's tap table over the scratch: position p at p * 16, all inside */
    id.all[0] = 1;
    for (int p = 0; p < 12; p++) id.off[0][p] = p * 16, id.m[0][p] = 0xFFFF;
    for (;;) {
        const int64_t item = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
        if (item >= items) break;
        const int64_t part = item % parts, u = item / parts, b = u / a->ho, oh = u % a->ho;
        sk_nchwc_dw_row(a, a->x + b * plane_in, oh, buf);
        const int64_t ob1 = (part + 1) * per < a->ob ? (part + 1) * per : a->ob;
        for (int64_t q = 0; q < a->wo; q += np) {
            id.npos = (int)(a->wo - q < np ? a->wo - q : np);
            for (int64_t ob = part * per; ob < ob1; ob++) {
                const int64_t out = ((b * a->ob + ob) * plane + oh * a->wo + q) * 16;
                const float *bias = a->bias ? a->bias + ob * 16 : NULL;
                tile(&p1, buf + q * 16, &id, ob, bias, a->y + out, a->sum ? a->sum + out : NULL);
            }
        }
    }
}

/* Output rows narrower than this run as a flattened plane (SPARSEC_NCHWC_FLAT_W overrides). */
static int64_t flat_below(void) {
    static int64_t v = -1;
    if (v < 0) {
        const char *e = getenv("SPARSEC_NCHWC_FLAT_W");
        v = e ? atoll(e) : 20;
    }
    return v;
}

int sk_nchwc_conv_avx512(const sk_nchwc_args *a) {
    if (a->dwop) {
        nchwc_shared sh = {.a = *a};
        atomic_init(&sh.next, 0);
        atomic_init(&sh.failed, 0);
        sk_run_parallel(a->threads, body_dw, &sh);
        return atomic_load(&sh.failed) ? SK_ERR_MEMORY : SK_OK;
    }
    sk_nchwc_args flat = *a;
    if (a->kh == 1 && a->kw == 1 && a->sh == 1 && a->sw == 1 && a->pt == 0 && a->pl == 0
        && a->ho == a->h && a->wo == a->w) {
        /* A 1x1 conv maps position to position: the plane is one long row (full tiles). */
        flat.w = flat.wo = a->h * a->w;
        flat.h = flat.ho = 1;
    }
    /* 1x1 stride-1 convs keep the long row (plain strided loads beat the per-position
     * table there: 0.91-0.96x in the flattened tiles on 14x14 and 7x7). */
    const int one_row = flat.ho == 1 && a->ho != 1;
    const int flat_plane = !one_row && a->wo < flat_below() && a->kh * a->kw <= SK_FLAT_MAX_TAPS;
    nchwc_shared sh = {.a = flat_plane ? *a : flat};
    atomic_init(&sh.next, 0);
    sk_run_parallel(a->threads, flat_plane ? body_flat : body, &sh);
    return SK_OK;
}
#endif
