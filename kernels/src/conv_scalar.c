/* Portable sparse convolution over the virtual grid (conv_internal.h): the fallback path and
 * the oracle of the vector kernels. */
#include "conv_internal.h"

#define PB 16

static void conv_scalar_body(const void *args, int tid, int nth) {
    const sk_conv_args *a = args;
    int64_t pblocks, rchunks, chunk, i0, i1;
    sk_conv_items(a, PB, nth, &pblocks, &rchunks, &chunk);
    sk_split(a->batch * pblocks * rchunks, tid, nth, &i0, &i1);
    for (int64_t it = i0; it < i1; it++) {
        const int64_t rc = it % rchunks, pb = (it / rchunks) % pblocks, b = it / (rchunks * pblocks);
        const int64_t q0 = pb * PB, nq = a->q - q0 < PB ? a->q - q0 : PB;
        const float *xq = a->x + b * a->x_batch + q0;
        float *yb = a->y + b * a->y_batch;
        const int64_t g_begin = rc * chunk;
        const int64_t g_end = (rc + 1) * chunk < a->groups ? (rc + 1) * chunk : a->groups;
        float *scratch = a->scratch ? a->scratch + (int64_t)tid * a->groups * SK_CONV_G * PB : NULL;
        for (int64_t c = 0; c < a->chunks; c++)
            for (int64_t g = g_begin; g < g_end; g++)
                for (int j = 0; j < SK_CONV_G; j++) {
                    const int32_t r = a->perm[SK_CONV_G * g + j];
                    const int64_t rp = c * a->groups + g;
                    float acc[PB];
                    float *part = scratch ? scratch + ((g - g_begin) * SK_CONV_G + j) * PB : NULL;
                    for (int l = 0; l < nq; l++)
                        acc[l] = c ? part[l] : (a->bias && r >= 0 ? a->bias[r] : 0.0f);
                    for (int64_t s = a->row_ptr[rp]; s < a->row_ptr[rp + 1]; s++) {
                        const float w = a->vals[SK_CONV_G * s + j];
                        const float *xp = xq + a->off[SK_CONV_G * s + j];
                        for (int l = 0; l < nq; l++) acc[l] += w * xp[l];
                    }
                    if (c + 1 < a->chunks) {
                        for (int l = 0; l < nq; l++) part[l] = acc[l];
                        continue;
                    }
                    if (r < 0) continue;
                    float *yr = yb + (int64_t)r * a->y_plane;
                    for (int l = 0; l < nq; l++) {
                        const int64_t q = q0 + l, h = q / a->wq, w = q - h * a->wq;
                        if (w < a->wo) yr[h * a->wo + w] = sk_conv_act(acc[l], a->act);
                    }
                }
    }
}

void sk_conv_scalar(const sk_conv_args *a) { sk_run_parallel(a->threads, conv_scalar_body, a); }
