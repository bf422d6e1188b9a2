/* Block-sparse attention on AVX-512: 4 rows x 64 columns of accumulators (16 zmm). */
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#define ATTN_VW 16
#define ATTN_NV 4
#define ATTN_RB 4
#define ATTN_FN sk_attn_avx512
#include "attn_kernel.inc"
#else
typedef int sk_attn_avx512_unused;
#endif
