/* The x transpose of the N:M rows-as-lanes batch path, two ways, one thread: one AVX-512 gather
 * per 16 floats (the old nm_rv_transpose) and 16 x 16 register transposes (the new one), on
 * 128 rows of K floats in blocks of 32 rows; checks they agree, prints one JSON line per round.
 *
 *   gcc -O2 -mavx512f -mavx512dq -mfma -o /tmp/tpb bench/transpose_microbench.c && /tmp/tpb 3072
 * (run from the repository root)
 *
 * With K = 3072 or 11008 every row of a gather lies a multiple of 4 KB from the next (one L1 set).
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#define SK_TRANSPOSE_AVX512
#include "../kernels/src/sk_transpose.h"
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void tp_gather(const float *x, int64_t ldx, int64_t rows, int64_t k, float *xt, int64_t ldt) {
    for (int64_t v = 0; v < ldt; v += 16) {
        const int64_t nr = rows - v < 16 ? (rows - v > 0 ? rows - v : 0) : 16;
        const __mmask16 mk = (__mmask16)((1u << nr) - 1u);
        const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15), _mm512_set1_epi32((int)ldx));
        const float *base = x + v * ldx;
        for (int64_t kk = 0; kk < k; kk++)
            _mm512_store_ps(xt + kk * ldt + v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, base + kk, 4));
    }
}
/* The kernel's 16 x 16 register transpose (kernels/src/sk_transpose.h), as nm_rv_t16 uses it. */
static inline void t16(const float *src, int64_t lds, float *dst, int64_t ldd, __mmask16 rowmask) {
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_maskz_loadu_ps((rowmask >> i) & 1 ? 0xFFFF : 0, src + i * lds);
    sk_tr16x16_ps(r);
    for (int i = 0; i < 16; i++) _mm512_store_ps(dst + i * ldd, r[i]);
}
static void tp_shuf(const float *x, int64_t ldx, int64_t rows, int64_t k, float *xt, int64_t ldt) {
    for (int64_t v = 0; v < ldt; v += 16) {
        const int64_t nr = rows - v < 16 ? (rows - v > 0 ? rows - v : 0) : 16;
        const __mmask16 mk = (__mmask16)((1u << nr) - 1u);
        int64_t kk = 0;
        for (; kk + 16 <= k; kk += 16) t16(x + v * ldx + kk, ldx, xt + kk * ldt + v, ldt, mk);
        for (; kk < k; kk++) for (int r = 0; r < 16; r++) xt[kk*ldt+v+r] = r < nr ? x[(v+r)*ldx+kk] : 0.f;
    }
}
int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s K\n", argv[0]); return 2; }
    int64_t rows = 32, k = atoi(argv[1]);
    float *x = aligned_alloc(64, 4 * 128 * k), *a = aligned_alloc(64, 4 * 32 * k), *b = aligned_alloc(64, 4 * 32 * k);
    for (int64_t i = 0; i < 128 * k; i++) x[i] = (float)rand() / RAND_MAX;
    for (int rb = 0; rb < 4; rb++) { tp_gather(x + rb*32*k, k, rows, k, a, 32); tp_shuf(x + rb*32*k, k, rows, k, b, 32);
      for (int64_t i = 0; i < 32 * k; i++) if (a[i] != b[i]) { printf("MISMATCH %ld\n", i); return 1; } }
    for (int rep = 0; rep < 3; rep++) {
    double t0 = now(); for (int it = 0; it < 200; it++) for (int rb = 0; rb < 4; rb++) tp_gather(x + rb*32*k, k, rows, k, a, 32);
    double t1 = now(); for (int it = 0; it < 200; it++) for (int rb = 0; rb < 4; rb++) tp_shuf(x + rb*32*k, k, rows, k, b, 32);
    double t2 = now();
    printf("{\"k\": %ld, \"rows\": 128, \"gather_us\": %.1f, \"register_transpose_us\": %.1f}\n", k, (t1-t0)/200*1e6, (t2-t1)/200*1e6);
    }
}
