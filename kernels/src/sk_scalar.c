/* Portable reference kernels: the fallback path and the oracle of the C tests. */
#include "sk_internal.h"

static void nm_scalar_body(const void *args, int tid, int nth) {
    const sk_nm_args *a = args;
    const int64_t ntiles = sk_ceil_div(a->cols, SK_TILE), groups = a->k / a->m;
    const int words = sk_nm_meta_words(a->m), n = a->n, m = a->m;
    int64_t t_begin, t_end;
    sk_split(ntiles, tid, nth, &t_begin, &t_end);
    for (int64_t t = t_begin; t < t_end; t++) {
        const int64_t c0 = t * SK_TILE;
        const int width = (int)(a->cols - c0 < SK_TILE ? a->cols - c0 : SK_TILE);
        for (int64_t r = 0; r < a->rows; r++) {
            const float *xr = a->x + r * a->ldx;
            float acc[SK_TILE] = {0};
            for (int64_t g = 0; g < groups; g++) {
                for (int j = 0; j < n; j++) {
                    const int64_t rec = (t * groups + g) * n + j;
                    const float *v = a->values + rec * SK_TILE;
                    const uint16_t *md = a->meta + rec * words;
                    for (int l = 0; l < SK_TILE; l++)
                        acc[l] += v[l] * xr[g * m + sk_nm_pos(m, md, l)];
                }
            }
            for (int l = 0; l < width; l++) a->y[r * a->ldy + c0 + l] = acc[l];
        }
    }
}

void sk_nm_scalar(const sk_nm_args *a) { sk_run_parallel(a->threads, nm_scalar_body, a); }

static void block_scalar_body(const void *args, int tid, int nth) {
    const sk_block_args *a = args;
    const int64_t ntiles = sk_ceil_div(a->cols, SK_TILE);
    int64_t t_begin, t_end;
    sk_split(ntiles, tid, nth, &t_begin, &t_end);
    for (int64_t t = t_begin; t < t_end; t++) {
        const int64_t c0 = t * SK_TILE;
        const int width = (int)(a->cols - c0 < SK_TILE ? a->cols - c0 : SK_TILE);
        for (int64_t r = 0; r < a->rows; r++) {
            const float *xr = a->x + r * a->ldx;
            float acc[SK_TILE] = {0};
            for (int32_t b = a->tile_ptr[t]; b < a->tile_ptr[t + 1]; b++)
                for (int i = 0; i < a->bk; i++) {
                    const float xv = xr[a->kidx[b] + i];
                    const float *v = a->values + ((int64_t)b * a->bk + i) * SK_TILE;
                    for (int l = 0; l < SK_TILE; l++) acc[l] += v[l] * xv;
                }
            for (int l = 0; l < width; l++) a->y[r * a->ldy + c0 + l] = acc[l];
        }
    }
}

void sk_block_scalar(const sk_block_args *a) { sk_run_parallel(a->threads, block_scalar_body, a); }
