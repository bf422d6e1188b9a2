/* N:M sparse x dense on AArch64 Advanced SIMD (NEON).
 *
 * A 16-column tile is four float32x4 quarters. NEON has no float permute by lane index,
 * so the group's M inputs act as a byte table for TBL: position p of a lane becomes the
 * byte indices 4p..4p+3 (p * 0x04040404 + 0x03020100), and one TBL gathers four floats.
 * Register block: NMN_R rows x 4 quarters.
 */
#if defined(__aarch64__)
#include <arm_neon.h>

#include "sk_internal.h"

#define NMN_R 4

typedef struct {
    const float *x;
    int64_t ldx, groups;
    const float *vals;
    const uint16_t *meta;
    int n;
    float *y;
    int64_t ldy;
    int width;
} nmn_args;

static inline uint32x4_t nmn_pos(const int M, const uint16_t *md, const int q) {
    const int32_t base2 = -8 * q; /* right shifts are negative vshl counts */
    if (M == 4 || M == 8) {
        const int32x4_t sh = {base2, base2 - 2, base2 - 4, base2 - 6};
        uint32x4_t p = vandq_u32(vshlq_u32(vdupq_n_u32(sk_load_u32(md)), sh), vdupq_n_u32(3));
        if (M == 8) {
            const int32x4_t sh1 = {-4 * q, -4 * q - 1, -4 * q - 2, -4 * q - 3};
            const uint32x4_t h = vandq_u32(vshlq_u32(vdupq_n_u32(md[2]), sh1), vdupq_n_u32(1));
            p = vorrq_u32(p, vshlq_n_u32(h, 2));
        }
        return p;
    }
    const int32x4_t sh = {-8 * q, -8 * q, -8 * q - 4, -8 * q - 4};
    const uint32x4_t w = vreinterpretq_u32_u64(vdupq_n_u64(sk_load_u64(md))); /* lo,hi,lo,hi */
    return vandq_u32(vshlq_u32(w, sh), vdupq_n_u32(15));
}

static inline uint8x16_t nmn_bytes(uint32x4_t pos) {
    return vreinterpretq_u8_u32(vmlaq_u32(vdupq_n_u32(0x03020100u), pos, vdupq_n_u32(0x04040404u)));
}

static inline __attribute__((always_inline)) float32x4_t nmn_gather(const int M, const float *xg,
                                                                    uint8x16_t idx) {
    const uint8_t *b = (const uint8_t *)xg;
    if (M == 4) return vreinterpretq_f32_u8(vqtbl1q_u8(vld1q_u8(b), idx));
    if (M == 8) {
        const uint8x16x2_t t = {{vld1q_u8(b), vld1q_u8(b + 16)}};
        return vreinterpretq_f32_u8(vqtbl2q_u8(t, idx));
    }
    const uint8x16x4_t t = {{vld1q_u8(b), vld1q_u8(b + 16), vld1q_u8(b + 32), vld1q_u8(b + 48)}};
    return vreinterpretq_f32_u8(vqtbl4q_u8(t, idx));
}

static inline __attribute__((always_inline)) void nmn_mk(const int M, const int R, const nmn_args *p) {
    const int W = M == 4 ? 2 : (M == 8 ? 3 : 4);
    float32x4_t acc[R][4];
    for (int r = 0; r < R; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
    const float *vals = p->vals;
    const uint16_t *meta = p->meta;
    for (int64_t g = 0; g < p->groups; g++) {
        for (int j = 0; j < p->n; j++) {
            for (int q = 0; q < 4; q++) {
                const uint8x16_t idx = nmn_bytes(nmn_pos(M, meta, q));
                const float32x4_t v = vld1q_f32(vals + 4 * q);
                for (int r = 0; r < R; r++)
                    acc[r][q] = vfmaq_f32(acc[r][q], v, nmn_gather(M, p->x + r * p->ldx + g * M, idx));
            }
            vals += SK_TILE;
            meta += W;
        }
    }
    for (int r = 0; r < R; r++) {
        float out[SK_TILE];
        for (int q = 0; q < 4; q++) vst1q_f32(out + 4 * q, acc[r][q]);
        memcpy(p->y + r * p->ldy, out, (size_t)p->width * sizeof(float));
    }
}

typedef void (*nmn_fn)(const nmn_args *);
#define NMN_DEF(M_, R_) \
    static void nmn_mk_##M_##_##R_(const nmn_args *p) { nmn_mk(M_, R_, p); }
#define NMN_DEFS(M_) NMN_DEF(M_, 1) NMN_DEF(M_, 2) NMN_DEF(M_, 3) NMN_DEF(M_, 4)
NMN_DEFS(4) NMN_DEFS(8) NMN_DEFS(16)
#define NMN_ROW(M_) {nmn_mk_##M_##_1, nmn_mk_##M_##_2, nmn_mk_##M_##_3, nmn_mk_##M_##_4}
static const nmn_fn NMN[3][NMN_R] = {NMN_ROW(4), NMN_ROW(8), NMN_ROW(16)};

static void nm_neon_body(const void *args, int tid, int nth) {
    const sk_nm_args *a = args;
    const int m = a->m, n = a->n, W = sk_nm_meta_words(m);
    const int mi = m == 4 ? 0 : (m == 8 ? 1 : 2);
    const int64_t groups = a->k / m, ntiles = sk_ceil_div(a->cols, SK_TILE);
    const int64_t tile_vals = groups * n * SK_TILE, tile_meta = groups * n * W;
    int64_t t_begin, t_end;
    sk_split(ntiles, tid, nth, &t_begin, &t_end);
    for (int64_t t = t_begin; t < t_end; t++) {
        const int64_t c0 = t * SK_TILE;
        for (int64_t r0 = 0; r0 < a->rows; r0 += NMN_R) {
            const int rr = (int)(a->rows - r0 < NMN_R ? a->rows - r0 : NMN_R);
            nmn_args p = {a->x + r0 * a->ldx, a->ldx, groups, a->values + t * tile_vals,
                          a->meta + t * tile_meta, n, a->y + r0 * a->ldy + c0, a->ldy,
                          (int)(a->cols - c0 < SK_TILE ? a->cols - c0 : SK_TILE)};
            NMN[mi][rr - 1](&p);
        }
    }
}

void sk_nm_neon(const sk_nm_args *a) { sk_run_parallel(a->threads, nm_neon_body, a); }
#endif
