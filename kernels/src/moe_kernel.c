/* MoE FFN: routing, grouping of tokens by expert, and the two parallel phases.
 *
 * Batch 1 (decode): only the top_k selected experts' w1/w_up/w2 are read, each once.
 * Many tokens: tokens are grouped by expert, each expert's tokens cut into tiles of up to
 * SK_MOE_MR rows, and each tile runs the tile kernel against the expert's 32-column weight
 * panels (the panel layout, moe_internal.h: each panel one contiguous stream).
 * Phase A (up): work items are (tile, group of F panels), claimed dynamically (tiles differ
 * in rows, experts in tokens); an item packs its tokens' X rows interleaved ([D][mr]) once,
 * and applies bias, activation, the up branch and the gate to each panel's output while it
 * is in registers' reach, storing the hidden tile interleaved ([F][mr]), the down GEMM's A.
 * Phase B (down): work items are 32-column panels of D, claimed dynamically too; each item
 * initialises its slice of Y with b2 and accumulates every tile (experts in order) into it,
 * so threads never write the same element (no atomics, and the result does not depend on
 * the thread count).
 * Small batches (decode) on several threads run one region instead of two (dense_fused):
 * each phase A item goes on through the down projection of its F rows into a partial
 * output, which the caller adds up in a fixed order.
 *
 * N:M-packed experts run the same phases through the N:M MatMul kernels (sk_nm_*, single
 * threaded inside a work item: chunks are whole 16-column tiles, so a chunk of a packed
 * projection is a contiguous slice of its buffers). Those kernels take strided rows, not
 * row pointers: each slot's X row is gathered once, and phase B writes per-slot partial
 * outputs that the same work item then adds into the tokens' Y rows.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"
#include "sk_internal.h"

#define MOE_CHUNK 64 /* a multiple of SK_TILE: packed chunks are whole tiles */
/* Floats of partial outputs up to which small batches run one fused region (256 KB). */
#define MOE_FUSED_MAX_PARTIAL 65536
/* As the N:M ops (sk_ort_ops.c): inside ORT the regions run on its spinning pool, so a second
 * thread pays no wake-up; at 1M MACs a batch-1 GPT-2 FFN at 25% active (1.2M) ran one thread
 * and read its experts at half the dense GEMV's bandwidth. */
#ifndef MOE_MIN_MACS_PER_THREAD
#define MOE_MIN_MACS_PER_THREAD (1 << 16)
#endif

/* ------------------------------------------------------------------ scalar reference */

void sk_moe_panel_scalar(const float *const *a, int64_t rows, int64_t k, const float *b,
                         int64_t ldb, int64_t ncols, float *const *c, int64_t coff,
                         int accumulate) {
    for (int64_t r = 0; r < rows; r++) {
        float *cr = c[r] + coff;
        if (!accumulate) memset(cr, 0, (size_t)ncols * sizeof *cr);
        for (int64_t kk = 0; kk < k; kk++) {
            const float av = a[r][kk];
            const float *br = b + kk * ldb;
            for (int64_t j = 0; j < ncols; j++) cr[j] += av * br[j];
        }
    }
}

static float act_scalar(float v, int act) {
    switch (act) {
    case MOE_RELU: return v > 0.0f ? v : 0.0f;
    case MOE_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case MOE_GELU_TANH:
        return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    default: return v / (1.0f + expf(-v));
    }
}

void sk_moe_act_scalar(float *h, const float *bias, const float *up, float gate, int64_t n,
                       int act) {
    for (int64_t j = 0; j < n; j++) {
        float v = act_scalar(h[j] + bias[j], act);
        if (up) v *= up[j];
        h[j] = v * gate;
    }
}

void sk_moe_tile_scalar(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                        float *c) {
    for (int i = 0; i < mr; i++) {
        float *cr = c + i * SK_MOE_NR;
        for (int64_t j = 0; j < nc; j++) cr[j] = 0.0f;
        for (int64_t kk = 0; kk < k; kk++) {
            const float av = a[kk * mr + i];
            const float *br = b + kk * ldb;
            for (int64_t j = 0; j < nc; j++) cr[j] += av * br[j];
        }
    }
}

