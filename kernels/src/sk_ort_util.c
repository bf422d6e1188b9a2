#include "sk_ort_util.h"

#include <stdarg.h>
#include <stdio.h>

OrtStatus *sk_ort_status(const OrtApi *api, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return SK_ORT(api, CreateStatus)(SK_ORT_FAIL, msg);
}

OrtStatus *sk_ort_shape(const OrtApi *api, const OrtValue *v, int64_t *dims, size_t max_rank,
                        size_t *rank) {
    OrtTensorTypeAndShapeInfo *ti = NULL;
    OrtStatus *st = SK_ORT(api, GetTensorTypeAndShape)(v, &ti);
    if (st) return st;
    st = SK_ORT(api, GetDimensionsCount)(ti, rank);
    if (!st && *rank <= max_rank) st = SK_ORT(api, GetDimensions)(ti, dims, *rank);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    return st;
}
