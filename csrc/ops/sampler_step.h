/* sampler_step.h: per-element bodies of the sampler's Gaussian step and its log-density
 * (THEORY.md §2.3), shared by the CPU loop (sampler_real.c) and the CUDA kernels
 * (kernels/sampler.cu), so the two cannot drift apart.
 *
 *   mu = A x + K u,   x' = mu + std z,
 *   log pi(x' | x) = -sum_d ((x'_d - mu_d) / std)^2 / 2 - D log std - (D / 2) log 2 pi
 *
 * The coefficients (A, K, std) are computed once per step on the host (rsm_sampler_step_coef) and
 * passed in double; the per-element arithmetic rounds them to the working precision exactly as the
 * CPU loop always has. Squared residuals are accumulated in double.
 */
#ifndef RSM_OPS_SAMPLER_STEP_H
#define RSM_OPS_SAMPLER_STEP_H

#include <math.h>
#include <stdint.h>

#include "../common.h"

/* mu = A x + K u */
static inline RSM_HOST_DEVICE float
rsm_step_mean_f32(double A, double K, float x, float u)
{
    return (float)A * x + (float)K * u;
}

static inline RSM_HOST_DEVICE double
rsm_step_mean_f64(double A, double K, double x, double u)
{
    return A * x + K * u;
}

/* x' = mu + std z */
static inline RSM_HOST_DEVICE float
rsm_step_next_f32(float mean, double std, float z)
{
    return mean + (float)std * z;
}

static inline RSM_HOST_DEVICE double
rsm_step_next_f64(double mean, double std, double z)
{
    return mean + std * z;
}

/* One element's ((x' - mu) / std)^2, in double (the difference is taken in the working type). */
static inline RSM_HOST_DEVICE double
rsm_step_sq_f32(float x_next, float mean, double std)
{
    double z = (double)(x_next - mean) / std;
    return z * z;
}

static inline RSM_HOST_DEVICE double
rsm_step_sq_f64(double x_next, double mean, double std)
{
    double z = (x_next - mean) / std;
    return z * z;
}

/* log N(x'; mu, std^2 I) over `dim` values from the sum of rsm_step_sq. */
static inline RSM_HOST_DEVICE double
rsm_step_log_prob(double sum_sq, double std, int64_t dim)
{
    return -0.5 * sum_sq - (double)dim * (log(std) + 0.5 * RSM_LOG_2PI);
}

/* Heun (deterministic): velocity v = v_x x + v_u u; the Euler predictor x_e = x - dt v(x, t) and
 * the corrected mean x - dt (v(x, t) + v(x_e, t')) / 2. */
static inline RSM_HOST_DEVICE float
rsm_heun_predict_f32(double dt, double v_x, double v_u, float x, float u)
{
    return x - (float)dt * ((float)v_x * x + (float)v_u * u);
}

static inline RSM_HOST_DEVICE double
rsm_heun_predict_f64(double dt, double v_x, double v_u, double x, double u)
{
    return x - dt * (v_x * x + v_u * u);
}

static inline RSM_HOST_DEVICE float
rsm_heun_mean_f32(double dt, double v_x, double v_u, double v_x_next, double v_u_next, float x,
                  float u, float x_euler, float u2)
{
    float v1 = (float)v_x * x + (float)v_u * u;
    float v2 = (float)v_x_next * x_euler + (float)v_u_next * u2;
    return x - (float)dt * 0.5f * (v1 + v2);
}

static inline RSM_HOST_DEVICE double
rsm_heun_mean_f64(double dt, double v_x, double v_u, double v_x_next, double v_u_next, double x,
                  double u, double x_euler, double u2)
{
    double v1 = v_x * x + v_u * u;
    double v2 = v_x_next * x_euler + v_u_next * u2;
    return x - dt * 0.5 * (v1 + v2);
}

#endif /* RSM_OPS_SAMPLER_STEP_H */