/* ------------------------------------------------------------------ panel layout */

int64_t sk_moe_panel_elems(int64_t k, int64_t cols) {
    return sk_ceil_div(cols, SK_MOE_NR) * k * SK_MOE_NR;
}

void sk_moe_pack_panels(const float *w, int64_t e, int64_t k, int64_t cols, float *out) {
    const int64_t panels = sk_ceil_div(cols, SK_MOE_NR);
    for (int64_t x = 0; x < e; x++)
        for (int64_t p = 0; p < panels; p++) {
            const int64_t c0 = p * SK_MOE_NR, nc = cols - c0 < SK_MOE_NR ? cols - c0 : SK_MOE_NR;
            float *dst = out + (x * panels + p) * k * SK_MOE_NR;
            for (int64_t kk = 0; kk < k; kk++) {
                const float *src = w + (x * k + kk) * cols + c0;
                for (int64_t j = 0; j < SK_MOE_NR; j++) dst[kk * SK_MOE_NR + j] = j < nc ? src[j] : 0.0f;
            }
        }
}

/* Panel p of expert e's [k, cols] projection and its row stride, in either layout. */
static const float *weight_panel(const float *w, int panel, int64_t e, int64_t k, int64_t cols,
                                 int64_t p, int64_t *ldb) {
    if (panel) {
        *ldb = SK_MOE_NR;
        return w + e * sk_moe_panel_elems(k, cols) + p * k * SK_MOE_NR;
    }
    *ldb = cols;
    return w + e * k * cols + p * SK_MOE_NR;
}

/* ------------------------------------------------------------------ driver */

int64_t sk_moe_nm_records(int64_t k, int64_t cols, int n, int m) {
    return sk_ceil_div(cols, SK_TILE) * (k / m) * n;
}

int sk_moe_check(const sk_moe_weights *w) {
    if (!w || w->d <= 0 || w->e <= 0 || w->f <= 0 || w->d > INT32_MAX || w->f > INT32_MAX ||
        w->e > 4096 || w->top_k < 1 || w->top_k > w->e || w->act < 0 || w->act >= MOE_ACTS ||
        w->gating < MOE_GATE_NONE || w->gating > MOE_GATE_SOFTMAX_ALL)
        return SK_ERR_SHAPE;
    if (!w->rw || !w->rb || !w->b1 || !w->b2) return SK_ERR_NULL;
    if (w->panel != 0 && (w->panel != SK_MOE_NR || w->nm_n || w->nm_m)) return SK_ERR_SHAPE;
    if (w->nm_n == 0 && w->nm_m == 0) return w->w1 && w->w2 ? SK_OK : SK_ERR_NULL;
    if (sk_nm_meta_words(w->nm_m) == 0 || w->nm_n < 1 || w->nm_n > w->nm_m || w->d % w->nm_m ||
        w->f % w->nm_m)
        return SK_ERR_SHAPE;
    if (!w->v1 || !w->m1 || !w->v2 || !w->m2 || (!w->vup) != (!w->mup)) return SK_ERR_NULL;
    return SK_OK;
}

/* Whether positions rise strictly within every group of `tile_groups` (tile, group) pairs. */
static int nm_canonical(const uint16_t *meta, int64_t tile_groups, int n, int m) {
    const int words = sk_nm_meta_words(m);
    for (int64_t tg = 0; tg < tile_groups; tg++)
        for (int j = 1; j < n; j++) {
            const uint16_t *prev = meta + (tg * n + j - 1) * words, *cur = prev + words;
            for (int lane = 0; lane < SK_TILE; lane++)
                if (sk_nm_pos(m, cur, lane) <= sk_nm_pos(m, prev, lane)) return 0;
        }
    return 1;
}

