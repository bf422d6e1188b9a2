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

/* Kernel creation helpers of the ops. `ctx` names the op and node in messages. */
OrtStatus *sk_ort_attr_int(const OrtApi *api, const OrtKernelInfo *info, const char *ctx, const char *name,
                           int64_t *out); /* a required int attribute */
int64_t sk_ort_attr_int_or(const OrtApi *api, const OrtKernelInfo *info, const char *name,
                           int64_t fallback); /* an optional one: `fallback` when absent */
void sk_ort_attr_float(const OrtApi *api, const OrtKernelInfo *info, const char *name,
                       float *out); /* optional: *out kept when absent */
/* Constant input `index` of ONNX element type `type` (`size` bytes each): its data 64-byte
 * aligned (an aligned copy in *owned when ORT's buffer is not; the caller frees it) and count. */
OrtStatus *sk_ort_constant(const OrtApi *api, const OrtKernelInfo *info, const char *ctx, size_t index,
                           const char *what, int type, size_t size, const void **out, int64_t *count,
                           void **owned);

/* The OrtCustomOp callbacks every conv op shares (CPU provider, float outputs, required
 * outputs, default memory, arity 1); the op sets its name, inputs and kernel callbacks. */
void sk_ort_init_op(struct OrtCustomOp *op);

#ifdef __cplusplus
}
#endif

#endif
