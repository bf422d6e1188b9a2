/* Sparse convolution entry points: geometry, per-shape offsets, input preparation (padding and
 * stride phases), argument checks and ISA dispatch. Layout and scheme in conv_internal.h. */
#include <stdlib.h>
#include <string.h>

#include "conv_internal.h"
#include "sk_conv.h"

typedef struct {
    int64_t ho, wo, hq, wq, plane, x_batch, slack;
    int ph, pw, direct;
} geom;

static int conv_geom(int64_t cin, int64_t h, int64_t w, int kh, int kw, int stride, int pt, int pl,
                     int pb, int pr, geom *g) {
    if (cin < 1 || h < 1 || w < 1 || kh < 1 || kw < 1 || stride < 1 || pt < 0 || pl < 0 || pb < 0 ||
        pr < 0 || kh > 64 || kw > 64 || stride > 64)
        return SK_ERR_SHAPE;
    const int64_t hp = h + pt + pb, wp = w + pl + pr;
    if (hp < kh || wp < kw) return SK_ERR_SHAPE;
    g->ho = (hp - kh) / stride + 1;
    g->wo = (wp - kw) / stride + 1;
    g->direct = kh == 1 && kw == 1 && stride == 1 && pt + pl + pb + pr == 0;
    g->ph = stride < kh ? stride : kh;
    g->pw = stride < kw ? stride : kw;
    g->hq = g->direct ? h : sk_ceil_div(hp, stride);
    g->wq = g->direct ? w : sk_ceil_div(wp, stride);
    g->plane = g->hq * g->wq;
    g->x_batch = (int64_t)g->ph * g->pw * cin * g->plane;
    g->slack = g->direct ? 0 : (kw - 1) / stride + 16;
    if (g->x_batch + g->slack > INT32_MAX || g->ho * g->wo > INT32_MAX) return SK_ERR_SHAPE;
    return SK_OK;
}

int sk_conv_out_shape(int64_t h, int64_t w, int kh, int kw, int stride, int pt, int pl, int pb,
                      int pr, int64_t *ho, int64_t *wo) {
    geom g;
    const int rc = conv_geom(1, h, w, kh, kw, stride, pt, pl, pb, pr, &g);
    if (rc != SK_OK) return rc;
    *ho = g.ho;
    *wo = g.wo;
    return SK_OK;
}

int sk_conv_offsets(int64_t cin, int64_t h, int64_t w, int kh, int kw, int stride, int pt, int pl,
                    int pb, int pr, const int32_t *taps, int64_t nslots, int32_t *off) {
    geom g;
    const int rc = conv_geom(cin, h, w, kh, kw, stride, pt, pl, pb, pr, &g);
    if (rc != SK_OK) return rc;
    if (nslots < 0) return SK_ERR_LENGTH;
    if (nslots > 0 && (!taps || !off)) return SK_ERR_NULL;
    const int64_t kk = (int64_t)kh * kw, limit = cin * kk;
    for (int64_t i = 0; i < nslots; i++) {
        const int64_t t = taps[i];
        if (t < 0 || t >= limit) return SK_ERR_INDEX;
        const int64_t ci = t / kk, r = t - ci * kk, y = r / kw, x = r - y * kw;
        const int64_t phase = (y % stride) * g.pw + x % stride;
        off[i] = (int32_t)(phase * cin * g.plane + ci * g.plane + (y / stride) * g.wq + x / stride);
    }
    return SK_OK;
}

/* Padded, stride-phased copy of the input: plane[b][phase][ci][i][j] =
 * x[b][ci][i*s + a - pt][j*s + c - pl] (zero outside), phase = a * pw + c. */
typedef struct {
    const float *x;
    float *dst;
    int64_t batch, cin, h, w;
    const geom *g;
    int stride, pt, pl;
} prep_args;

static void prep_body(const void *args, int tid, int nth) {
    const prep_args *p = args;
    const geom *g = p->g;
    const int64_t phases = (int64_t)g->ph * g->pw, n = p->batch * phases * p->cin;
    int64_t i0, i1;
    sk_split(n, tid, nth, &i0, &i1);
    const int s = p->stride;
    for (int64_t it = i0; it < i1; it++) {
        const int64_t ci = it % p->cin, phase = (it / p->cin) % phases, b = it / (p->cin * phases);
        const int a = (int)(phase / g->pw), c = (int)(phase % g->pw);
        const float *src = p->x + (b * p->cin + ci) * p->h * p->w;
        float *dst = p->dst + b * g->x_batch + (phase * p->cin + ci) * g->plane;
        for (int64_t i = 0; i < g->hq; i++, dst += g->wq) {
            const int64_t r = i * s + a - p->pt;
            if (r < 0 || r >= p->h) {
                memset(dst, 0, (size_t)g->wq * sizeof *dst);
                continue;
            }
            const float *row = src + r * p->w;
            if (s == 1) {
                const int64_t lo = p->pl < g->wq ? p->pl : g->wq;
                int64_t n_in = g->wq - lo < p->w ? g->wq - lo : p->w;
                memset(dst, 0, (size_t)lo * sizeof *dst);
                memcpy(dst + lo, row, (size_t)n_in * sizeof *dst);
                memset(dst + lo + n_in, 0, (size_t)(g->wq - lo - n_in) * sizeof *dst);
                continue;
            }
            /* Columns j0 <= j < j1 read inside the row: a branch-free strided copy there
             * (the compiler vectorizes it), zeros around it. The per-element bounds test this
             * replaces made prep_body ~20% of a run with strided convs on the kernel (perf). */
            const int64_t first = c - p->pl; /* input column of j = 0 */
            int64_t j0 = first >= 0 ? 0 : (-first + s - 1) / s;
            int64_t j1 = first > p->w - 1 ? 0 : (p->w - 1 - first) / s + 1;
            if (j0 > g->wq) j0 = g->wq;
            if (j1 > g->wq) j1 = g->wq;
            if (j1 < j0) j1 = j0;
            for (int64_t j = 0; j < j0; j++) dst[j] = 0.0f;
            const float *rs = row + first;
            for (int64_t j = j0; j < j1; j++) dst[j] = rs[j * s];
            for (int64_t j = j1; j < g->wq; j++) dst[j] = 0.0f;
        }
    }
}