int64_t sk_moe_nm_bad_expert(const sk_moe_weights *w) {
    const int n = w->nm_n, m = w->nm_m, words = sk_nm_meta_words(m);
    const int64_t r1 = sk_moe_nm_records(w->d, w->f, n, m), r2 = sk_moe_nm_records(w->f, w->d, n, m);
    for (int64_t e = 0; e < w->e; e++)
        if (!nm_canonical(w->m1 + e * r1 * words, r1 / n, n, m) ||
            !nm_canonical(w->m2 + e * r2 * words, r2 / n, n, m) ||
            (w->mup && !nm_canonical(w->mup + e * r1 * words, r1 / n, n, m)))
            return e;
    return -1;
}

typedef void (*sk_moe_nm_fn)(const sk_nm_args *a);

typedef struct {
    const sk_moe_weights *w;
    sk_moe_act_fn actf;
    sk_moe_nm_fn nm;                /* packed experts: the N:M kernel of the ISA */
    const float *xg;                /* packed: per slot, its token's X row (gathered) */
    float *h, *u, *o;               /* packed: hidden [slots, F], up [slots, F], partial Y [slots, D] */
    int64_t tv1, tm1, tv2, tm2;     /* packed: values / meta elements per 16-column tile */
    int64_t tiles_f, tiles_d;       /* packed: tiles per expert of w1/w_up and of w2 */
    int64_t rows;
    const int64_t *count, *offset; /* per expert: routed tokens, first slot */
    const float *const *xrows;      /* per slot: the token's X row */
    float *const *hrows, *const *urows, *const *yrows; /* per slot */
    const float *gate;              /* per slot */
    const int32_t *items;           /* phase A: expert * chunks + chunk (dense: tile * groups + group) */
    int64_t nitems, chunks_f, chunks_d;
    /* dense experts */
    sk_moe_tile_fn tile;
    const int64_t *tslot;           /* per tile: its first slot (its rows: the next tmr slots) */
    const int32_t *texp, *tmr;      /* per tile: expert, rows */
    int64_t ntiles, groups, gsize;  /* tiles; F panels per phase-A item: gsize, in `groups` items */
    float *xt;                      /* per thread: a tile's X rows interleaved, [D][SK_MOE_MR] */
    float *ht;                      /* hidden tiles: tile at slot s0 with mr rows at ht + s0 F, [F][mr] */
    atomic_llong *next;             /* the next unclaimed item (phase A), panel (phase B) */
    float *y;
    float *part;                    /* fused: the items' partial outputs */
} moe_job;

/* Phase A item `it` of the dense experts: its tile's hidden rows over its group of F panels
 * (columns [*f0, *f1) of F), stored interleaved at ht + s0 F. xt: the thread's X tile,
 * *packed: the tile it holds (-1: none). Returns the tile. */
static int64_t up_item(const moe_job *j, int64_t it, float *xt, int64_t *packed, int64_t *f0,
                       int64_t *f1) {
    const sk_moe_weights *w = j->w;
    const int64_t d = w->d, f = w->f, panels = sk_ceil_div(f, SK_MOE_NR);
    const int gated = w->wup != NULL;
    float ct[SK_MOE_MR * SK_MOE_NR], ut[SK_MOE_MR * SK_MOE_NR];
    const int64_t t = j->items[it] / j->groups, g = j->items[it] % j->groups;
    const int64_t s0 = j->tslot[t], e = j->texp[t];
    const int mr = j->tmr[t];
    const float *a = j->xrows[s0]; /* one row: the tile is the row itself */
    if (mr > 1) {
        if (*packed != t) {
            const float *const *xr = j->xrows + s0;
            for (int64_t kk = 0; kk < d; kk++) /* sequential stores, mr read streams */
                for (int i = 0; i < mr; i++) xt[kk * mr + i] = xr[i][kk];
        }
        *packed = t;
        a = xt;
    }
    float *ht = j->ht + s0 * f;
    const int64_t p1 = (g + 1) * j->gsize < panels ? (g + 1) * j->gsize : panels;
    for (int64_t pn = g * j->gsize; pn < p1; pn++) {
        const int64_t c0 = pn * SK_MOE_NR, nc = f - c0 < SK_MOE_NR ? f - c0 : SK_MOE_NR;
        int64_t ldb;
        const float *b = weight_panel(w->w1, w->panel, e, d, f, pn, &ldb);
        j->tile(a, mr, d, b, ldb, nc, ct);
        if (gated) {
            b = weight_panel(w->wup, w->panel, e, d, f, pn, &ldb);
            j->tile(a, mr, d, b, ldb, nc, ut);
        }
        for (int i = 0; i < mr; i++)
            j->actf(ct + i * SK_MOE_NR, w->b1 + e * f + c0, gated ? ut + i * SK_MOE_NR : NULL,
                    j->gate[s0 + i], nc, w->act);
        for (int64_t c = 0; c < nc; c++)
            for (int i = 0; i < mr; i++) ht[(c0 + c) * mr + i] = ct[i * SK_MOE_NR + c];
    }
    *f0 = g * j->gsize * SK_MOE_NR;
    *f1 = p1 * SK_MOE_NR < f ? p1 * SK_MOE_NR : f;
    return t;
}

