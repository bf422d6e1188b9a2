/* Run the kernels' parallel regions on ONNX Runtime's intra-op thread pool inside ORT ops.
 *
 * With its own pool next to ORT's, a model session holds two sets of workers on the same
 * cores: with ORT's spinning on, ORT's workers spin through a kernel call and take the cores
 * its workers need; with spinning off, every ORT op between two kernel calls pays a wake-up.
 * On a 2-core Xeon the zoo BERT (hidden 256) with all 24 layers on 2:4 kernels ran at 0.40x
 * dense although each layer alone was faster (bench/results/never_slower_quiet_own_pool.json).
 * KernelContext_ParallelFor hands the region's tasks to the pool ORT already keeps warm.
 */
#include "sk_ort_pool.h"

#include <stdlib.h>
#include <string.h>

#include "sk_internal.h"

#define SK_ORT_PARALLEL_FOR_API 17u

static const OrtApi *pool_api; /* NULL: the kernels keep their own pool */

void sk_ort_pool_init(const OrtApiBase *base) {
    const char *env = getenv("SPARSEC_KERNEL_POOL");
    pool_api = (env && strcmp(env, "own") == 0) ? NULL : base->GetApi(SK_ORT_PARALLEL_FOR_API);
}

static int ort_run(void *context, void (*task)(void *, size_t), size_t total, void *data) {
    OrtStatus *st = SK_ORT(pool_api, KernelContext_ParallelFor)((const OrtKernelContext *)context, task,
                                                                total, 0, data);
    if (!st) return 0;
    SK_ORT(pool_api, ReleaseStatus)(st); /* refused before running any task: use the own pool */
    return 1;
}

void sk_ort_pool_enter(OrtKernelContext *context) {
    if (pool_api) sk_set_host_pool(ort_run, context);
}

void sk_ort_pool_leave(void) { sk_set_host_pool(NULL, NULL); }

OrtStatus *sk_ort_pool_compute(OrtStatus *(*fn)(void *, OrtKernelContext *), void *kernel, OrtKernelContext *context) {
    sk_ort_pool_enter(context);
    OrtStatus *st = fn(kernel, context);
    sk_ort_pool_leave();
    return st;
}
