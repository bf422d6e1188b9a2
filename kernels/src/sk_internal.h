/* Shared between the ISA-specific kernel files; not part of the public API. */
#ifndef SPARSEC_SK_INTERNAL_H
#define SPARSEC_SK_INTERNAL_H
#include <stdint.h>
#include <string.h>

#include "sk.h"

typedef struct {
    const float *x;
    int64_t ldx, rows, k, cols;
    int n, m;
    const float *values;
    const uint16_t *meta;
    float *y;
    int64_t ldy;
    int threads;
    const float *bias; /* [cols] added to every row, or NULL (AVX-512 only: sk_api.c) */
} sk_nm_args;

typedef struct {
    const float *x;
    int64_t ldx, rows, k, cols;
    int bk;
    const int32_t *tile_ptr, *kidx;
    const float *values;
    float *y;
    int64_t ldy;
    int threads;
} sk_block_args;

/* memcpy loads: metadata words are only 2-byte aligned (M=8 uses 3 words). */
static inline uint32_t sk_load_u32(const uint16_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint64_t sk_load_u64(const uint16_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Position (0..M-1) of lane `lane` in one (tile, group, slot) metadata record. */
static inline int sk_nm_pos(int m, const uint16_t *rec, int lane) {
    if (m == 4) return (int)((sk_load_u32(rec) >> (2 * lane)) & 3u);
    if (m == 8)
        return (int)(((sk_load_u32(rec) >> (2 * lane)) & 3u) | (((rec[2] >> lane) & 1u) << 2));
    return (int)((sk_load_u64(rec) >> (32 * (lane & 1) + 4 * (lane >> 1))) & 15u);
}

static inline int64_t sk_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The metadata of one N:M group (its records' `words` <= 4 words in all) as one integer,
 * record j at bits 16 * sk_nm_meta_words(m) * j. The row paths load it a group ahead of its
 * use (nm_avx512.c says why). `last`: 3 words (1:8) are read as 4 + 2 bytes so that the
 * buffer's last group is not read past its end. */
static inline uint64_t sk_nm_group_meta(const uint16_t *md, int words, int last) {
    if (words == 2) return sk_load_u32(md);
    if (words == 4 || !last) return sk_load_u64(md);
    return sk_load_u32(md) | (uint64_t)md[2] << 32;
}

/* Parallel regions (sk_pool.c): fn(args, tid, nth) runs on nth threads, the caller being
 * tid 0; sk_split gives thread tid its contiguous share of n items. */
#define SK_MAX_THREADS 64 /* sk_run_parallel caps its thread count here */
typedef void (*sk_body_fn)(const void *args, int tid, int nth);
void sk_run_parallel(int threads, sk_body_fn fn, const void *args);
/* A host pool for the calling thread's parallel regions (NULL: sparsec's own pool). Inside an
 * ONNX Runtime op it is ORT's intra-op pool (sk_ort_pool.c): two pools on the same cores steal
 * them from each other. `run` runs task(data, i) for i in [0, total) and returns 0, or returns
 * nonzero having run none (the region then runs on sparsec's pool). */
typedef int (*sk_host_run_fn)(void *host, void (*task)(void *, size_t), size_t total, void *data);
void sk_set_host_pool(sk_host_run_fn run, void *host);
long long sk_host_pool_regions(void); /* regions run on a host pool so far (tests) */
static inline void sk_split(int64_t n, int tid, int nth, int64_t *begin, int64_t *end) {
    *begin = n * tid / nth;
    *end = n * (tid + 1) / nth;
}

/* Threads for offline work (packing, pruning) on `elements` weights split in `items` parts:
 * every core from 2^18 weights on (below, a region's wake-up costs more than it saves). */
static inline int sk_offline_threads(int64_t elements, int64_t items) {
    const int threads = elements >= (1 << 18) ? sk_max_threads() : 1;
    return threads > items ? (int)(items > 0 ? items : 1) : threads;
}

/* The first failure among the statuses a parallel region's threads left, else SK_OK. */
static inline int sk_first_error(const int *status, int threads) {
    for (int i = 0; i < threads; i++)
        if (status[i] != 0)
            return status[i];
    return 0;
}

void sk_nm_scalar(const sk_nm_args *a);
void sk_block_scalar(const sk_block_args *a);
#if defined(__x86_64__) || defined(_M_X64)
void sk_nm_avx2(const sk_nm_args *a);
void sk_block_avx2(const sk_block_args *a);
void sk_nm_avx512(const sk_nm_args *a);
void sk_block_avx512(const sk_block_args *a);
#endif
#if defined(__aarch64__)
void sk_nm_neon(const sk_nm_args *a);
void sk_block_neon(const sk_block_args *a);
#endif

#endif
