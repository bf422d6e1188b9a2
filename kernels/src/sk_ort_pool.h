/* The kernels' parallel regions on ONNX Runtime's intra-op pool while an op computes. */
#ifndef SK_ORT_POOL_H
#define SK_ORT_POOL_H

#include "sk_ort_abi.h"

/* At registration: use ORT's pool when the runtime has KernelContext_ParallelFor (C API 17,
 * ORT 1.17) and $SPARSEC_KERNEL_POOL is not "own". */
void sk_ort_pool_init(const OrtApiBase *base);
/* Around an op's compute: its parallel regions go to ORT's pool for `context`. */
void sk_ort_pool_enter(OrtKernelContext *context);
void sk_ort_pool_leave(void);
/* An op's compute `fn` between the two: what every op's KernelComputeV2 does. */
OrtStatus *sk_ort_pool_compute(OrtStatus *(*fn)(void *, OrtKernelContext *), void *kernel, OrtKernelContext *context);

#endif
