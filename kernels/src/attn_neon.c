/* Block-sparse attention on NEON (AArch64 Advanced SIMD): 4 rows x 16 columns (16 q regs). */
#if defined(__aarch64__)
#define ATTN_VW 4
#define ATTN_NV 4
#define ATTN_RB 4
#define ATTN_FN sk_attn_neon
#include "attn_kernel.inc"
#else
typedef int sk_attn_neon_unused;
#endif
