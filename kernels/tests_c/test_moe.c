/* C test driver for the MoE FFN kernel: sk_moe_ffn on N:M-packed experts, and on dense
 * experts in the row-major and the panel layout, on every compiled ISA path (NEON under qemu,
 * run_arm_qemu.sh) and 1 or 2 threads (batch sizes that take the fused single region and the
 * two phases), against the dense scalar path on one thread; plus the argument and metadata
 * checks. The dense path itself is checked against the ONNX reference lowering in
 * tests/moe/test_moe_kernel.py. Exit status 0 iff every check passed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/moe_internal.h"
#include "../src/sk.h"

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static int failures = 0, checks = 0;
#define CHECK(cond, ...)                                         \
    do {                                                         \
        checks++;                                                \
        if (!(cond)) {                                           \
            failures++;                                          \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                        \
            fputc('\n', stderr);                                 \
        }                                                        \
    } while (0)

static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512", "neon"};

/* A random n:m [k, cols] weight, packed (values, meta: the sk.h layout, canonical positions)
 * and dense (w). */
static void random_nm(int n, int m, int64_t k, int64_t cols, float scale, float *vals,
                      uint16_t *meta, float *w) {
    const int64_t tiles = (cols + SK_TILE - 1) / SK_TILE, groups = k / m;
    const int words = sk_nm_meta_words(m);
    memset(w, 0, sizeof(float) * (size_t)(k * cols));
    for (int64_t t = 0; t < tiles; t++)
        for (int64_t g = 0; g < groups; g++) {
            int pos[16][16];
            for (int l = 0; l < SK_TILE; l++) { /* n distinct positions per lane, increasing */
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
                uint64_t lo = 0, hi = 0;
                for (int l = 0; l < SK_TILE; l++) {
                    const uint64_t p = (uint64_t)pos[j][l];
                    const int64_t c = t * SK_TILE + l;
                    const float v = c < cols ? rndf() * scale : 0.0f; /* padded lanes hold 0 */
                    vals[rec * SK_TILE + l] = v;
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
}

static float *floats(int64_t count, float scale) {
    float *p = malloc(sizeof(float) * (size_t)count);
    for (int64_t i = 0; i < count; i++) p[i] = rndf() * scale;
    return p;
}

/* The scalar single-thread output for rows of x, every other path's reference; *maxref its
 * largest magnitude (the tolerance's scale). */
static float *scalar_reference(const sk_moe_weights *w, const float *x, int64_t rows, int64_t d,
                               double *maxref) {
    float *ref = malloc(sizeof(float) * (size_t)(rows * d));
    CHECK(sk_moe_ffn(w, x, rows, ref, SK_ISA_SCALAR, 1) == SK_OK, "dense failed");
    *maxref = 1e-30;
    for (int64_t i = 0; i < rows * d; i++) *maxref = fmax(*maxref, fabs(ref[i]));
    return ref;
}

static void test_packed(int n, int m, int64_t d, int64_t e, int64_t f, int top_k, int gated,
                        int act, int gating) {
    const int words = sk_nm_meta_words(m);
    const int64_t r1 = sk_moe_nm_records(d, f, n, m), r2 = sk_moe_nm_records(f, d, n, m);
    float *v1 = malloc(sizeof(float) * (size_t)(e * r1 * SK_TILE));
    float *vu = malloc(sizeof(float) * (size_t)(e * r1 * SK_TILE));
    float *v2 = malloc(sizeof(float) * (size_t)(e * r2 * SK_TILE));
    uint16_t *m1 = malloc(sizeof(uint16_t) * (size_t)(e * r1 * words));
    uint16_t *mu = malloc(sizeof(uint16_t) * (size_t)(e * r1 * words));
    uint16_t *m2 = malloc(sizeof(uint16_t) * (size_t)(e * r2 * words));
    float *w1 = malloc(sizeof(float) * (size_t)(e * d * f)), *wu = malloc(sizeof(float) * (size_t)(e * d * f));
    float *w2 = malloc(sizeof(float) * (size_t)(e * f * d));
    const float s1 = 2.0f / sqrtf((float)d), s2 = 2.0f / sqrtf((float)f);
    for (int64_t x = 0; x < e; x++) {
        random_nm(n, m, d, f, s1, v1 + x * r1 * SK_TILE, m1 + x * r1 * words, w1 + x * d * f);
        random_nm(n, m, d, f, s1, vu + x * r1 * SK_TILE, mu + x * r1 * words, wu + x * d * f);
        random_nm(n, m, f, d, s2, v2 + x * r2 * SK_TILE, m2 + x * r2 * words, w2 + x * f * d);
    }
    float *rw = floats(d * e, 1.0f), *rb = floats(e, 0.1f), *b1 = floats(e * f, 0.1f), *b2 = floats(d, 0.1f);
    sk_moe_weights dense = {d, e, f, top_k, act, gating, rw, rb, w1, b1, w2, b2, gated ? wu : NULL,
                            0, 0, NULL, NULL, NULL, NULL, NULL, NULL, 0};
    sk_moe_weights packed = dense;
    packed.w1 = packed.w2 = packed.wup = NULL;
    packed.nm_n = n, packed.nm_m = m;
    packed.v1 = v1, packed.v2 = v2, packed.m1 = m1, packed.m2 = m2;
    packed.vup = gated ? vu : NULL, packed.mup = gated ? mu : NULL;
    CHECK(sk_moe_check(&packed) == SK_OK, "packed %d:%d rejected", n, m);
    CHECK(sk_moe_nm_bad_expert(&packed) == -1, "canonical meta flagged");
    static const int64_t ROWS[] = {1, 5, 40};
    for (size_t ri = 0; ri < sizeof ROWS / sizeof ROWS[0]; ri++) {
        const int64_t rows = ROWS[ri];
        double maxref;
        float *x = floats(rows * d, 1.0f), *ref = scalar_reference(&dense, x, rows, d, &maxref);
        for (int isa = 0; isa < 4; isa++) {
            if (!sk_isa_supported(isa)) continue;
            for (int threads = 1; threads <= 2; threads++) {
                float *y = malloc(sizeof(float) * (size_t)(rows * d));
                const int st = sk_moe_ffn(&packed, x, rows, y, isa, threads);
                CHECK(st == SK_OK, "packed status %d", st);
                double maxdiff = 0;
                for (int64_t i = 0; i < rows * d; i++) maxdiff = fmax(maxdiff, fabs(y[i] - ref[i]));
                CHECK(maxdiff / maxref <= 1e-5, "packed %d:%d isa=%s rows=%lld gated=%d threads=%d rel err %.3g",
                      n, m, ISA_NAMES[isa], (long long)rows, gated, threads, maxdiff / maxref);
                free(y);
            }
        }
        free(x), free(ref);
    }
    /* Checks: a pattern that does not divide D or F, missing metadata, corrupted positions. */
    sk_moe_weights bad = packed;
    bad.nm_m = 5;
    CHECK(sk_moe_check(&bad) == SK_ERR_SHAPE, "m=5 accepted");
    bad = packed;
    bad.m2 = NULL;
    CHECK(sk_moe_check(&bad) == SK_ERR_NULL, "missing w2 meta accepted");
    if (n > 1) {
        uint16_t *copy = malloc(sizeof(uint16_t) * (size_t)(e * r2 * words));
        memcpy(copy, m2, sizeof(uint16_t) * (size_t)(e * r2 * words));
        memset(copy + (e - 1) * r2 * words, 0, sizeof(uint16_t) * (size_t)(r2 * words));
        bad = packed;
        bad.m2 = copy;
        CHECK(sk_moe_nm_bad_expert(&bad) == e - 1, "corrupted meta of the last expert not found");
        free(copy);
    }
    free(v1), free(vu), free(v2), free(m1), free(mu), free(m2), free(w1), free(wu), free(w2);
    free(rw), free(rb), free(b1), free(b2);
}

/* Dense experts: row-major and panel layout, every ISA, 1 and 2 threads, against the scalar
 * row-major path on one thread. D, F: panels with a wide (> 16) and a narrow column tail. */
static void test_dense(int64_t d, int64_t e, int64_t f, int top_k, int gated, int act, int gating) {
    const float s1 = 2.0f / sqrtf((float)d), s2 = 2.0f / sqrtf((float)f);
    float *w1 = floats(e * d * f, s1), *wu = floats(e * d * f, s1), *w2 = floats(e * f * d, s2);
    float *rw = floats(d * e, 1.0f), *rb = floats(e, 0.1f), *b1 = floats(e * f, 0.1f), *b2 = floats(d, 0.1f);
    float *p1 = malloc(sizeof(float) * (size_t)(e * sk_moe_panel_elems(d, f)));
    float *pu = malloc(sizeof(float) * (size_t)(e * sk_moe_panel_elems(d, f)));
    float *p2 = malloc(sizeof(float) * (size_t)(e * sk_moe_panel_elems(f, d)));
    sk_moe_pack_panels(w1, e, d, f, p1);
    sk_moe_pack_panels(wu, e, d, f, pu);
    sk_moe_pack_panels(w2, e, f, d, p2);
    sk_moe_weights rowmajor = {d, e, f, top_k, act, gating, rw, rb, w1, b1, w2, b2, gated ? wu : NULL,
                               0, 0, NULL, NULL, NULL, NULL, NULL, NULL, 0};
    sk_moe_weights panels = rowmajor;
    panels.w1 = p1, panels.w2 = p2, panels.wup = gated ? pu : NULL, panels.panel = SK_MOE_NR;
    CHECK(sk_moe_check(&panels) == SK_OK, "panel layout rejected");
    sk_moe_weights bad = panels;
    bad.panel = 16;
    CHECK(sk_moe_check(&bad) == SK_ERR_SHAPE, "panel=16 accepted");
    static const int64_t ROWS[] = {1, 3, 40, 200};
    for (size_t ri = 0; ri < sizeof ROWS / sizeof ROWS[0]; ri++) {
        const int64_t rows = ROWS[ri];
        double maxref;
        float *x = floats(rows * d, 1.0f), *ref = scalar_reference(&rowmajor, x, rows, d, &maxref);
        for (int layout = 0; layout < 2; layout++)
            for (int isa = 0; isa < 4; isa++) {
                if (!sk_isa_supported(isa)) continue;
                for (int threads = 1; threads <= 2; threads++) {
                    float *y = malloc(sizeof(float) * (size_t)(rows * d));
                    const int st = sk_moe_ffn(layout ? &panels : &rowmajor, x, rows, y, isa, threads);
                    CHECK(st == SK_OK, "dense status %d", st);
                    double maxdiff = 0;
                    for (int64_t i = 0; i < rows * d; i++) maxdiff = fmax(maxdiff, fabs(y[i] - ref[i]));
                    CHECK(maxdiff / maxref <= 1e-5, "dense %s isa=%s rows=%lld gated=%d threads=%d rel err %.3g",
                          layout ? "panels" : "row-major", ISA_NAMES[isa], (long long)rows, gated, threads,
                          maxdiff / maxref);
                    free(y);
                }
            }
        free(x), free(ref);
    }
    free(w1), free(wu), free(w2), free(p1), free(pu), free(p2), free(rw), free(rb), free(b1), free(b2);
}

int main(void) {
    test_dense(150, 6, 40, 2, 0, MOE_GELU, MOE_GATE_NONE);
    test_dense(150, 5, 56, 3, 1, MOE_SILU, MOE_GATE_SOFTMAX);
    static const int NM[][2] = {{2, 4}, {1, 4}, {4, 8}, {2, 16}};
    for (size_t i = 0; i < sizeof NM / sizeof NM[0]; i++) {
        const int n = NM[i][0], m = NM[i][1];
        /* D, F: partial last tiles and two 64-column chunks where m allows (m = 16: whole tiles) */
        const int64_t d = m == 16 ? 96 : 72, f = m == 16 ? 80 : 88;
        test_packed(n, m, d, 4, f, 2, 0, MOE_GELU, MOE_GATE_NONE);
        test_packed(n, m, d, 5, f, 3, 1, MOE_SILU, MOE_GATE_SOFTMAX);
    }
    printf("moe isas:");
    for (int isa = 0; isa < 4; isa++)
        if (sk_isa_supported(isa)) printf(" %s", ISA_NAMES[isa]);
    printf("\n%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
