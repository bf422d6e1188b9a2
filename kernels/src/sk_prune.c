/* N:M magnitude pruning in one pass: the same result as numpy's |W| -> nm_mask -> masked
 * (sparsec/nm_pattern.py, passes/sparsify/criteria.py), which makes three passes over
 * weight-sized temporaries (0.66 s of a BERT-base compile's 72 layers on a 2-core EPYC).
 *
 * A member is kept when fewer than N members of its group beat it; a member beats it when
 * its magnitude is larger, or equal and earlier (the stable argsort's order). Kept weights
 * are copied, except that a kept -0.0 becomes +0.0 (numpy's masked adds +0.0); pruned ones
 * are +0.0. Non-finite weights are left to numpy (NaN breaks the ordering; numpy's masked
 * copy treats infinities specially): the call returns SK_ERR_NONFINITE having written part
 * of out. Portable C (vectorised by the compiler at the baseline ISA): pruning is offline
 * work, bound by memory.
 */
#include <string.h>

#include "sk.h"
#include "sk_internal.h"

/* One group of m members, member i at src[i * step], written to dst[i * ostep]; returns
 * nonzero when a member is NaN or infinite. Magnitudes are compared as the integers of their
 * bits (equal order for finite non-negative floats): integer compares vectorise, where the
 * float ones may trap on NaN and are not if-converted. Inlined with a constant m, the rank
 * loops unroll and the caller's loop over groups vectorises. */
static inline __attribute__((always_inline)) unsigned prune_group(const float *src, int64_t step, float *dst,
                                                                  int64_t ostep, int n, const int m) {
    uint32_t bits[8], mag[8];
    unsigned bad = 0;
#pragma GCC unroll 8
    for (int i = 0; i < m; i++) {
        memcpy(&bits[i], &src[i * step], sizeof bits[i]);
        mag[i] = bits[i] & 0x7fffffffu;
        bad |= mag[i] >= 0x7f800000u;
    }
#pragma GCC unroll 8
    for (int i = 0; i < m; i++) {
        int beaten = 0;
#pragma GCC unroll 8
        for (int j = 0; j < m; j++)
            beaten += j < i ? mag[j] >= mag[i] : j > i && mag[j] > mag[i];
        /* Kept: the weight, but a -0.0 as +0.0 (numpy's masked adds +0.0); pruned: +0.0. */
        const uint32_t kept = beaten < n && mag[i] != 0 ? bits[i] : 0u;
        memcpy(&dst[i * ostep], &kept, sizeof kept);
    }
    return bad;
}

/* Groups [begin, end) run down the rows (members ldw apart): the loop runs across the
 * contiguous columns. */
static inline __attribute__((always_inline)) int prune_rows(const float *restrict w, int64_t ldw, int64_t begin,
                                                            int64_t end, int64_t cols, int n, const int m,
                                                            float *restrict out, int64_t ldo) {
    for (int64_t g = begin; g < end; g++) {
        const float *restrict src = w + g * m * ldw;
        float *restrict dst = out + g * m * ldo;
        unsigned bad = 0;
        for (int64_t c = 0; c < cols; c++)
            bad |= prune_group(src + c, ldw, dst + c, ldo, n, m);
        if (bad)
            return SK_ERR_NONFINITE;
    }
    return SK_OK;
}

/* Rows [begin, end), each of groups of m contiguous elements (a [N, K] weight pruned along K). */
static inline __attribute__((always_inline)) int prune_contiguous(const float *w, int64_t ldw, int64_t begin,
                                                                  int64_t end, int64_t cols, int n, const int m,
                                                                  float *out, int64_t ldo) {
    for (int64_t r = begin; r < end; r++) {
        unsigned bad = 0;
        for (int64_t g = 0; g < cols; g += m)
            bad |= prune_group(w + r * ldw + g, 1, out + r * ldo + g, 1, n, m);
        if (bad)
            return SK_ERR_NONFINITE;
    }
    return SK_OK;
}

typedef struct {
    const float *w;
    int64_t ldw, rows, cols, ldo;
    int n, m, along_rows;
    float *out;
    int status[SK_MAX_THREADS];
} prune_job;

#define SK_PRUNE_CASE(M)                                                                                      \
    case M:                                                                                                   \
        return j->along_rows ? prune_rows(j->w, j->ldw, begin, end, j->cols, j->n, M, j->out, j->ldo)         \
                             : prune_contiguous(j->w, j->ldw, begin, end, j->cols, j->n, M, j->out, j->ldo);

static int prune_range(const prune_job *j, int64_t begin, int64_t end) {
    switch (j->m) { /* a constant m per case: the rank loops unroll */
        SK_PRUNE_CASE(2)
        SK_PRUNE_CASE(3)
        SK_PRUNE_CASE(4)
        SK_PRUNE_CASE(5)
        SK_PRUNE_CASE(6)
        SK_PRUNE_CASE(7)
        SK_PRUNE_CASE(8)
    }
    return SK_ERR_SHAPE;
}

static void prune_body(const void *args, int tid, int nth) {
    prune_job *j = (prune_job *)args;
    int64_t begin, end;
    sk_split(j->along_rows ? j->rows / j->m : j->rows, tid, nth, &begin, &end);
    j->status[tid] = prune_range(j, begin, end);
}

int sk_nm_prune(const float *w, int64_t ldw, int64_t rows, int64_t cols, int n, int m, int along_rows,
                float *out, int64_t ldo) {
    if (!w || !out)
        return SK_ERR_NULL;
    if (n < 1 || n > m || m < 2 || m > 8 || rows <= 0 || cols <= 0 || ldw < cols || ldo < cols)
        return SK_ERR_SHAPE;
    if ((along_rows ? rows : cols) % m != 0)
        return SK_ERR_SHAPE;
    prune_job job = {w, ldw, rows, cols, ldo, n, m, along_rows != 0, out, {0}};
    /* All cores: the output's fresh pages fault in on both, and the first read of a mapped weight too. */
    const int threads = sk_offline_threads(rows * cols, along_rows ? rows / m : rows);
    sk_run_parallel(threads, prune_body, &job);
    return sk_first_error(job.status, threads);
}
