// 2:4 sparse tensor-core kernels: Y[batch, C] = X[batch, K] @ W[K, C], W packed by
// kernels/packing_sparse_tc.py (values uint32 [MT, KT, 32, 4], meta uint32 [MT, KT/2, 32]).
//
// The MMA computes Y^T = A @ X^T with A = W^T (output channels are MMA rows, K the sparse
// reduction axis) and B = X^T, whose "col" layout is X row-major: no transpose anywhere.
//
// - sp24_gemm: batch >= 16. Block tile 64 channels x 128 batch rows x 64 K, 4 warps (2x2),
//   warp tile 32 x 64. X is staged in shared memory with cp.async (double buffered) and read
//   with ldmatrix; A and its metadata are pre-shuffled per lane, so each warp reads them from
//   global memory with one coalesced 16-byte load per lane per MMA tile (no shared memory).
// - sp24_gemv: batch <= 8, weight streaming. One block of 4 warps per 16 output channels; the
//   warps split K and reduce through shared memory. The batch is the MMA's N=8 (rows past
//   the batch are zeros); the kernel's time is the packed weight read once.
//
// Both need K % 64 == 0 (one metadata register covers two 32-wide K tiles; the first uses
// sparsity selector 0, the second selector 1) and 16-byte aligned buffers.
#include <cuda_runtime.h>

#include "sp24_mma.cuh"

namespace sk_cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

// ---------------------------------------------------------------- GEMV (batch <= 8)

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sp24_gemv_kernel(const uint4* __restrict__ vals, const uint32_t* __restrict__ meta,
                     const uint16_t* __restrict__ x, T* __restrict__ y, int rows, int k, int batch) {
    const int mt = blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int kt_count = k / 32, pairs = kt_count / 2;
    const uint4* v = vals + static_cast<size_t>(mt) * kt_count * 32 + lane;
    const uint32_t* e = meta + static_cast<size_t>(mt) * pairs * 32 + lane;
    const bool has_row = g < batch;  // lane's B column (batch row) exists
    const uint16_t* xr = x + static_cast<size_t>(has_row ? g : 0) * k + 2 * t;

    float d[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 2
    for (int p = warp; p < pairs; p += kWarps) {
        // Weights are read exactly once: streaming loads keep them from evicting X in L1/L2.
        const uint32_t ew = __ldcs(e + static_cast<size_t>(p) * 32);
        const uint4 a0 = __ldcs(v + static_cast<size_t>(2 * p) * 32);
        const uint4 a1 = __ldcs(v + static_cast<size_t>(2 * p + 1) * 32);
        uint32_t b0[4], b1[4];
        const uint16_t* xk = xr + p * 64;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            b0[j] = has_row ? __ldg(reinterpret_cast<const uint32_t*>(xk + 8 * j)) : 0u;
            b1[j] = has_row ? __ldg(reinterpret_cast<const uint32_t*>(xk + 32 + 8 * j)) : 0u;
        }
        MmaSp<T>::template run<0>(d, a0, b0, ew);
        MmaSp<T>::template run<1>(d, a1, b1, ew);
    }

    __shared__ float partial[kWarps][4][32];
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[warp][i][lane] = d[i];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) s += partial[w][i][lane];
        // D element i: channel g + 8*(i>>1), batch column 2t + (i&1)
        const int row = mt * 16 + g + 8 * (i >> 1);
        const int col = 2 * t + (i & 1);
        if (row < rows && col < batch) y[static_cast<size_t>(col) * rows + row] = from_float<T>(s);
    }
}

// ---------------------------------------------------------------- GEMM (batch >= 16)

constexpr int kBlockM = 64;   // output channels per block (4 row tiles)
constexpr int kBlockN = 128;  // batch rows per block
constexpr int kBlockK = 64;   // K per stage (two MMA K tiles, one metadata register)
constexpr int kPad = 8;       // halves of padding per smem row: conflict-free ldmatrix
constexpr int kRowHalves = kBlockK + kPad;

struct AStep {  // a warp's A operand for one 64-wide K step: 2 row tiles x 2 K tiles
    uint4 a[2][2];
    uint32_t e[2];
};

__device__ __forceinline__ void load_a(AStep& s, const uint4* v, const uint32_t* e, int p,
                                       int kt_count, int pairs, bool valid0, bool valid1) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const bool ok = i == 0 ? valid0 : valid1;
        const uint4* vi = v + static_cast<size_t>(i) * kt_count * 32;
        const uint32_t* ei = e + static_cast<size_t>(i) * pairs * 32;
        s.a[i][0] = ok ? __ldg(vi + static_cast<size_t>(2 * p) * 32) : make_uint4(0, 0, 0, 0);
        s.a[i][1] = ok ? __ldg(vi + static_cast<size_t>(2 * p + 1) * 32) : make_uint4(0, 0, 0, 0);
        // 0x44444444 (positions 0,1 everywhere) is valid metadata for an all-zero tile.
        s.e[i] = ok ? __ldg(ei + static_cast<size_t>(p) * 32) : 0x44444444u;
    }
}

