// ONNX Runtime custom op for the CUDA execution provider: sparsec's 2:4 kernel (sp24_kernels.cu).
//
//   domain "com.sparsec.cuda", opset 1:
//   Sp24MatMul(X, values, meta) -> Y      attrs K, N
//     X      float16 [..., K] (on the GPU)
//     values uint32 [ceil(N/16), K/32, 32, 4], meta uint32 [ceil(N/16), K/64, 32]: the layout
//            of kernels/packing_sparse_tc.py (pack_sparse_tc(W, "float16")), constant initializers
//     Y      float16 [..., N] = X @ W, fp32 accumulation (mma.sp)
//
// Built with nvcc into libsparsec_cuda_ort_<arch>.so (kernels/cuda_build.py, kind "ort"); ONNX
// Runtime (onnxruntime-gpu) loads it with SessionOptions.register_custom_ops_library and calls
// RegisterCustomOps. The op runs on the CUDA EP's compute stream (KernelContext_GetGPUComputeStream),
// so it orders with the EP's own kernels. The ORT ABI subset is kernels/src/sk_ort_abi.h, shared
// with the CPU op library; this file adds the one slot it needs beyond that (193).
//
// Status: compiled and checked here (symbols, registration in ONNX Runtime's CPU build); it has
// never run: this machine has no GPU.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../src/sk_ort_util.h"

extern "C" int sk_cuda_sp24_matmul(int dtype, const void* vals, const void* meta, const void* x, void* y,
                                   int rows, int k, int batch, void* stream);

namespace {

// OrtApi slot of KernelContext_GetGPUComputeStream (ORT >= 1.10; below 255, so present at API 16).
// Counted in onnxruntime_c_api.h's struct OrtApi, the same count that puts KernelContext_GetOutput
// at 91 and ReleaseStatus at 93 (sk_ort_abi.h, checked against the installed runtime).
constexpr size_t kGetGPUComputeStream = 193;
typedef OrtStatus*(SK_ORT_CALL* GetGPUComputeStreamFn)(const OrtKernelContext* context, void** out);

constexpr int kFloat16 = 10;  // ONNX TensorProto.FLOAT16
constexpr int kUint32 = 12;   // ONNX TensorProto.UINT32
constexpr size_t kMaxRank = 8;

// X, values and meta: rank (at most kMaxRank), dims and element type.
OrtStatus* shape_of(const OrtApi* api, const OrtValue* v, int64_t* dims, size_t* rank, int* type) {
    OrtStatus* st = sk_ort_shape(api, v, dims, kMaxRank, rank);
    if (!st && *rank > kMaxRank) st = sk_ort_status(api, "Sp24MatMul: rank %zu above %zu", *rank, kMaxRank);
    if (st) return st;
    OrtTensorTypeAndShapeInfo* ti = nullptr;
    st = SK_ORT(api, GetTensorTypeAndShape)(v, &ti);
    if (!st) st = SK_ORT(api, GetTensorElementType)(ti, type);
    SK_ORT(api, ReleaseTensorTypeAndShapeInfo)(ti);
    return st;
}

struct Kernel {
    const OrtApi* api;
    int64_t k, n;
};

OrtStatus* SK_ORT_CALL create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** out) {
    int64_t k = 0, n = 0;
    OrtStatus* st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, "K", &k);
    if (!st) st = SK_ORT(api, KernelInfoGetAttribute_int64)(info, "N", &n);
    if (st) return st;
    if (k <= 0 || k % 64 || n <= 0) return sk_ort_status(api, "Sp24MatMul: K=%lld must be a positive multiple of 64, N=%lld positive",
                                                  (long long)k, (long long)n);
    *out = new Kernel{api, k, n};
    return nullptr;
}

