/* sampler.cu: the sampler's Gaussian step fused with its log-density (csrc/sampler.h,
 * THEORY.md §2.3): one warp per row draws z from the step's Philox stream (element k = r D + d,
 * the CPU's indexing), writes mean = A x + K u, x_next = mean + std z and the noise, and reduces
 * ((x_next - mean) / std)^2 over the row for log pi(x_next | x). The per-element bodies are
 * csrc/ops/sampler_step.h's. The row sum is a warp tree in double (the CPU sums sequentially):
 * log-probs agree to rounding, not bitwise. */
#include "common.cuh"

#include "rng.h"
#include "ops/sampler_step.h"

namespace {

using rsm_cuda::kRowsPerBlock;
using rsm_cuda::kWarp;
using rsm_cuda::warp_sum;

__device__ inline float step_mean(double A, double K, float x, float u) { return rsm_step_mean_f32(A, K, x, u); }
__device__ inline double step_mean(double A, double K, double x, double u) { return rsm_step_mean_f64(A, K, x, u); }
__device__ inline float step_next(float m, double s, float z) { return rsm_step_next_f32(m, s, z); }
__device__ inline double step_next(double m, double s, double z) { return rsm_step_next_f64(m, s, z); }
__device__ inline double step_sq(float xn, float m, double s) { return rsm_step_sq_f32(xn, m, s); }
__device__ inline double step_sq(double xn, double m, double s) { return rsm_step_sq_f64(xn, m, s); }

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
            real mean = step_mean(A, K, x[k], u[k]);
            real z = 0;
            if (stochastic) {
                double zs[4];
                rsm_philox_normals4(seed, stream_id, (uint64_t)k >> 2, zs);
                z = (real)zs[k & 3];
            }
            real next = stochastic ? step_next(mean, std, z) : mean;
            if (stochastic) sq += step_sq(next, mean, std);
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
            real mean = step_mean(A, K, x[k], u[k]);
            sq += step_sq(x_next[k], mean, std);
            if (mean_out) mean_out[k] = mean;
        }
        sq = warp_sum(sq);
        if (lane == 0) log_prob[r] = (real)rsm_step_log_prob(sq, std, dim);
    }
}

__device__ inline float heun_predict(double dt, double vx, double vu, float x, float u) { return rsm_heun_predict_f32(dt, vx, vu, x, u); }
__device__ inline double heun_predict(double dt, double vx, double vu, double x, double u) { return rsm_heun_predict_f64(dt, vx, vu, x, u); }
__device__ inline float heun_mean(double dt, double a, double b, double c, double d, float x, float u, float xe, float u2) { return rsm_heun_mean_f32(dt, a, b, c, d, x, u, xe, u2); }
__device__ inline double heun_mean(double dt, double a, double b, double c, double d, double x, double u, double xe, double u2) { return rsm_heun_mean_f64(dt, a, b, c, d, x, u, xe, u2); }

template <typename real>
__global__ void
heun_predict_kernel(double dt, double vx, double vu, int64_t n, const real *x, const real *u,
                    real *xe)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        xe[k] = heun_predict(dt, vx, vu, x[k], u[k]);
}

template <typename real>
__global__ void
heun_mean_kernel(double dt, double vx, double vu, double vxn, double vun, int64_t n, const real *x,
                 const real *u, const real *xe, const real *u2, real *out)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n;
         k += (int64_t)gridDim.x * blockDim.x)
        out[k] = heun_mean(dt, vx, vu, vxn, vun, x[k], u[k], xe[k], u2[k]);
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
