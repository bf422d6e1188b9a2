/* C test driver: every compiled ISA path of the N:M and block kernels against a float64
 * dense reference, plus the argument checks. Built natively under ASan/UBSan
 * (run_sanitizers.sh) and cross-compiled for aarch64 under qemu (run_arm_qemu.sh).
 * Exit status 0 iff every check passed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/sk.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static int failures = 0, checks = 0;
#define CHECK(cond, ...)                                 \
    do {                                                 \
        checks++;                                        \
        if (!(cond)) {                                   \
            failures++;                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                \
            fputc('\n', stderr);                         \
        }                                                \
    } while (0)

static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512", "neon"};
#define GUARD 5 /* extra output columns that must stay untouched */
#define SENTINEL 12345.0f

/* rows x cols result with row stride ldy vs float64 reference; also checks the guard. */
static void compare(const char *what, int isa, const float *y, const double *ref, int64_t rows,
                    int64_t cols, int64_t ldy) {
    double maxdiff = 0, maxref = 1e-30;
    int guard_ok = 1;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            maxdiff = fmax(maxdiff, fabs(y[r * ldy + c] - ref[r * cols + c]));
            maxref = fmax(maxref, fabs(ref[r * cols + c]));
        }
        for (int64_t c = cols; c < ldy; c++) guard_ok &= y[r * ldy + c] == SENTINEL;
    }
    CHECK(maxdiff / maxref <= 1e-5, "%s isa=%s rows=%lld cols=%lld rel err %.3g", what,
          ISA_NAMES[isa], (long long)rows, (long long)cols, maxdiff / maxref);
    CHECK(guard_ok, "%s isa=%s wrote outside the output", what, ISA_NAMES[isa]);
}

static void reference(const float *x, int64_t ldx, const float *w, double *ref, int64_t rows,
                      int64_t k, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double s = 0;
            for (int64_t i = 0; i < k; i++) s += (double)x[r * ldx + i] * w[i * cols + c];
            ref[r * cols + c] = s;
        }
}

static float *make_x(int64_t rows, int64_t k, int64_t *ldx) {
    *ldx = k + 3; /* strided rows */
    float *x = malloc(sizeof(float) * (size_t)(rows * *ldx + 1));
    for (int64_t i = 0; i < rows * *ldx + 1; i++) x[i] = rndf();
    return x;
}

static float *make_y(int64_t rows, int64_t ldy) {
    float *y = malloc(sizeof(float) * (size_t)(rows * ldy));
    for (int64_t i = 0; i < rows * ldy; i++) y[i] = SENTINEL;
    return y;
}

