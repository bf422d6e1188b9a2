/* MoE FFN kernel (moe_kernel.c, moe_avx512.c, moe_avx2.c, moe_ort.c); not part of sk.h.
 *
 * Weights, as com.sparsec.MoE stacks them (fp32, row-major):
 *   router_weight [D, E], router_bias [E], w1 [E, D, F], b1 [E, F], w2 [E, F, D], b2 [D],
 *   optional w_up [E, D, F] (gated: act(x w1[e] + b1[e]) * (x w_up[e])).
 * Y[t] = b2 + sum over the top_k experts e of token t (by router logit) of
 *        g[t, e] * (act(x w1[e] + b1[e]) [* x w_up[e]]) w2[e],
 * g = 1 (gating 0, "none"), the softmax of the selected logits (gating 1), or the selected
 * entries of the softmax over all E logits, not renormalised (gating 2, "softmax_all").
 *
 * N:M-packed experts (nm_n > 0): w1/w2/wup are NULL; each expert's projection is packed as
 * the N:M MatMul kernels read it (kernels/packing_nm.py, layout in sk.h): w1[e] and w_up[e]
 * as [K=D, C=F], w2[e] as [K=F, C=D], the experts' buffers concatenated in expert order.
 * The projections then run through the N:M kernels' own inner loops (sk_nm_*).
 *
 * Panel layout (panel = SK_MOE_NR, dense experts): each expert's [K, C] projection as
 * ceil(C / NR) panels of [K][NR] (row kk of panel p holds columns p*NR .. p*NR+NR-1, zero
 * padded), experts in order: the tile kernels then stream each panel contiguously. The ORT
 * op packs row-major weights into it once, at session creation (sk_moe_pack_panels).
 */
#ifndef SPARSEC_MOE_INTERNAL_H
#define SPARSEC_MOE_INTERNAL_H
#include <stdint.h>

enum { MOE_RELU = 0, MOE_GELU = 1, MOE_GELU_TANH = 2, MOE_SILU = 3, MOE_ACTS = 4 };
enum { MOE_GATE_NONE = 0, MOE_GATE_SOFTMAX = 1, MOE_GATE_SOFTMAX_ALL = 2 };

typedef struct {
    int64_t d, e, f;
    int top_k, act, gating;
    const float *rw, *rb, *w1, *b1, *w2, *b2, *wup; /* wup NULL unless gated */
    int nm_n, nm_m;                                  /* 0, 0: dense experts */
    const float *v1, *v2, *vup;                      /* packed values (vup NULL unless gated) */
    const uint16_t *m1, *m2, *mup;                   /* packed positions */
    int panel; /* dense experts: 0 row-major w1/w2/wup, SK_MOE_NR the panel layout */
} sk_moe_weights;

enum { SK_MOE_MR = 12, SK_MOE_NR = 32 }; /* token rows per tile, columns per weight panel */

/* Floats of one expert's [k, cols] projection in the panel layout. */
int64_t sk_moe_panel_elems(int64_t k, int64_t cols);
/* Stacked row-major experts [e, k, cols] -> the panel layout (e * sk_moe_panel_elems). */
void sk_moe_pack_panels(const float *w, int64_t e, int64_t k, int64_t cols, float *out);

/* Token tile times weight panel: c[i * NR + j] = sum_kk a[kk * mr + i] * b[kk * ldb + j] for
 * i < mr <= SK_MOE_MR, j < nc <= SK_MOE_NR (columns nc.. of c are left undefined, b is not read
 * there). A holds the tile's mr token rows interleaved ([k][mr]), so one pointer feeds all
 * rows; B is a panel (ldb = NR) or a row-major slice. */
typedef void (*sk_moe_tile_fn)(const float *a, int mr, int64_t k, const float *b, int64_t ldb,
                               int64_t nc, float *c);

/* Records of one expert's packed [k, cols] projection (each 16 values and sk_nm_meta_words(m)
 * meta words). */
int64_t sk_moe_nm_records(int64_t k, int64_t cols, int n, int m);

/* c[r][coff + j] (+)= sum_k a[r][k] * b[k * ldb + j], r < rows, j < ncols. Rows of A and C
 * are given by pointers: tokens routed to an expert are scattered rows of X and Y. */
typedef void (*sk_moe_panel_fn)(const float *const *a, int64_t rows, int64_t k, const float *b,
                                int64_t ldb, int64_t ncols, float *const *c, int64_t coff,
                                int accumulate);
/* h[j] = act(h[j] + bias[j]) * (up ? up[j] : 1) * gate, j < n. */
typedef void (*sk_moe_act_fn)(float *h, const float *bias, const float *up, float gate, int64_t n,
                              int act);

void sk_moe_panel_scalar(const float *const *a, int64_t rows, int64_t k, const float *b,
                         int64_t ldb, int64_t ncols, float *const *c, int64_t coff, int accumulate);
void sk_moe_act_scalar(float *h, const float *bias, const float *up, float gate, int64_t n, int act);
void sk_moe_tile_scalar(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                        float *c);
#if defined(__x86_64__) || defined(_M_X64)
void sk_moe_panel_avx512(const float *const *a, int64_t rows, int64_t k, const float *b,
                         int64_t ldb, int64_t ncols, float *const *c, int64_t coff, int accumulate);
void sk_moe_act_avx512(float *h, const float *bias, const float *up, float gate, int64_t n, int act);
void sk_moe_tile_avx512(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                        float *c);
void sk_moe_panel_avx2(const float *const *a, int64_t rows, int64_t k, const float *b,
                       int64_t ldb, int64_t ncols, float *const *c, int64_t coff, int accumulate);
void sk_moe_act_avx2(float *h, const float *bias, const float *up, float gate, int64_t n, int act);
void sk_moe_tile_avx2(const float *a, int mr, int64_t k, const float *b, int64_t ldb, int64_t nc,
                      float *c);
#endif

/* Checks dims/attributes; 0 when valid. */
int sk_moe_check(const sk_moe_weights *w);
/* Packed experts: whether every group's positions are strictly increasing (the canonical
 * form pack_nm writes), so corrupted metadata cannot alias two slots onto one input. Reads
 * all the metadata: once, at session creation. -1 when valid, else the expert at fault. */
int64_t sk_moe_nm_bad_expert(const sk_moe_weights *w);
/* y[rows, D] = MoE(x[rows, D]); SK_OK or an sk_status. */
int sk_moe_ffn(const sk_moe_weights *w, const float *x, int64_t rows, float *y, int isa,
               int threads);

struct OrtCustomOp;
/* The ORT custom op "MoEFFN" for a kernel thread cap (moe_ort.c); registered by sk_ort_ops.c. */
struct OrtCustomOp *sk_moe_custom_op(int cap);

#endif
