/* Block-sparse attention on AVX2 + FMA: 3 rows x 32 columns of accumulators (12 ymm). */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#define ATTN_VW 8
#define ATTN_NV 4
#define ATTN_RB 3
#define ATTN_FN sk_attn_avx2
#include "attn_kernel.inc"
#else
typedef int sk_attn_avx2_unused;
#endif