static void test_nm(int n, int m, int64_t rows, int64_t k, int64_t cols) {
    const int64_t tiles = (cols + SK_TILE - 1) / SK_TILE, groups = k / m;
    const int words = sk_nm_meta_words(m);
    const int64_t records = tiles * groups * n;
    float *vals = malloc(sizeof(float) * (size_t)(records * SK_TILE));
    uint16_t *meta = calloc((size_t)(records * words), sizeof(uint16_t));
    float *w = calloc((size_t)(k * cols), sizeof(float));
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t g = 0; g < groups; g++) {
            uint64_t lo = 0, hi = 0;
            int pos[16][16];
            for (int l = 0; l < SK_TILE; l++) { /* n distinct sorted positions per lane */
                int chosen[16] = {0}, got = 0;
                while (got < n) {
                    const int p = (int)(rnd() % (uint64_t)m);
                    if (!chosen[p]) chosen[p] = 1, got++;
                }
                for (int p = 0, j = 0; p < m; p++)
                    if (chosen[p]) pos[j++][l] = p;
            }
            for (int j = 0; j < n; j++) {
                const int64_t rec = (t * groups + g) * n + j;
                lo = hi = 0;
                for (int l = 0; l < SK_TILE; l++) {
                    const uint64_t p = (uint64_t)pos[j][l];
                    const float v = rndf();
                    vals[rec * SK_TILE + l] = v; /* padded lanes too: must not leak */
                    const int64_t c = t * SK_TILE + l;
                    if (c < cols) w[(g * m + (int64_t)p) * cols + c] = v;
                    if (m == 4) lo |= p << (2 * l);
                    else if (m == 8) lo |= (p & 3) << (2 * l), hi |= (p >> 2) << l;
                    else lo |= p << (32 * (l & 1) + 4 * (l >> 1));
                }
                uint16_t *md = meta + rec * words;
                if (m == 16) {
                    memcpy(md, &lo, 8);
                } else {
                    const uint32_t lo32 = (uint32_t)lo;
                    memcpy(md, &lo32, 4);
                    if (m == 8) md[2] = (uint16_t)hi;
                }
            }
        }
    int64_t ldx;
    float *x = make_x(rows, k, &ldx);
    double *ref = malloc(sizeof(double) * (size_t)(rows * cols));
    reference(x, ldx, w, ref, rows, k, cols);
    const int64_t ldy = cols + GUARD;
    for (int isa = 0; isa < 4; isa++) {
        if (!sk_isa_supported(isa)) continue;
        for (int threads = 1; threads <= 2; threads++) {
            float *y = make_y(rows, ldy);
            const int st = sk_nm_matmul(x, ldx, rows, k, cols, n, m, vals, records * SK_TILE, meta,
                                        records * words, y, ldy, isa, threads);
            CHECK(st == SK_OK, "nm status %d", st);
            char what[64];
            snprintf(what, sizeof what, "nm %d:%d k=%lld", n, m, (long long)k);
            compare(what, isa, y, ref, rows, cols, ldy);
            free(y);
        }
    }
    /* Argument checks: a wrong length or shape must be rejected before any read. */
    float *y = make_y(rows, ldy);
    CHECK(sk_nm_matmul(x, ldx, rows, k, cols, n, m, vals, records * SK_TILE - 1, meta,
                       records * words, y, ldy, 0, 1) == SK_ERR_LENGTH, "short values accepted");
    CHECK(sk_nm_matmul(x, ldx, rows, k, cols, n, m, vals, records * SK_TILE, meta,
                       records * words + 1, y, ldy, 0, 1) == SK_ERR_LENGTH, "long meta accepted");
    CHECK(sk_nm_matmul(x, ldx, rows, k + 1, cols, n, m, vals, records * SK_TILE, meta,
                       records * words, y, ldy, 0, 1) != SK_OK, "k not multiple of m accepted");
    CHECK(sk_nm_matmul(x, ldx, rows, k, cols, n, 5, vals, records * SK_TILE, meta,
                       records * words, y, ldy, 0, 1) == SK_ERR_SHAPE, "m=5 accepted");
    free(y);
    free(x), free(ref), free(vals), free(meta), free(w);
}