/* The loops over every packed slot cost ~3% of a MobileNetV2 run when done per call (perf):
 * the ORT op checks its own precomputed offsets once, at kernel creation. */
int sk_conv2d_check(int64_t cin, int64_t h, int64_t w, int64_t cout, int kh, int kw, int stride, int pt,
                    int pl, int pb, int pr, int64_t kc, const int32_t *perm, const int32_t *row_ptr,
                    const int32_t *off, const float *vals, int64_t nslots, int act) {
    geom g;
    int rc = conv_geom(cin, h, w, kh, kw, stride, pt, pl, pb, pr, &g);
    if (rc != SK_OK) return rc;
    if (cout < 1 || kc < 1 || act < 0 || act > 2) return SK_ERR_SHAPE;
    const int64_t groups = sk_ceil_div(cout, SK_CONV_G), chunks = sk_ceil_div(cin, kc);
    if (!perm || !row_ptr || (nslots > 0 && (!off || !vals))) return SK_ERR_NULL;
    if (row_ptr[0] != 0 || (int64_t)row_ptr[chunks * groups] * SK_CONV_G != nslots)
        return SK_ERR_LENGTH;
    for (int64_t i = 0; i < chunks * groups; i++)
        if (row_ptr[i + 1] < row_ptr[i]) return SK_ERR_INDEX;
    for (int64_t i = 0; i < groups * SK_CONV_G; i++)
        if (perm[i] < -1 || perm[i] >= cout) return SK_ERR_INDEX;
    const int64_t q = g.ho * g.wq;
    for (int64_t i = 0; i < nslots; i++)
        if (off[i] < 0 || off[i] + q > g.x_batch + g.slack) return SK_ERR_INDEX;
    return SK_OK;
}

int sk_conv2d(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w, int64_t cout, int kh,
              int kw, int stride, int pt, int pl, int pb, int pr, int64_t kc, const int32_t *perm,
              const int32_t *row_ptr, const int32_t *off, const float *vals, int64_t nslots,
              const float *bias, int act, float *y, int isa, int threads) {
    const int rc = sk_conv2d_check(cin, h, w, cout, kh, kw, stride, pt, pl, pb, pr, kc, perm, row_ptr,
                                   off, vals, nslots, act);
    if (rc != SK_OK) return rc;
    return sk_conv2d_checked(x, batch, cin, h, w, cout, kh, kw, stride, pt, pl, pb, pr, kc, perm,
                             row_ptr, off, vals, nslots, bias, act, y, isa, threads);
}

int sk_conv2d_checked(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w, int64_t cout,
                      int kh, int kw, int stride, int pt, int pl, int pb, int pr, int64_t kc,
                      const int32_t *perm, const int32_t *row_ptr, const int32_t *off, const float *vals,
                      int64_t nslots, const float *bias, int act, float *y, int isa, int threads) {
    geom g;
    const int rc = conv_geom(cin, h, w, kh, kw, stride, pt, pl, pb, pr, &g);
    if (rc != SK_OK) return rc;
    if (batch < 0) return SK_ERR_SHAPE;
    if (!x || !y) return SK_ERR_NULL;
    const int64_t groups = sk_ceil_div(cout, SK_CONV_G), chunks = sk_ceil_div(cin, kc);
    const int64_t q = g.ho * g.wq;
    if (!sk_isa_supported(isa)) return SK_ERR_ISA;
    if (batch == 0) return SK_OK;
    const int nth = threads > 0 ? threads : sk_max_threads();
    float *planes = NULL;
    if (!g.direct) {
        const size_t n = (size_t)(batch * g.x_batch + g.slack);
        planes = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        if (!planes) return SK_ERR_NULL;
        memset(planes + batch * g.x_batch, 0, (size_t)g.slack * sizeof(float));
        prep_args p = {x, planes, batch, cin, h, w, &g, stride, pt, pl};
        sk_run_parallel(batch * cin >= 2 * nth ? nth : 1, prep_body, &p);
    }
    float *scratch = NULL;
    if (chunks > 1) {
        scratch = malloc((size_t)nth * groups * SK_CONV_G * SK_CONV_MAX_BLOCK * sizeof(float));
        if (!scratch) {
            free(planes);
            return SK_ERR_NULL;
        }
    }
    sk_conv_args a = {planes ? planes : x, g.x_batch, 0, batch, q, g.wq, g.wo, g.ho, groups, chunks,
                      scratch, perm, row_ptr, off, vals, bias, act, y, cout * g.ho * g.wo,
                      g.ho * g.wo, nth};
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case SK_ISA_AVX512: sk_conv_avx512(&a); break;
    case SK_ISA_AVX2: sk_conv_avx2(&a); break;
#endif
    default: sk_conv_scalar(&a); break;
    }
    free(planes);
    free(scratch);
    return SK_OK;
}
