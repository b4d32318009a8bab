/* sampler.cu: the sampler's Gaussian step fused with its log-density (csrc/sampler.h,
 * THEORY.md §2.3): one warp per row draws z from the step's Philox stream (element k = r D + d,
 * the CPU's indexing), writes mean = A x + K u, x_next = mean + std z and the noise, and reduces
 * ((x_next - mean) / std)^2 over the row for log pi(x_next | x). The per-element bodies are
 * csrc/ops/sampler_step.h's,
 * instantiated for `real`. The row sum is a warp tree in double (the CPU sums sequentially):
 * log-probs agree to rounding, not bitwise. */
#include "common.cuh"

#include "ops/philox.h"
#include "ops/sampler_step.h"

namespace {

using rsm_cuda::kRowsPerBlock;
using rsm_cuda::kWarp;
using rsm_cuda::warp_sum;


template <typename real>
__global__ void
step_kernel(double A, double K, double std, int stochastic, uint64_t seed, uint64_t stream_id,
            int64_t rows, int64_t dim, const real *x, const real *u, real *x_next, real *mean_out,
            real *noise_out, real *log_prob)
{
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = (int64_t)gridDim.x * kRowsPerBlock;
    for (int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / kWarp; r < rows;
         r += warps) {
        double sq = 0.0;
        for (int64_t d = lane; d < dim; d += kWarp) {
            const int64_t k = r * dim + d;
            real mean = rsm_step_mean<real>(A, K, x[k], u[k]);
            real z = 0;
            if (stochastic) {
                /* one Box-Muller pair per element (ops/philox.h), not the block's two */
                z = (real)rsm_philox_normal_at(seed, stream_id, (uint64_t)k);
            }
            real next = stochastic ? rsm_step_next<real>(mean, std, z) : mean;
            if (stochastic) sq += rsm_step_sq<real>(next, mean, std);
            x_next[k] = next;
            if (mean_out) mean_out[k] = mean;
            if (noise_out) noise_out[k] = z;
        }
        if (log_prob) {
            sq = warp_sum(sq);
            if (lane == 0) log_prob[r] = stochastic ? (real)rsm_step_log_prob(sq, std, dim) : (real)0;
        }
    }
}

template <typename real>
__global__ void
log_prob_kernel(double A, double K, double std, int64_t rows, int64_t dim, const real *x,
                const real *u, const real *x_next, real *log_prob, real *mean_out)
{
    const int lane = threadIdx.x % kWarp;
    const int64_t warps = (int64_t)gridDim.x * kRowsPerBlock;
    for (int64_t r = blockIdx.x * (int64_t)kRowsPerBlock + threadIdx.x / kWarp; r < rows;
         r += warps) {
        double sq = 0.0;
        for (int64_t d = lane; d < dim; d += kWarp) {
            const int64_t k = r * dim + d;
            real mean = rsm_step_mean<real>(A, K, x[k], u[k]);
            sq += rsm_step_sq<real>(x_next[k], mean, std);
            if (mean_out) mean_out[k] = mean;
        }
        sq = warp_sum(sq);
        if (lane == 0) log_prob[r] = (real)rsm_step_log_prob(sq, std, dim);
    }
}


template <typename real>
__global__ void
heun_predict_kernel(double dt, double vx, double vu, int64_t n, const real *x, const real *u,
                    real *xe)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        xe[k] = rsm_heun_predict<real>(dt, vx, vu, x[k], u[k]);
}

template <typename real>
__global__ void
heun_mean_kernel(double dt, double vx, double vu, double vxn, double vun, int64_t n, const real *x,
                 const real *u, const real *xe, const real *u2, real *out)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        out[k] = rsm_heun_mean<real>(dt, vx, vu, vxn, vun, x[k], u[k], xe[k], u2[k]);
}

unsigned
row_grid(int64_t rows)
{
    return rsm_cuda::grid_for(rows, kRowsPerBlock);
}

}  // namespace

using namespace rsm_cuda;

extern "C" int
rsm_cuda_sampler_step(int dtype, double A, double K, double std, int stochastic, uint64_t seed,
                      uint64_t stream_id, int64_t rows, int64_t dim, const void *x, const void *u,
                      void *x_next, void *mean, void *noise, void *log_prob, void *stream)
{
    if (rows <= 0 || dim <= 0) return 0;
    if (stochastic && !(std > 0)) return fail(1, "sampler_step: a stochastic step needs std > 0");
    RSM_DISPATCH_REAL(dtype, "sampler_step", {
        step_kernel<real><<<row_grid(rows), kThreads, 0, pick_stream(stream)>>>(
            A, K, std, stochastic, seed, stream_id, rows, dim, (const real *)x, (const real *)u,
            (real *)x_next, (real *)mean, (real *)noise, (real *)log_prob);
    });
    return launched("sampler_step");
}

extern "C" int
rsm_cuda_transition_log_prob(int dtype, double A, double K, double std, int64_t rows, int64_t dim,
                             const void *x, const void *u, const void *x_next, void *log_prob,
                             void *mean, void *stream)
{
    if (rows <= 0 || dim <= 0) return 0;
    if (!(std > 0)) return fail(1, "transition_log_prob: the step is deterministic (std = 0)");
    RSM_DISPATCH_REAL(dtype, "transition_log_prob", {
        log_prob_kernel<real><<<row_grid(rows), kThreads, 0, pick_stream(stream)>>>(
            A, K, std, rows, dim, (const real *)x, (const real *)u, (const real *)x_next,
            (real *)log_prob, (real *)mean);
    });
    return launched("transition_log_prob");
}

extern "C" int
rsm_cuda_heun_predict(int dtype, double dt, double v_x, double v_u, int64_t n, const void *x,
                      const void *u, void *x_euler, void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "heun_predict", {
        heun_predict_kernel<real><<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(
            dt, v_x, v_u, n, (const real *)x, (const real *)u, (real *)x_euler);
    });
    return launched("heun_predict");
}

extern "C" int
rsm_cuda_heun_mean(int dtype, double dt, double v_x, double v_u, double v_x_next, double v_u_next,
                   int64_t n, const void *x, const void *u, const void *x_euler, const void *u2,
                   void *x_next, void *stream)
{
    if (n <= 0) return 0;
    RSM_DISPATCH_REAL(dtype, "heun_mean", {
        heun_mean_kernel<real><<<grid_for(n), kThreads, 0, pick_stream(stream)>>>(
            dt, v_x, v_u, v_x_next, v_u_next, n, (const real *)x, (const real *)u,
            (const real *)x_euler, (const real *)u2, (real *)x_next);
    });
    return launched("heun_mean");
}
