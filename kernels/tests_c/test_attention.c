/* C test driver for sk_attention: every ISA this CPU (or qemu) supports, 1 and 2 threads,
 * against a naive double-precision reference of the same semantics. Prints
 * "N checks, M failures"; exit status 1 on any failure. Built by run_sanitizers.sh and
 * run_arm_qemu.sh (which cross-compiles it for the NEON path). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../src/sk.h"
#include "../src/sk_attn.h"

static int checks, failures;

static float frand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return ((float)((*s >> 8) & 0xFFFF) / 32768.0f) - 1.0f;
}

static int allowed(int causal, int64_t block, int w, int sinks, int64_t p, int64_t k) {
    if (causal && k > p) return 0;
    const int64_t qb = p / block, kb = k / block, diff = qb - kb;
    const int64_t dist = causal ? diff : (diff < 0 ? -diff : diff);
    return w < 0 || dist < w || kb < sinks;
}

/* Run-time top-k picks (the spec: BlockLayout.dynamic_blocks), in double: pick[kb] for batch bb,
 * query head h, absolute query block qb; q^ = sum of the call's rows in qb, k^ = key block mean. */
static void topk_pick(const float *q, const float *k, int64_t hq, int64_t hkv, int64_t sq, int64_t sk,
                      int64_t d, int64_t block, int causal, int w, int sinks, int topk, int64_t bb,
                      int64_t h, int64_t qb, unsigned char *pick) {
    const int64_t g = h / (hq / hkv), nkb = (sk + block - 1) / block, off = sk - sq;
    double sc[64];
    for (int64_t kb = 0; kb < nkb; kb++) {
        pick[kb] = 0;
        sc[kb] = 0;
        const int64_t c1 = kb * block + block < sk ? kb * block + block : sk;
        for (int64_t j = 0; j < d; j++) {
            double qs = 0, ks = 0;
            for (int64_t i = 0; i < sq; i++)
                if ((i + off) / block == qb) qs += q[((bb * hq + h) * sq + i) * d + j];
            for (int64_t c = kb * block; c < c1; c++) ks += k[((bb * hkv + g) * sk + c) * d + j];
            sc[kb] += qs * ks / (double)(c1 - kb * block);
        }
    }
    for (int n = 0; n < topk; n++) {
        int64_t best = -1;
        for (int64_t kb = 0; kb < nkb; kb++) {
            const int64_t diff = qb - kb, dist = causal ? diff : (diff < 0 ? -diff : diff);
            const int fixed = w < 0 || dist < w || kb < sinks;
            if ((causal && kb > qb) || fixed || pick[kb]) continue;
            if (best < 0 || sc[kb] > sc[best]) best = kb;
        }
        if (best >= 0) pick[best] = 1;
    }
}

/* summary: left-out key blocks (before the query's block when causal) read as one key each:
 * mean key, logit + log sum exp(bias) over the block, mean value (the op's summary_blocks). */