__device__ __forceinline__ void load_x_stage(uint16_t (*xs)[kRowHalves], const uint16_t* x, int n0,
                                             int p, int k, int batch) {
    // 128 rows x 64 halves = 1024 chunks of 16 bytes, 8 per thread.
#pragma unroll
    for (int c = 0; c < 8; ++c) {
        const int chunk = threadIdx.x + c * kThreads;
        const int r = chunk / 8, col = (chunk % 8) * 8;
        const int n = n0 + r;
        const bool ok = n < batch;
        const uint16_t* src = x + static_cast<size_t>(ok ? n : 0) * k + p * kBlockK + col;
        cp_async_16(&xs[r][col], src, ok ? 16 : 0);
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sp24_gemm_kernel(const uint4* __restrict__ vals, const uint32_t* __restrict__ meta,
                     const uint16_t* __restrict__ x, T* __restrict__ y, int rows, int k, int batch) {
    __shared__ __align__(16) uint16_t xs[2][kBlockN][kRowHalves];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, t = lane & 3;
    const int warp_m = warp / 2, warp_n = warp % 2;
    const int n0 = blockIdx.x * kBlockN;
    const int mt0 = blockIdx.y * (kBlockM / 16) + warp_m * 2;  // this warp's first row tile
    const int mt_count = (rows + 15) / 16;
    const int kt_count = k / 32, pairs = kt_count / 2;
    const bool valid0 = mt0 < mt_count, valid1 = mt0 + 1 < mt_count;
    const uint4* v = vals + static_cast<size_t>(mt0) * kt_count * 32 + lane;
    const uint32_t* e = meta + static_cast<size_t>(mt0) * pairs * 32 + lane;

    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

    AStep cur, nxt;
    load_x_stage(xs[0], x, n0, 0, k, batch);
    cp_async_commit();
    load_a(cur, v, e, 0, kt_count, pairs, valid0, valid1);

    for (int p = 0; p < pairs; ++p) {
        const bool more = p + 1 < pairs;
        if (more) {
            load_x_stage(xs[(p + 1) & 1], x, n0, p + 1, k, batch);
            cp_async_commit();
            load_a(nxt, v, e, p + 1, kt_count, pairs, valid0, valid1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        uint16_t(*xt)[kRowHalves] = xs[p & 1];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            // B for batch rows n..n+7 of this warp: matrices at K offsets 0, 8, 16, 24 of each tile.
            const int nrow = warp_n * 64 + j * 8 + (lane % 8);
            uint32_t b0[4], b1[4];
            ldmatrix_x4(b0, &xt[nrow][8 * (lane / 8)]);
            ldmatrix_x4(b1, &xt[nrow][32 + 8 * (lane / 8)]);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                MmaSp<T>::template run<0>(acc[i][j], cur.a[i][0], b0, cur.e[i]);
                MmaSp<T>::template run<1>(acc[i][j], cur.a[i][1], b1, cur.e[i]);
            }
        }
        __syncthreads();  // the next iteration's cp.async overwrites this stage
        if (more) cur = nxt;
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int row = (mt0 + i) * 16 + g + 8 * (r >> 1);
                const int col = n0 + warp_n * 64 + j * 8 + 2 * t + (r & 1);
                if (row < rows && col < batch)
                    y[static_cast<size_t>(col) * rows + row] = from_float<T>(acc[i][j][r]);
            }
}

template <typename T>
int launch(const void* vals, const void* meta, const void* x, void* y, int rows, int k, int batch,
           cudaStream_t stream) {
    const auto* v = static_cast<const uint4*>(vals);
    const auto* e = static_cast<const uint32_t*>(meta);
    const auto* xb = static_cast<const uint16_t*>(x);
    auto* yo = static_cast<T*>(y);
    const int mt_count = (rows + 15) / 16;
    if (batch <= 8) {
        sp24_gemv_kernel<T><<<mt_count, kThreads, 0, stream>>>(v, e, xb, yo, rows, k, batch);
    } else {
        const dim3 grid((batch + kBlockN - 1) / kBlockN, (mt_count + 3) / 4);
        sp24_gemm_kernel<T><<<grid, kThreads, 0, stream>>>(v, e, xb, yo, rows, k, batch);
    }
    return static_cast<int>(cudaGetLastError());
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace
}  // namespace sk_cuda

extern "C" {

// dtype: 0 = fp16, 1 = bf16. x: [batch, k] of dtype, y: [batch, rows] of dtype.
// Returns 0 or a cudaError_t value (cudaErrorInvalidValue for bad shapes or alignment).
int sk_cuda_sp24_matmul(int dtype, const void* vals, const void* meta, const void* x, void* y,
                        int rows, int k, int batch, void* stream) {
    using namespace sk_cuda;
    if (rows <= 0 || batch <= 0 || k <= 0 || k % 64 != 0 || (dtype != 0 && dtype != 1) ||
        !aligned16(vals) || !aligned16(meta) || !aligned16(x) || !aligned16(y))
        return static_cast<int>(cudaErrorInvalidValue);
    auto s = static_cast<cudaStream_t>(stream);
    return dtype == 0 ? launch<__half>(vals, meta, x, y, rows, k, batch, s)
                      : launch<__nv_bfloat16>(vals, meta, x, y, rows, k, batch, s);
}

// Number of rows handled by the GEMV path (the caller's benchmark labels).
int sk_cuda_sp24_gemv_max_batch(void) { return 8; }
}