OrtStatus* SK_ORT_CALL compute(void* self, OrtKernelContext* ctx) {
    const Kernel* kernel = static_cast<const Kernel*>(self);
    const OrtApi* api = kernel->api;
    const OrtValue* in[3] = {nullptr, nullptr, nullptr};
    for (size_t i = 0; i < 3; ++i)
        if (OrtStatus* st = SK_ORT(api, KernelContext_GetInput)(ctx, i, &in[i])) return st;
    int64_t dims[3][kMaxRank];
    size_t rank[3];
    int type[3];
    for (int i = 0; i < 3; ++i)
        if (OrtStatus* st = shape_of(api, in[i], dims[i], &rank[i], &type[i])) return st;
    const int64_t k = kernel->k, n = kernel->n, mt = (n + 15) / 16;
    if (type[0] != kFloat16 || type[1] != kUint32 || type[2] != kUint32)
        return sk_ort_status(api, "Sp24MatMul: X must be float16, values and meta uint32");
    if (rank[0] < 1 || dims[0][rank[0] - 1] != k) return sk_ort_status(api, "Sp24MatMul: X's last dimension must be K=%lld", (long long)k);
    if (rank[1] != 4 || dims[1][0] != mt || dims[1][1] != k / 32 || dims[1][2] != 32 || dims[1][3] != 4 || rank[2] != 3 ||
        dims[2][0] != mt || dims[2][1] != k / 64 || dims[2][2] != 32)
        return sk_ort_status(api, "Sp24MatMul: packed weight shapes do not match K=%lld, N=%lld (kernels/packing_sparse_tc.py)",
                      (long long)k, (long long)n);
    int64_t rows = 1;
    int64_t out_dims[kMaxRank];
    for (size_t i = 0; i + 1 < rank[0]; ++i) rows *= (out_dims[i] = dims[0][i]);
    out_dims[rank[0] - 1] = n;
    OrtValue* y = nullptr;
    if (OrtStatus* st = SK_ORT(api, KernelContext_GetOutput)(ctx, 0, out_dims, rank[0], &y)) return st;
    if (rows == 0) return nullptr;
    void *px = nullptr, *pv = nullptr, *pm = nullptr, *py = nullptr;
    OrtStatus* st = SK_ORT(api, GetTensorMutableData)(const_cast<OrtValue*>(in[0]), &px);
    if (!st) st = SK_ORT(api, GetTensorMutableData)(const_cast<OrtValue*>(in[1]), &pv);
    if (!st) st = SK_ORT(api, GetTensorMutableData)(const_cast<OrtValue*>(in[2]), &pm);
    if (!st) st = SK_ORT(api, GetTensorMutableData)(y, &py);
    if (st) return st;
    void* stream = nullptr;
    auto get_stream = reinterpret_cast<GetGPUComputeStreamFn>(
        reinterpret_cast<const sk_ort_any_fn*>(static_cast<const void*>(api))[kGetGPUComputeStream]);
    if ((st = get_stream(ctx, &stream))) return st;
    const int rc = sk_cuda_sp24_matmul(0, pv, pm, px, py, static_cast<int>(n), static_cast<int>(k), static_cast<int>(rows), stream);
    if (rc != 0) return sk_ort_status(api, "Sp24MatMul: CUDA error %d (buffers must be 16-byte aligned)", rc);
    return nullptr;
}

void SK_ORT_CALL destroy(void* self) { delete static_cast<Kernel*>(self); }
const char* SK_ORT_CALL name(const OrtCustomOp*) { return "Sp24MatMul"; }
const char* SK_ORT_CALL provider(const OrtCustomOp*) { return "CUDAExecutionProvider"; }
int SK_ORT_CALL input_type(const OrtCustomOp*, size_t i) { return i == 0 ? kFloat16 : kUint32; }
size_t SK_ORT_CALL input_count(const OrtCustomOp*) { return 3; }
int SK_ORT_CALL output_type(const OrtCustomOp*, size_t) { return kFloat16; }
size_t SK_ORT_CALL output_count(const OrtCustomOp*) { return 1; }
int SK_ORT_CALL required(const OrtCustomOp*, size_t) { return SK_ORT_INPUT_OUTPUT_REQUIRED; }
int SK_ORT_CALL mem_default(const OrtCustomOp*, size_t) { return SK_ORT_MEM_TYPE_DEFAULT; }  // GPU memory on the CUDA EP
int SK_ORT_CALL one(const OrtCustomOp*) { return 1; }

OrtCustomOp make_op() {
    OrtCustomOp op;
    memset(&op, 0, sizeof op);
    op.version = SK_ORT_API_VERSION;
    op.GetName = name;
    op.GetExecutionProviderType = provider;
    op.GetInputType = input_type;
    op.GetInputTypeCount = input_count;
    op.GetOutputType = output_type;
    op.GetOutputTypeCount = output_count;
    op.KernelDestroy = destroy;
    op.GetInputCharacteristic = required;
    op.GetOutputCharacteristic = required;
    op.GetInputMemoryType = mem_default;
    op.GetVariadicInputMinArity = one;
    op.GetVariadicInputHomogeneity = one;
    op.GetVariadicOutputMinArity = one;
    op.GetVariadicOutputHomogeneity = one;
    op.CreateKernelV2 = create_kernel;  // CreateKernel/KernelCompute NULL: ORT >= 1.16 calls the V2 ones
    op.KernelComputeV2 = compute;
    return op;
}

OrtCustomOp g_op = make_op();
OrtCustomOpDomain* g_domain = nullptr;  // kept for the process's life (ORT needs it to outlive sessions)

}  // namespace

extern "C" __attribute__((visibility("default"))) const char* sparsec_cuda_ort_info(void) {
    return "sparsec-cuda-ort ops-abi=1 ort-api=16 domain=com.sparsec.cuda op=Sp24MatMul provider=CUDAExecutionProvider";
}

extern "C" __attribute__((visibility("default"))) OrtStatus* SK_ORT_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           const OrtApiBase* base) {
    const OrtApi* api = base->GetApi(SK_ORT_API_VERSION);
    if (!api) {
        const OrtApi* v1 = base->GetApi(1);
        if (v1) return sk_ort_status(v1, "sparsec CUDA ops need ONNX Runtime >= 1.16; this runtime is %s", base->GetVersionString());
        return nullptr;
    }
    static int once = 0;  // ORT serializes session creation per options; a second registration reuses the domain
    if (!once) {
        if (OrtStatus* st = SK_ORT(api, CreateCustomOpDomain)("com.sparsec.cuda", &g_domain)) return st;
        if (OrtStatus* st = SK_ORT(api, CustomOpDomain_Add)(g_domain, &g_op)) return st;
        once = 1;
    }
    return SK_ORT(api, AddCustomOpDomain)(options, g_domain);
}
