/* optim.cu: AdamW with global gradient-norm clipping and the EMA, on the device (csrc/optim.h,
 * optim_real.c). The norm is a two-pass reduction in double with a grid that depends only on n
 * (deterministic run to run); the update reads the norm on the device, so a step needs no host
 * round trip. The per-element update is csrc/ops/adamw.h's, instantiated for `real`. */
#include "common.cuh"

#include "ops/adamw.h"

namespace {

constexpr int kNormBlocks = 1024;

template <typename real>
__global__ void
sq_partial_kernel(int64_t n, const real *g, double *partial)
{
    double acc = 0.0;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        acc += (double)g[k] * (double)g[k];
    const double sum = rsm_cuda::block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void
norm_final_kernel(int blocks, const double *partial, double *norm)
{
    const double sum = rsm_cuda::sum_partials(blocks, partial);
    if (threadIdx.x == 0) norm[0] = sqrt(sum);
}

template <typename real>
__global__ void
adamw_kernel(int64_t n, rsm_adamw_consts<real> k, double max_grad_norm, const double *norm, real *params,
             real *grads, real *m, real *v, real *ema)
{
    const double nv = norm[0];
    if (!isfinite(nv)) return; /* the CPU refuses the step: parameters and state unchanged */
    k.clip = (real)rsm_adamw_clip_scale(max_grad_norm, nv);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        rsm_adamw_update<real>(k, params, grads, m, v, ema, i);
}

template <typename real>
rsm_adamw_consts<real>
make_consts(const double c[10])
{
    rsm_adamw_consts<real> k;
    k.clip = 1;
    k.step_size = (real)c[0];
    k.inv_sqrt_bc2 = (real)c[1];
    k.decay = (real)c[2];
    k.b1 = (real)c[3];
    k.b2 = (real)c[4];
    k.eps = (real)c[5];
    k.omb1 = (real)c[6];
    k.omb2 = (real)c[7];
    k.ema_decay = (real)c[8];
    k.one_minus_ema = (real)c[9];
    return k;
}

}  // namespace

using namespace rsm_cuda;

extern "C" int64_t
rsm_cuda_grad_norm_work(int64_t n)
{
    (void)n;
    return kNormBlocks;
}

extern "C" int
rsm_cuda_grad_norm(int dtype, int64_t n, const void *grads, double *norm_out, double *work,
                   void *stream)
{
    cudaStream_t s = pick_stream(stream);
    unsigned blocks = grid_for(n > 0 ? n : 1);
    if (blocks > kNormBlocks) blocks = kNormBlocks;
    RSM_DISPATCH_REAL(dtype, "grad_norm", {
        sq_partial_kernel<real><<<blocks, kThreads, 0, s>>>(n, (const real *)grads, work);
    });
    if (int rc = launched("grad_norm")) return rc;
    norm_final_kernel<<<1, kThreads, 0, s>>>((int)blocks, work, norm_out);
    return launched("grad_norm_final");
}

extern "C" int
rsm_cuda_adamw_update(int dtype, int64_t n, const double c[10], double max_grad_norm,
                      const double *norm, void *params, void *grads, void *m, void *v, void *ema,
                      void *stream)
{
    if (n <= 0) return 0;
    cudaStream_t s = pick_stream(stream);
    RSM_DISPATCH_REAL(dtype, "adamw_update", {
        adamw_kernel<real><<<grid_for(n), kThreads, 0, s>>>(
            n, make_consts<real>(c), max_grad_norm, norm, (real *)params, (real *)grads, (real *)m,
            (real *)v, (real *)ema);
    });
    return launched("adamw_update");
}
