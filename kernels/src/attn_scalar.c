/* Block-sparse attention, portable path: GCC vector extensions of 4 floats, which the
 * compiler maps to the baseline SIMD (SSE2 on x86-64) or to scalar code elsewhere. */
#define ATTN_VW 4
#define ATTN_NV 2
#define ATTN_RB 4
#define ATTN_FN sk_attn_scalar
#include "attn_kernel.inc"