static void test_block(int bk, int64_t rows, int64_t k, int64_t cols, int density_pct) {
    const int64_t tiles = (cols + SK_TILE - 1) / SK_TILE, kb = k / bk;
    int32_t *ptr = malloc(sizeof(int32_t) * (size_t)(tiles + 1));
    int32_t *kidx = malloc(sizeof(int32_t) * (size_t)(tiles * kb + 1));
    float *vals = malloc(sizeof(float) * (size_t)(tiles * kb * bk * SK_TILE + 1));
    float *w = calloc((size_t)(k * cols), sizeof(float));
    int64_t nb = 0;
    ptr[0] = 0;
    for (int64_t t = 0; t < tiles; t++) {
        for (int64_t b = 0; b < kb; b++) {
            if ((int)(rnd() % 100) >= density_pct) continue;
            kidx[nb] = (int32_t)(b * bk);
            for (int i = 0; i < bk; i++)
                for (int l = 0; l < SK_TILE; l++) {
                    const float v = rndf();
                    vals[(nb * bk + i) * SK_TILE + l] = v;
                    if (t * SK_TILE + l < cols) w[(b * bk + i) * cols + t * SK_TILE + l] = v;
                }
            nb++;
        }
        ptr[t + 1] = (int32_t)nb;
    }
    int64_t ldx;
    float *x = make_x(rows, k, &ldx);
    double *ref = malloc(sizeof(double) * (size_t)(rows * cols));
    reference(x, ldx, w, ref, rows, k, cols);
    const int64_t ldy = cols + GUARD;
    for (int isa = 0; isa < 4; isa++) {
        if (!sk_isa_supported(isa)) continue;
        for (int threads = 1; threads <= 2; threads++) {
            float *y = make_y(rows, ldy);
            const int st = sk_block_matmul(x, ldx, rows, k, cols, bk, ptr, tiles + 1, kidx, nb,
                                           vals, nb * bk * SK_TILE, y, ldy, isa, threads);
            CHECK(st == SK_OK, "block status %d", st);
            char what[64];
            snprintf(what, sizeof what, "block bk=%d k=%lld", bk, (long long)k);
            compare(what, isa, y, ref, rows, cols, ldy);
            free(y);
        }
    }
    float *y = make_y(rows, ldy);
    if (nb > 0) {
        const int32_t saved = kidx[nb - 1];
        kidx[nb - 1] = (int32_t)(k - bk + 1);
        CHECK(sk_block_matmul(x, ldx, rows, k, cols, bk, ptr, tiles + 1, kidx, nb, vals,
                              nb * bk * SK_TILE, y, ldy, 0, 1) == SK_ERR_INDEX,
              "block row past K accepted");
        kidx[nb - 1] = -1;
        CHECK(sk_block_matmul(x, ldx, rows, k, cols, bk, ptr, tiles + 1, kidx, nb, vals,
                              nb * bk * SK_TILE, y, ldy, 0, 1) == SK_ERR_INDEX,
              "negative block row accepted");
        kidx[nb - 1] = saved;
    }
    ptr[tiles] += 1;
    CHECK(sk_block_matmul(x, ldx, rows, k, cols, bk, ptr, tiles + 1, kidx, nb, vals,
                          nb * bk * SK_TILE, y, ldy, 0, 1) == SK_ERR_INDEX,
          "tile_ptr past the blocks accepted");
    ptr[tiles] -= 1;
    CHECK(sk_block_matmul(x, ldx, rows, k, cols, bk, ptr, tiles, kidx, nb, vals,
                          nb * bk * SK_TILE, y, ldy, 0, 1) == SK_ERR_LENGTH,
          "short tile_ptr accepted");
    free(y);
    free(x), free(ref), free(vals), free(kidx), free(ptr), free(w);
}

int main(void) {
    static const int NM[][2] = {{2, 4}, {1, 4}, {3, 4}, {1, 8}, {2, 8}, {4, 8}, {3, 8}, {1, 16}, {2, 16}, {5, 16}};
    static const int64_t SHAPES[][3] = {{1, 64, 16}, {3, 48, 37}, {9, 128, 100}, {17, 32, 3},
                                        {66, 96, 45}, {23, 40, 33}, {24, 40, 33}, {33, 64, 8}};
    for (size_t i = 0; i < sizeof NM / sizeof NM[0]; i++)
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
            const int m = NM[i][1];
            const int64_t k = (SHAPES[s][1] + m - 1) / m * m;
            test_nm(NM[i][0], m, SHAPES[s][0], k, SHAPES[s][2]);
        }
    static const int BK[] = {1, 2, 4, 8};
    for (size_t i = 0; i < sizeof BK / sizeof BK[0]; i++)
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
            const int64_t k = (SHAPES[s][1] + BK[i] - 1) / BK[i] * BK[i];
            test_block(BK[i], SHAPES[s][0], k, SHAPES[s][2], s == 0 ? 0 : 20);
        }
    printf("isas:");
    for (int isa = 0; isa < 4; isa++)
        if (sk_isa_supported(isa)) printf(" %s", ISA_NAMES[isa]);
    printf("\n%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