/* Phase A, dense experts: items claimed in order until none is left. */
static void dense_up(const void *p, int tid, int nth) {
    (void)nth;
    const moe_job *j = p;
    float *xt = j->xt + (int64_t)tid * j->w->d * SK_MOE_MR;
    int64_t packed = -1, f0, f1;
    for (int64_t it; (it = atomic_fetch_add_explicit(j->next, 1, memory_order_relaxed)) < j->nitems;)
        up_item(j, it, xt, &packed, &f0, &f1);
}

/* Small batches, dense experts, one parallel region: each phase A item goes on through the
 * down projection of its F rows [f0, f1) into its own partial output, [mr][D] at
 * part + (s0 groups + g mr) D; the caller adds the partials (sum_partials). */
static void dense_fused(const void *p, int tid, int nth) {
    (void)nth;
    const moe_job *j = p;
    const sk_moe_weights *w = j->w;
    const int64_t d = w->d, f = w->f;
    float *xt = j->xt + (int64_t)tid * d * SK_MOE_MR;
    float ct[SK_MOE_MR * SK_MOE_NR];
    int64_t packed = -1, f0, f1;
    for (int64_t it; (it = atomic_fetch_add_explicit(j->next, 1, memory_order_relaxed)) < j->nitems;) {
        const int64_t t = up_item(j, it, xt, &packed, &f0, &f1), g = j->items[it] % j->groups;
        const int64_t s0 = j->tslot[t];
        const int mr = j->tmr[t];
        float *part = j->part + (s0 * j->groups + g * mr) * d;
        for (int64_t pn = 0; pn < sk_ceil_div(d, SK_MOE_NR); pn++) {
            const int64_t c0 = pn * SK_MOE_NR, nc = d - c0 < SK_MOE_NR ? d - c0 : SK_MOE_NR;
            int64_t ldb;
            const float *b = weight_panel(w->w2, w->panel, j->texp[t], f, d, pn, &ldb);
            j->tile(j->ht + s0 * f + f0 * mr, mr, f1 - f0, b + f0 * ldb, ldb, nc, ct);
            for (int i = 0; i < mr; i++)
                memcpy(part + i * d + c0, ct + i * SK_MOE_NR, (size_t)nc * sizeof *ct);
        }
    }
}

/* y = b2 + the fused items' partials, tiles and groups in order (independent of threads). */
static void sum_partials(const moe_job *j) {
    const int64_t d = j->w->d;
    for (int64_t r = 0; r < j->rows; r++) memcpy(j->y + r * d, j->w->b2, (size_t)d * sizeof *j->y);
    for (int64_t t = 0; t < j->ntiles; t++) {
        const int64_t s0 = j->tslot[t];
        const int mr = j->tmr[t];
        for (int64_t g = 0; g < j->groups; g++)
            for (int i = 0; i < mr; i++) {
                const float *src = j->part + (s0 * j->groups + g * mr + i) * d;
                float *yr = j->yrows[s0 + i];
                for (int64_t c = 0; c < d; c++) yr[c] += src[c];
            }
    }
}

