/* elementwise.cu: Philox random numbers, activations and the EMA, one thread per element (or per
 * Philox block) in grid-stride loops. The per-element bodies are the CPU's (csrc/ops/philox.h,
 * csrc/ops/activation.h, csrc/ops/adamw.h), instantiated here for `real` (see csrc/real.h). */
#include "common.cuh"

#include "ops/philox.h"
#include "ops/activation.h"
#include "ops/adamw.h"

namespace {

/* Normals: thread b computes Philox block first + b (4 normals) and stores those inside
 * [offset, offset + n), as rsm_fill_normal_* does on the CPU. */
template <typename real>
__global__ void
fill_normal_kernel(uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n, int64_t blocks,
                   real *out)
{
    const uint64_t first = offset >> 2;
    for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < blocks;
         b += (int64_t)gridDim.x * blockDim.x) {
        uint64_t block = first + (uint64_t)b;
        double z[4];
        rsm_philox_normals4(seed, stream_id, block, z);
#pragma unroll
        for (int w = 0; w < 4; w++) {
            uint64_t index = block * 4 + (uint64_t)w;
            if (index >= offset && index - offset < (uint64_t)n) out[index - offset] = (real)z[w];
        }
    }
}

__global__ void
fill_u32_kernel(uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n, uint32_t *out)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = rsm_philox_u32_at(seed, stream_id, offset + (uint64_t)i);
    }
}

template <typename real>
__global__ void
silu_forward_kernel(int64_t n, const real *x, real *y)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = rsm_silu<real>(x[i]);
}

template <typename real>
__global__ void
silu_backward_kernel(int64_t n, const real *dy, const real *x, real *dx)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dx[i] = dy[i] * rsm_silu_grad<real>(x[i]);
}

template <typename real>
__global__ void
ema_kernel(int64_t n, real decay, real one_minus_decay, real *ema, const real *params)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        ema[i] = rsm_ema_update<real>(decay, one_minus_decay, ema[i], params[i]);
}

}  // namespace

using namespace rsm_cuda;

extern "C" int
rsm_cuda_fill_normal(int dtype, uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n,
                     void *out, void *stream)
{
    if (n <= 0) return 0;
    const int64_t blocks = (int64_t)(((offset + (uint64_t)n - 1) >> 2) - (offset >> 2)) + 1;
    RSM_DISPATCH_REAL(dtype, "fill_normal", {
        fill_normal_kernel<real><<<grid_for(blocks), kThreads, 0, pick_stream(stream)>>>(
            seed, stream_id, offset, n, blocks, (real *)out);
    });
    return launched("fill_normal");
}

extern "C" int
rsm_cuda_fill_u32(uint64_t seed, uint64_t stream_id, uint64_t offset, int64_t n, uint32_t *out,
                  void *stream)
{
    if (n <= 0) return 0;
    fill_u32_kernel<<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(seed, stream_id, offset, n,
                                                                        out);
    return launched("fill_u32");
}

extern "C" int
rsm_cuda_silu_forward(int dtype, int64_t n, const void *x, void *y, void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "silu_forward", {
        silu_forward_kernel<real><<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(
            n, (const real *)x, (real *)y);
    });
    return launched("silu_forward");
}

extern "C" int
rsm_cuda_silu_backward(int dtype, int64_t n, const void *dy, const void *x, void *dx, void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "silu_backward", {
        silu_backward_kernel<real><<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(
            n, (const real *)dy, (const real *)x, (real *)dx);
    });
    return launched("silu_backward");
}

extern "C" int
rsm_cuda_ema(int dtype, int64_t n, double decay, void *ema, const void *params, void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "ema", {
        ema_kernel<real><<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(
            n, (real)decay, (real)(1.0 - decay), (real *)ema, (const real *)params);
    });
    return launched("ema");
}
