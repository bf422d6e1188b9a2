// sparsec's 2:4 sparse tensor-core kernel (kernels/cuda/sp24_kernels.cu) as a TVM FFI packed
// function, linked into the model.so of `--target=cuda --backend=tvm`.
//
// Relax calls it with R.call_dps_packed("sparsec_cuda_sp24_matmul", (X, values, meta), Y):
//   X [rows, K] fp16/bf16, values uint32 [MT, KT, 32, 4], meta uint32 [MT, KT/2, 32] (the
//   layout of kernels/packing_sparse_tc.py), Y [rows, C] of X's dtype, all on one CUDA device.
// The VM finds it through the symbol `__tvm_ffi_sparsec_cuda_sp24_matmul` (the TVM FFI C ABI
// of exported functions). It runs on the stream TVM's runtime has set for the device
// (TVMFFIEnvGetStream), so it orders with the TVM-generated kernels around it.
#include <stdint.h>
#include <stdio.h>

#include <tvm/ffi/c_api.h>
#include <tvm/ffi/extra/c_env_api.h>

extern "C" int sk_cuda_sp24_matmul(int dtype, const void* vals, const void* meta, const void* x, void* y,
                                   int rows, int k, int batch, void* stream);

namespace {

int fail(const char* msg) {
    char buf[256];
    snprintf(buf, sizeof buf, "sparsec_cuda_sp24_matmul: %s", msg);
    TVMFFIErrorSetRaisedFromCStr("RuntimeError", buf);
    return -1;
}

DLTensor* tensor_arg(const TVMFFIAny* a) {
    if (a->type_index == kTVMFFIDLTensorPtr) return static_cast<DLTensor*>(a->v_ptr);
    if (a->type_index == kTVMFFITensor)
        return reinterpret_cast<DLTensor*>(reinterpret_cast<char*>(a->v_obj) + sizeof(TVMFFIObject));
    return nullptr;
}

bool compact(const DLTensor* t) {
    if (t->strides == nullptr) return true;
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != expect) return false;
        expect *= t->shape[i];
    }
    return true;
}

const void* data(const DLTensor* t) { return static_cast<const char*>(t->data) + t->byte_offset; }

}  // namespace

extern "C" __attribute__((visibility("default"))) int __tvm_ffi_sparsec_cuda_sp24_matmul(
    void*, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
    if (num_args != 4) return fail("expects (X, values, meta, Y)");
    DLTensor* x = tensor_arg(&args[0]);
    DLTensor* vals = tensor_arg(&args[1]);
    DLTensor* meta = tensor_arg(&args[2]);
    DLTensor* y = tensor_arg(&args[3]);
    if (!x || !vals || !meta || !y) return fail("arguments must be tensors");
    for (DLTensor* t : {x, vals, meta, y}) {
        if (t->device.device_type != kDLCUDA || t->device.device_id != x->device.device_id)
            return fail("all tensors must be on the same CUDA device");
        if (!compact(t)) return fail("tensors must be compact row-major");
    }
    if (x->ndim != 2 || y->ndim != 2 || x->shape[0] != y->shape[0]) return fail("X [rows, K] and Y [rows, C] expected");
    if (x->dtype.code != y->dtype.code || x->dtype.bits != 16 || y->dtype.bits != 16)
        return fail("X and Y must both be float16 or both bfloat16");
    int dtype = x->dtype.code == kDLFloat ? 0 : (x->dtype.code == kDLBfloat ? 1 : -1);
    if (dtype < 0) return fail("X must be float16 or bfloat16");
    if (vals->dtype.code != kDLUInt || vals->dtype.bits != 32 || meta->dtype.code != kDLUInt || meta->dtype.bits != 32)
        return fail("values and meta must be uint32");
    const int64_t rows = x->shape[0], k = x->shape[1], cols = y->shape[1];
    const int64_t mt = (cols + 15) / 16;
    if (vals->ndim != 4 || vals->shape[0] != mt || vals->shape[1] != k / 32 || meta->ndim != 3 ||
        meta->shape[0] != mt || meta->shape[1] != k / 64)
        return fail("packed weight shape does not match X and Y (see kernels/packing_sparse_tc.py)");
    void* stream = TVMFFIEnvGetStream(kDLCUDA, x->device.device_id);
    int rc = sk_cuda_sp24_matmul(dtype, data(vals), data(meta), data(x), const_cast<void*>(data(y)),
                                 static_cast<int>(cols), static_cast<int>(k), static_cast<int>(rows), stream);
    if (rc != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "CUDA error %d (K must be a multiple of 64, buffers 16-byte aligned)", rc);
        return fail(msg);
    }
    result->type_index = kTVMFFINone;
    result->v_int64 = 0;
    return 0;
}