static void test(int64_t b, int64_t hq, int64_t hkv, int64_t sq, int64_t sk, int64_t d,
                 int64_t dv, int64_t block, int causal, int w, int sinks, int topk, int with_bias, int summary) {
    unsigned seed = (unsigned)(sq * 131 + d * 7 + block);
    float *q = malloc(sizeof(float) * b * hq * sq * d), *k = malloc(sizeof(float) * b * hkv * sk * d);
    float *v = malloc(sizeof(float) * b * hkv * sk * dv), *y = malloc(sizeof(float) * b * hq * sq * dv);
    float *bias = with_bias ? malloc(sizeof(float) * sq * sk) : NULL;
    const int64_t nkb = (sk + block - 1) / block;
    double *ref = malloc(sizeof(double) * b * hq * sq * dv), *s = malloc(sizeof(double) * (sk + nkb));
    double *vbar = malloc(sizeof(double) * nkb * dv);
    for (int64_t i = 0; i < b * hq * sq * d; i++) q[i] = frand(&seed);
    for (int64_t i = 0; i < b * hkv * sk * d; i++) k[i] = frand(&seed);
    for (int64_t i = 0; i < b * hkv * sk * dv; i++) v[i] = frand(&seed);
    if (bias) for (int64_t i = 0; i < sq * sk; i++) bias[i] = frand(&seed) < -0.6f ? -1e9f : frand(&seed);
    const float scale = 0.3f;
    for (int64_t bb = 0; bb < b; bb++)
        for (int64_t h = 0; h < hq; h++) {
            const int64_t g = h / (hq / hkv);
            unsigned char pick[64];
            int64_t pick_qb = -1;
            for (int64_t i = 0; i < sq; i++) {
                const int64_t p = i + sk - sq;
                if (topk && p / block != pick_qb)
                    topk_pick(q, k, hq, hkv, sq, sk, d, block, causal, w, sinks, topk, bb, h, pick_qb = p / block, pick);
                double mx = -INFINITY;
                for (int64_t c = 0; c < sk; c++) {
                    double acc = 0;
                    for (int64_t j = 0; j < d; j++)
                        acc += (double)q[((bb * hq + h) * sq + i) * d + j] * k[((bb * hkv + g) * sk + c) * d + j];
                    acc = acc * scale + (bias ? bias[i * sk + c] : 0.0);
                    const int ok = allowed(causal, block, w, sinks, p, c) || (topk && pick[c / block] && (!causal || c <= p));
                    s[c] = ok ? acc : -INFINITY;
                    if (s[c] > mx) mx = s[c];
                }
                for (int64_t kb = 0; kb < nkb; kb++) {
                    s[sk + kb] = -INFINITY;
                    const int64_t c0 = kb * block, c1 = c0 + block < sk ? c0 + block : sk, qb = p / block;
                    const int64_t diff = qb - kb, dist = causal ? diff : (diff < 0 ? -diff : diff);
                    const int kept = w < 0 || dist < w || kb < sinks || (topk && pick[kb]);
                    if (!summary || kept || (causal && kb >= qb)) continue;
                    double dot = 0, mass = 0;
                    for (int64_t j = 0; j < d; j++) {
                        double km = 0;
                        for (int64_t c = c0; c < c1; c++) km += k[((bb * hkv + g) * sk + c) * d + j];
                        dot += (double)q[((bb * hq + h) * sq + i) * d + j] * km / (double)(c1 - c0);
                    }
                    for (int64_t j = 0; j < dv; j++) {
                        double vm = 0;
                        for (int64_t c = c0; c < c1; c++) vm += v[((bb * hkv + g) * sk + c) * dv + j];
                        vbar[kb * dv + j] = vm / (double)(c1 - c0);
                    }
                    for (int64_t c = c0; c < c1; c++) mass += bias ? exp(bias[i * sk + c]) : 1.0;
                    if (mass > 0) s[sk + kb] = dot * scale + log(mass);
                    if (s[sk + kb] > mx) mx = s[sk + kb];
                }
                double sum = 0;
                for (int64_t c = 0; c < sk + nkb; c++) sum += (s[c] = s[c] == -INFINITY ? 0 : exp(s[c] - mx));
                for (int64_t j = 0; j < dv; j++) {
                    double acc = 0;
                    for (int64_t c = 0; c < sk; c++) acc += s[c] * v[((bb * hkv + g) * sk + c) * dv + j];
                    for (int64_t kb = 0; kb < nkb; kb++) acc += s[sk + kb] * vbar[kb * dv + j];
                    ref[((bb * hq + h) * sq + i) * dv + j] = acc / sum;
                }
            }
        }
    const int32_t local[1] = {w}, sk_sinks[1] = {sinks}, sk_topk[1] = {topk}, sk_summary[1] = {summary};
    const int64_t bstride[4] = {0, 0, sk, 1};
    for (int isa = 0; isa < 4; isa++) {
        if (!sk_isa_supported(isa)) continue;
        for (int threads = 1; threads <= 2; threads++) {
            const int rc = sk_attention(q, k, v, y, b, hq, hkv, sq, sk, d, dv, scale, causal, block, 1,
                                        local, sk_sinks, sk_topk, summary ? sk_summary : NULL, 0, NULL, 0, 0, bias, bias ? bstride : NULL, isa, threads);
            double err = 0;
            for (int64_t i = 0; i < b * hq * sq * dv; i++) {
                const double e = fabs(y[i] - ref[i]);
                if (e > err) err = e;
            }
            checks++;
            if (rc != SK_OK || err > 3e-5) {
                failures++;
                printf("FAIL isa %d threads %d sq %lld sk %lld d %lld block %lld causal %d topk %d: rc %d err %g\n",
                       isa, threads, (long long)sq, (long long)sk, (long long)d, (long long)block, causal, topk, rc, err);
            }
        }
    }
    free(q), free(k), free(v), free(y), free(bias), free(ref), free(s), free(vbar);
}

int main(void) {
    test(1, 4, 2, 40, 40, 8, 8, 8, 1, 2, 1, 0, 0, 0);
    test(2, 2, 2, 33, 33, 16, 24, 8, 0, 2, 0, 0, 1, 0);
    test(1, 2, 2, 8, 24, 8, 8, 4, 1, 2, 1, 0, 0, 0);
    test(1, 2, 1, 70, 70, 72, 40, 16, 1, -1, 0, 0, 0, 0);
    test(1, 1, 1, 40, 40, 256, 256, 32, 1, 1, 1, 0, 0, 0);
    test(1, 3, 3, 20, 20, 5, 3, 4, 0, 1, 0, 0, 1, 0);
    /* Run-time top-k: causal GQA with a partial first query block and last key block, and
     * non-causal with bias. */
    test(2, 4, 2, 27, 45, 24, 16, 8, 1, 1, 0, 2, 0, 0);
    test(1, 2, 2, 33, 33, 40, 8, 8, 0, 1, 1, 3, 1, 0);
    /* Summary keys: causal GQA with top-k and a partial last block, non-causal with bias. */
    test(2, 4, 2, 27, 45, 24, 16, 8, 1, 1, 0, 2, 0, 1);
    test(1, 2, 2, 33, 33, 40, 8, 8, 0, 1, 1, 0, 1, 1);
    checks++;
    if (sk_attention(NULL, NULL, NULL, NULL, 1, 3, 2, 4, 4, 4, 4, 1.0f, 0, 4, 1, NULL, NULL, NULL, NULL, 0, NULL, 0, 0,
                     NULL, NULL, 0, 1) != SK_ERR_SHAPE) {
        failures++;
        printf("FAIL: 3 query heads over 2 key heads accepted\n");
    }
    printf("isas:");
    for (int isa = 0; isa < 4; isa++)
        if (sk_isa_supported(isa)) printf(" %d", isa);
    printf("\n%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
