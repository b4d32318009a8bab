/* pretrain.cu: the pretraining batch and the MSE cotangent on the device (csrc/train/
 * pretrain_real.c): the same Philox noise stream, the same per-element path formulas (path.h). */
#include "common.cuh"

#include "path.h"
#include "ops/philox.h"

namespace {

template <typename real>
__global__ void
batch_kernel(int64_t B, int64_t D, int64_t C, const real *data, const real *cond_data,
             const int64_t *index, const rsm_path_coef *coefs, int target_param, uint64_t seed,
             uint64_t noise_stream, real *xt, real *target, real *cond)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < B * D;
         k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = k / D, d = k % D;
        /* the CPU rounds the noise to real first */
        const double e = (double)(real)rsm_philox_normal_at(seed, noise_stream, (uint64_t)k);
        const double x0 = (double)data[index[i] * D + d];
        const rsm_path_coef c = coefs[i];
        xt[k] = (real)rsm_path_noise_elem(c, x0, e);
        target[k] = (real)rsm_param_from_x0_eps((rsm_param)target_param, c, x0, e);
    }
    if (C > 0) {
        for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < B * C;
             k += (int64_t)gridDim.x * blockDim.x)
            cond[k] = cond_data[index[k / C] * C + k % C];
    }
}

/* Per block: pred <- scale (pred - target) and a partial sum of squares in double; the partials
 * are summed in a fixed order by the second kernel (deterministic). */
template <typename real>
__global__ void
mse_kernel(int64_t n, real scale, real *pred, const real *target, double *partial)
{
    double acc = 0.0;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x) {
        real diff = pred[k] - target[k];
        acc += (double)diff * (double)diff;
        pred[k] = scale * diff;
    }
    const double sum = rsm_cuda::block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void
sum_kernel(int n, const double *partial, double *out)
{
    const double sum = rsm_cuda::sum_partials(n, partial);
    if (threadIdx.x == 0) out[0] = sum;
}

}  // namespace

using namespace rsm_cuda;

extern "C" int
rsm_cuda_pretrain_batch(int dtype, int64_t B, int64_t D, int64_t C, const void *data,
                        const void *cond_data, const int64_t *index, const void *coefs,
                        int target_param, uint64_t seed, uint64_t noise_stream, void *xt,
                        void *target, void *cond, void *stream)
{
    if (B <= 0) return 0;
    if (C > 0 && (cond_data == nullptr || cond == nullptr))
        return fail(1, "pretrain_batch: cond_data and cond are required when C > 0");
    RSM_DISPATCH_REAL(dtype, "pretrain_batch", {
        batch_kernel<real><<<grid_for(B * (D > C ? D : C)), kThreads, 0, pick_stream(stream)>>>(
            B, D, C, (const real *)data, (const real *)cond_data, index,
            (const rsm_path_coef *)coefs, target_param, seed, noise_stream, (real *)xt,
            (real *)target, (real *)cond);
    });
    return launched("pretrain_batch");
}

/* The partial sums live in the first kPartials doubles after sq_out (the caller's buffer holds
 * 1 + kPartials doubles). */
constexpr int kPartials = 256;

extern "C" int
rsm_cuda_mse_cotangent(int dtype, int64_t n, void *pred, const void *target, double *sq_out,
                       void *stream)
{
    if (n <= 0) return 0;
    cudaStream_t s = pick_stream(stream);
    unsigned blocks = grid_for(n);
    if (blocks > kPartials) blocks = kPartials;
    RSM_DISPATCH_REAL(dtype, "mse_cotangent", {
        mse_kernel<real><<<blocks, kThreads, 0, s>>>(n, (real)(2.0 / (double)n), (real *)pred,
                                                     (const real *)target, sq_out + 1);
    });
    if (int rc = launched("mse_cotangent")) return rc;
    sum_kernel<<<1, kThreads, 0, s>>>((int)blocks, sq_out + 1, sq_out);
    return launched("mse_sum");
}
