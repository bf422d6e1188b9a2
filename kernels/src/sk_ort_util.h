/* Helpers shared by the ORT custom ops (sk_ort_ops.c, attn_ort_op.c, moe_ort.c): one way to
 * build an error status and to read a tensor's shape, instead of a copy per op. */
#ifndef SK_ORT_UTIL_H
#define SK_ORT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "sk_ort_abi.h"

#ifdef __cplusplus
extern "C" {  /* also linked into the CUDA op library (kernels/cuda/sp24_ort_op.cu) */
#endif

/* A failed OrtStatus with a printf-formatted message (truncated at 511 bytes). */
OrtStatus *sk_ort_status(const OrtApi *api, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The rank of `v` in *rank and, when it is at most `max_rank`, its dims in `dims`; a larger
 * rank leaves `dims` untouched so the caller can report it. */
OrtStatus *sk_ort_shape(const OrtApi *api, const OrtValue *v, int64_t *dims, size_t max_rank,
                        size_t *rank);

#ifdef __cplusplus
}
#endif

#endif
