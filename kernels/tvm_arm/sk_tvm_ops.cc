/* sparsec kernels as TVM FFI packed functions, linked into an exported TVM library.
 *
 * A Relax module calls them with R.call_dps_packed("sparsec_nm_matmul", (x, values, meta,
 * n, m), out): destination-passing style, the output is the last argument. The symbols are
 * exported as `__tvm_ffi_<name>`, which TVM's library module finds when the Relax VM resolves
 * the call, so the deployed .so needs nothing registered at run time.
 *
 * Built for aarch64 (NEON path) by sparsec.kernels.cross_build together with kernels/src/*.c;
 * the same source builds for the host, which is how the tests check it against NumPy.
 */
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include <cstdint>

extern "C" {
#include "sk.h"
}

namespace {

using tvm::ffi::TensorView;

int BestIsa() {
  static const int preference[] = {SK_ISA_NEON, SK_ISA_AVX512, SK_ISA_AVX2, SK_ISA_SCALAR};
  for (int isa : preference) {
    if (sk_isa_supported(isa)) return isa;
  }
  return SK_ISA_SCALAR;
}

void CheckF32(const TensorView& t, const char* what) {
  if (t.dtype().code != kDLFloat || t.dtype().bits != 32 || t.dtype().lanes != 1) {
    TVM_FFI_THROW(TypeError) << "sparsec_nm_matmul: " << what << " must be float32";
  }
  if (t.strides().data() != nullptr) {
    // A non-null stride array may still be compact; only a gap between rows is refused.
    int64_t expected = 1;
    for (int32_t i = t.ndim() - 1; i >= 0; --i) {
      if (t.size(i) != 1 && t.stride(i) != expected) {
        TVM_FFI_THROW(ValueError) << "sparsec_nm_matmul: " << what << " must be contiguous";
      }
      expected *= t.size(i);
    }
  }
}

// VM allocations may place a tensor at an offset inside a pooled storage block.
template <typename T>
T* Data(const TensorView& t) {
  return reinterpret_cast<T*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}

// y[..., N] = x[..., K] @ W, W held as packed N:M values + metadata (kernels/packing_nm.py).
void NmMatmul(TensorView x, TensorView values, TensorView meta, int64_t n, int64_t m, TensorView y) {
  CheckF32(x, "x");
  CheckF32(values, "values");
  CheckF32(y, "y");
  if (meta.dtype().code != kDLUInt || meta.dtype().bits != 16) {
    TVM_FFI_THROW(TypeError) << "sparsec_nm_matmul: meta must be uint16";
  }
  if (x.ndim() < 1 || y.ndim() != x.ndim()) {
    TVM_FFI_THROW(ValueError) << "sparsec_nm_matmul: x and y must have the same rank";
  }
  const int64_t k = x.size(x.ndim() - 1);
  const int64_t cols = y.size(y.ndim() - 1);
  const int64_t rows = k ? x.numel() / k : 0;
  if (cols == 0 || y.numel() / cols != rows) {
    TVM_FFI_THROW(ValueError) << "sparsec_nm_matmul: x and y disagree on the row count";
  }
  const int status = sk_nm_matmul(
      Data<const float>(x), k, rows, k, cols, static_cast<int>(n), static_cast<int>(m),
      Data<const float>(values), values.numel(),
      Data<const uint16_t>(meta), meta.numel(), Data<float>(y), cols,
      BestIsa(), 0);
  if (status != SK_OK) {
    TVM_FFI_THROW(RuntimeError) << "sparsec_nm_matmul: " << sk_status_string(status);
  }
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(sparsec_nm_matmul, NmMatmul);