/* Phase B, dense experts: D's panels claimed in order (a preempted thread delays the call
 * by one panel at most), every tile into each. */
static void dense_down(const void *p, int tid, int nth) {
    (void)tid;
    (void)nth;
    const moe_job *j = p;
    const sk_moe_weights *w = j->w;
    const int64_t d = w->d, f = w->f, panels = sk_ceil_div(d, SK_MOE_NR);
    float ct[SK_MOE_MR * SK_MOE_NR];
    for (int64_t pn; (pn = atomic_fetch_add_explicit(j->next, 1, memory_order_relaxed)) < panels;) {
        const int64_t c0 = pn * SK_MOE_NR, nc = d - c0 < SK_MOE_NR ? d - c0 : SK_MOE_NR;
        for (int64_t r = 0; r < j->rows; r++)
            memcpy(j->y + r * d + c0, w->b2 + c0, (size_t)nc * sizeof *j->y);
        for (int64_t t = 0; t < j->ntiles; t++) {
            const int64_t s0 = j->tslot[t];
            const int mr = j->tmr[t];
            int64_t ldb;
            const float *b = weight_panel(w->w2, w->panel, j->texp[t], f, d, pn, &ldb);
            j->tile(j->ht + s0 * f, mr, f, b, ldb, nc, ct);
            for (int i = 0; i < mr; i++) {
                float *yr = j->yrows[s0 + i] + c0;
                const float *cr = ct + i * SK_MOE_NR;
                for (int64_t c = 0; c < nc; c++) yr[c] += cr[c];
            }
        }
    }
}

/* Phase A, packed experts: (expert, chunk) items split evenly. */
static void nm_up(const void *p, int tid, int nth) {
    const moe_job *j = p;
    const sk_moe_weights *w = j->w;
    int64_t begin, end;
    sk_split(j->nitems, tid, nth, &begin, &end);
    for (int64_t it = begin; it < end; it++) {
        const int64_t e = j->items[it] / j->chunks_f, c0 = (j->items[it] % j->chunks_f) * MOE_CHUNK;
        const int64_t nc = w->f - c0 < MOE_CHUNK ? w->f - c0 : MOE_CHUNK;
        const int64_t s0 = j->offset[e], n = j->count[e];
        const int gated = w->vup != NULL;
        /* Tile t of expert e: its slice starts (e * tiles_f + t) tiles into the buffer. */
        const int64_t tile = e * j->tiles_f + c0 / SK_TILE;
        sk_nm_args a = {j->xg + s0 * w->d, w->d, n, w->d, nc, w->nm_n, w->nm_m,
                        w->v1 + tile * j->tv1, w->m1 + tile * j->tm1, j->h + s0 * w->f + c0,
                        w->f, 1};
        j->nm(&a);
        if (gated) {
            a.values = w->vup + tile * j->tv1;
            a.meta = w->mup + tile * j->tm1;
            a.y = j->u + s0 * w->f + c0;
            j->nm(&a);
        }
        for (int64_t r = 0; r < n; r++)
            j->actf(j->hrows[s0 + r] + c0, w->b1 + e * w->f + c0,
                    gated ? j->urows[s0 + r] + c0 : NULL, j->gate[s0 + r], nc, w->act);
    }
}

/* Phase B, packed experts: D's chunks split evenly, every expert into each. */
static void nm_down(const void *p, int tid, int nth) {
    const moe_job *j = p;
    const sk_moe_weights *w = j->w;
    int64_t begin, end;
    sk_split(j->chunks_d, tid, nth, &begin, &end);
    for (int64_t ch = begin; ch < end; ch++) {
        const int64_t c0 = ch * MOE_CHUNK, nc = w->d - c0 < MOE_CHUNK ? w->d - c0 : MOE_CHUNK;
        for (int64_t e = 0; e < w->e; e++) {
            if (!j->count[e]) continue;
            const int64_t s0 = j->offset[e];
            const int64_t tile = e * j->tiles_d + c0 / SK_TILE;
            const sk_nm_args a = {j->h + s0 * w->f, w->f, j->count[e], w->f, nc, w->nm_n,
                                  w->nm_m, w->v2 + tile * j->tv2, w->m2 + tile * j->tm2,
                                  j->o + s0 * w->d + c0, w->d, 1};
            j->nm(&a);
            for (int64_t r = 0; r < j->count[e]; r++) {
                float *yr = j->yrows[s0 + r] + c0;
                const float *orow = j->o + (s0 + r) * w->d + c0;
                for (int64_t c = 0; c < nc; c++) yr[c] += orow[c];
            }
        }
    }
}

