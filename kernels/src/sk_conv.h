/* sparsec sparse 2-D convolution (NCHW fp32, weights packed by kernels/packing_conv.py):
 * public C API. Scheme and packed layout in conv_internal.h. */
#ifndef SPARSEC_SK_CONV_H
#define SPARSEC_SK_CONV_H
#include <stdint.h>

/* Output spatial size of a convolution (dilation 1); SK_ERR_SHAPE if it has none. */
int sk_conv_out_shape(int64_t h, int64_t w, int kh, int kw, int stride, int pt, int pl, int pb,
                      int pr, int64_t *ho, int64_t *wo);

/* Element offsets of the packed taps (ci*KH*KW + kh*KW + kw) for one input size. */
int sk_conv_offsets(int64_t cin, int64_t h, int64_t w, int kh, int kw, int stride, int pt, int pl,
                    int pb, int pr, const int32_t *taps, int64_t nslots, int32_t *off);

/* y[batch, cout, ho, wo] = act(conv(x[batch, cin, h, w], W) + bias); act 0 none, 1 relu,
 * 2 relu6. `off` from sk_conv_offsets for this (h, w); bias may be NULL; kc = input
 * channels per chunk of the packing. */
int sk_conv2d(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w, int64_t cout, int kh,
              int kw, int stride, int pt, int pl, int pb, int pr, int64_t kc, const int32_t *perm,
              const int32_t *row_ptr, const int32_t *off, const float *vals, int64_t nslots,
              const float *bias, int act, float *y, int isa, int threads);

/* The argument checks of sk_conv2d alone (every packed slot's offset in range for this input
 * size), and sk_conv2d without them: for callers that checked these arguments once (the ORT
 * op, at kernel creation) and call many times. */
int sk_conv2d_check(int64_t cin, int64_t h, int64_t w, int64_t cout, int kh, int kw, int stride, int pt,
                    int pl, int pb, int pr, int64_t kc, const int32_t *perm, const int32_t *row_ptr,
                    const int32_t *off, const float *vals, int64_t nslots, int act);
int sk_conv2d_checked(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w, int64_t cout,
                      int kh, int kw, int stride, int pt, int pl, int pb, int pr, int64_t kc,
                      const int32_t *perm, const int32_t *row_ptr, const int32_t *off, const float *vals,
                      int64_t nslots, const float *bias, int act, float *y, int isa, int threads);

#endif
