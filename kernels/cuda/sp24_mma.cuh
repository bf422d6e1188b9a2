// Inline-PTX wrappers for the 2:4 sparse tensor-core MMA (mma.sp, m16n8k32, fp32 accumulate).
//
// Register layouts are those of the PTX ISA (warp-level mma.sp, f16/bf16, m16n8k32); the
// offline packer (kernels/packing_sparse_tc.py) stores A and its metadata already in
// per-lane register order, and kernels/sparse_tc_emulation.py replays these layouts on CPU.
// The `::ordered_metadata` form (PTX 8.5+, sm_80+) is the one recommended for sm_90; it
// requires increasing positions inside each chunk, which the packer guarantees.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace sk_cuda {

template <typename T>
struct MmaSp;

template <>
struct MmaSp<__half> {
    template <int kSelector>
    static __device__ __forceinline__ void run(float (&d)[4], const uint4& a, const uint32_t (&b)[4],
                                               uint32_t e) {
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
              "r"(e), "n"(kSelector));
    }
};

template <>
struct MmaSp<__nv_bfloat16> {
    template <int kSelector>
    static __device__ __forceinline__ void run(float (&d)[4], const uint4& a, const uint32_t (&b)[4],
                                               uint32_t e) {
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
              "r"(e), "n"(kSelector));
    }
};

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Four 8x8 b16 matrices from shared memory; lane l supplies the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// 16-byte global->shared copy; src_bytes = 0 zero-fills (rows past the batch).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace sk_cuda