/* Carve n bytes (8-byte aligned) off the workspace. */
static void *take(char **p, size_t n) {
    void *out = *p;
    *p += (n + 7) / 8 * 8;
    return out;
}

static int pick_threads(const sk_moe_weights *w, int64_t rows, int threads) {
    int64_t macs = rows * w->top_k * w->d * w->f * (w->wup || w->vup ? 3 : 2);
    if (w->nm_n) macs = macs / w->nm_m * w->nm_n;
    int64_t t = macs / MOE_MIN_MACS_PER_THREAD;
    if (t > threads) t = threads;
    return t < 1 ? 1 : (int)t;
}

int sk_moe_ffn(const sk_moe_weights *w, const float *x, int64_t rows, float *y, int isa,
               int threads) {
    int rc = sk_moe_check(w);
    if (rc != SK_OK) return rc;
    if (rows < 0) return SK_ERR_SHAPE;
    if (!sk_isa_supported(isa)) return SK_ERR_ISA;
    if (rows == 0) return SK_OK;
    if (!x || !y) return SK_ERR_NULL;
    sk_moe_panel_fn panel = sk_moe_panel_scalar;
    sk_moe_act_fn actf = sk_moe_act_scalar;
    sk_moe_tile_fn tile = sk_moe_tile_scalar;
    sk_moe_nm_fn nm = w->nm_n ? sk_nm_scalar : NULL;
#if defined(__x86_64__) || defined(_M_X64)
    if (isa == SK_ISA_AVX512) {
        panel = sk_moe_panel_avx512;
        actf = sk_moe_act_avx512;
        tile = sk_moe_tile_avx512;
        if (nm) nm = sk_nm_avx512;
    } else if (isa == SK_ISA_AVX2) {
        panel = sk_moe_panel_avx2;
        actf = sk_moe_act_avx2;
        tile = sk_moe_tile_avx2;
        if (nm) nm = sk_nm_avx2;
    }
#endif
#if defined(__aarch64__)
    if (nm && isa == SK_ISA_NEON) nm = sk_nm_neon; /* the dense MoE tiles are scalar there */
#endif
    const int gated = w->wup || w->vup;
    const int64_t d = w->d, e = w->e, f = w->f, k = w->top_k;
    const int64_t slots = rows * k, chunks_f = (f + MOE_CHUNK - 1) / MOE_CHUNK;
    const int64_t panels_f = sk_ceil_div(f, SK_MOE_NR);
    const int nth = pick_threads(w, rows, threads);
    /* phase A items: packed experts (expert, chunk); dense (tile, panel group), tiles <= slots */
    const int64_t max_items = nm ? e * chunks_f : slots * panels_f;
    /* One allocation for the routing state and the hidden activations. */
    const size_t bytes = (size_t)rows * e * sizeof(float)         /* logits */
                         + (size_t)slots * sizeof(int32_t)         /* chosen expert per slot */
                         + (size_t)slots * sizeof(float)           /* gate per (token, choice) */
                         + (size_t)2 * e * sizeof(int64_t)         /* count, offset */
                         + (size_t)slots * 4 * sizeof(void *)      /* xrows, hrows, urows, yrows */
                         + (size_t)slots * sizeof(float)           /* gate per slot */
                         + (size_t)max_items * sizeof(int32_t)     /* phase A items */
                         + (size_t)rows * sizeof(void *)           /* logits row pointers */
                         + (size_t)slots * (sizeof(int64_t) + 2 * sizeof(int32_t)) /* tiles */
                         + 64 * 8;
    /* packed experts: hidden (and up) rows, gathered X rows and partial Y rows; dense: the
     * hidden tiles and each thread's interleaved X tile */
    /* Dense experts, small batches: one parallel region (dense_fused) instead of two when
     * the items' partial outputs are small; a region costs a pool wake-up, and at batch 1
     * the whole FFN is ~0.1 ms. Groups as below (at most panels_f) bound the partials. */
    const int fused = !nm && nth > 1 && slots * panels_f * d <= MOE_FUSED_MAX_PARTIAL;
    const size_t hbytes = nm ? (size_t)slots * sizeof(float) * (f * (gated ? 2 : 1) + 2 * d)
                             : sizeof(float) * ((size_t)slots * f + (size_t)nth * d * SK_MOE_MR +
                                                (fused ? (size_t)slots * panels_f * d : 0));
    char *mem = malloc(bytes), *hmem = aligned_alloc(64, (hbytes + 63) / 64 * 64);
    if (!mem || !hmem) {
        free(mem);
        free(hmem);
        return SK_ERR_SHAPE;
    }
    char *p = mem;
#define TAKE(type, n) ((type *)take(&p, (size_t)(n) * sizeof(type)))
    float *logits = TAKE(float, rows * e);
    int32_t *choice = TAKE(int32_t, slots);
    float *cgate = TAKE(float, slots);
    int64_t *count = TAKE(int64_t, e), *offset = TAKE(int64_t, e);
    const float **xrows = TAKE(const float *, slots);
    float **hrows = TAKE(float *, slots), **urows = TAKE(float *, slots);
    float **yrows = TAKE(float *, slots);
    float *sgate = TAKE(float, slots);
    int32_t *items = TAKE(int32_t, max_items);
    float **lrows = TAKE(float *, rows);
    int64_t *tslot = TAKE(int64_t, slots);
    int32_t *texp = TAKE(int32_t, slots), *tmr = TAKE(int32_t, slots);
    const float **trows = (const float **)yrows; /* reused below for the router's X rows */
#undef TAKE
    /* Router: logits = x @ rw + rb. */
    for (int64_t t = 0; t < rows; t++) {
        trows[t] = x + t * d;
        lrows[t] = logits + t * e;
    }
    panel((const float *const *)trows, rows, d, w->rw, e, e, lrows, 0, 0);
    memset(count, 0, (size_t)e * sizeof *count);
    for (int64_t t = 0; t < rows; t++) {
        float *l = logits + t * e;
        for (int64_t i = 0; i < e; i++) l[i] += w->rb[i];
        /* top_k by repeated scans (k is small); ties go to the lower index, as TopK. */
        for (int64_t c = 0; c < k; c++) {
            int64_t best = -1;
            for (int64_t i = 0; i < e; i++) {
                int taken = 0;
                for (int64_t q = 0; q < c; q++) taken |= choice[t * k + q] == i;
                if (!taken && (best < 0 || l[i] > l[best])) best = i;
            }
            choice[t * k + c] = (int32_t)best;
            count[best]++;
        }
        if (w->gating == MOE_GATE_SOFTMAX) {
            const float top = l[choice[t * k]];
            float sum = 0.0f;
            for (int64_t c = 0; c < k; c++) sum += cgate[t * k + c] = expf(l[choice[t * k + c]] - top);
            for (int64_t c = 0; c < k; c++) cgate[t * k + c] /= sum;
        } else if (w->gating == MOE_GATE_SOFTMAX_ALL) { /* the denominator spans all E experts */
            const float top = l[choice[t * k]];
            float sum = 0.0f;
            for (int64_t i = 0; i < e; i++) sum += expf(l[i] - top);
            for (int64_t c = 0; c < k; c++) cgate[t * k + c] = expf(l[choice[t * k + c]] - top) / sum;
        } else {
            for (int64_t c = 0; c < k; c++) cgate[t * k + c] = 1.0f;
        }
    }
    /* Group (token, choice) slots by expert, tokens in order; dense experts: cut each
     * expert's slots into tiles of near-equal rows (<= SK_MOE_MR). */
    int64_t nitems = 0, acc = 0, ntiles = 0;
    for (int64_t i = 0; i < e; i++) {
        offset[i] = acc;
        acc += count[i];
        if (!count[i]) continue;
        if (nm) {
            for (int64_t c = 0; c < chunks_f; c++) items[nitems++] = (int32_t)(i * chunks_f + c);
            continue;
        }
        const int64_t nt = sk_ceil_div(count[i], SK_MOE_MR);
        for (int64_t q = 0, s = offset[i]; q < nt; q++) {
            const int64_t mr = count[i] * (q + 1) / nt - count[i] * q / nt;
            tslot[ntiles] = s;
            texp[ntiles] = (int32_t)i;
            tmr[ntiles++] = (int32_t)mr;
            s += mr;
        }
    }
    /* Dense phase A: (tile, group of F panels) items, enough of them for every thread. */
    int64_t groups = 1, gsize = panels_f;
    if (!nm) {
        groups = sk_ceil_div(4 * nth, ntiles);
        if (groups > panels_f) groups = panels_f;
        gsize = sk_ceil_div(panels_f, groups);
        groups = sk_ceil_div(panels_f, gsize);
        for (int64_t t = 0; t < ntiles; t++)
            for (int64_t g = 0; g < groups; g++) items[nitems++] = (int32_t)(t * groups + g);
    }
    int64_t *fill = count; /* counts are rebuilt while filling */
    memset(fill, 0, (size_t)e * sizeof *fill);
    float *h = (float *)hmem, *u = nm && gated ? h + slots * f : NULL;
    float *xg = nm ? h + slots * f * (gated ? 2 : 1) : NULL, *o = nm ? xg + slots * d : NULL;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t c = 0; c < k; c++) {
            const int64_t ex = choice[t * k + c], s = offset[ex] + fill[ex]++;
            xrows[s] = x + t * d;
            if (xg) memcpy(xg + s * d, x + t * d, (size_t)d * sizeof *xg);
            hrows[s] = h + s * f;
            urows[s] = u ? u + s * f : NULL;
            yrows[s] = y + t * d;
            sgate[s] = cgate[t * k + c];
        }
    const int64_t words = nm ? sk_nm_meta_words(w->nm_m) : 0;
    const int64_t rec1 = nm ? (d / w->nm_m) * w->nm_n : 0, rec2 = nm ? (f / w->nm_m) * w->nm_n : 0;
    atomic_llong next;
    atomic_init(&next, 0);
    moe_job job = {w, actf, nm, xg, h, u, o, rec1 * SK_TILE, rec1 * words, rec2 * SK_TILE,
                   rec2 * words, sk_ceil_div(f, SK_TILE), sk_ceil_div(d, SK_TILE), rows, count,
                   offset, (const float *const *)xrows, hrows, urows, yrows, sgate, items, nitems,
                   chunks_f, (d + MOE_CHUNK - 1) / MOE_CHUNK, tile, tslot, texp, tmr, ntiles,
                   groups, gsize, nm ? NULL : h + slots * f, h, &next, y,
                   fused ? h + slots * f + (int64_t)nth * d * SK_MOE_MR : NULL};
    if (nm) {
        sk_run_parallel(nth, nm_up, &job);
        for (int64_t t = 0; t < rows; t++) memcpy(y + t * d, w->b2, (size_t)d * sizeof *y);
        sk_run_parallel(nth, nm_down, &job);
    } else if (fused) {
        sk_run_parallel(nth, dense_fused, &job);
        sum_partials(&job);
    } else {
        sk_run_parallel(nth, dense_up, &job);
        atomic_store(&next, 0); /* phase A is done: the counter now hands out D's panels */
        sk_run_parallel(nth, dense_down, &job);
    }
    free(mem);
    free(hmem);
    return SK_OK;
}
