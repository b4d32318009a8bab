/* sampler_step.h: per-element bodies of the sampler's Gaussian step and its log-density
 * (THEORY.md §2.3), written once over real_t (real.h) and shared by the CPU loop (sampler_real.c)
 * and the CUDA kernels (kernels/sampler.cu), so the two cannot drift apart.
 *
 *   mu = A x + K u,   x' = mu + std z,
 *   log pi(x' | x) = -sum_d ((x'_d - mu_d) / std)^2 / 2 - D log std - (D / 2) log 2 pi
 *
 * The coefficients (A, K, std) are computed once per step on the host (rsm_sampler_step_coef) and
 * passed in double; the per-element arithmetic rounds them to the working precision exactly as the
 * CPU loop always has. Squared residuals are accumulated in double.
 */
// defines: rsm_step_mean_f32/_f64 rsm_step_next_f32/_f64 rsm_step_sq_f32/_f64 rsm_step_log_prob
// rsm_heun_predict_f32/_f64 rsm_heun_mean_f32/_f64 (CUDA: rsm_step_mean<real>, ...)
#ifndef RSM_OPS_SAMPLER_STEP_H
#define RSM_OPS_SAMPLER_STEP_H

#include <math.h>
#include <stdint.h>

#include "../real.h"

/* mu = A x + K u */
RSM_ELEM real_t
RSM_E(step_mean)(double A, double K, real_t x, real_t u)
{
    return (real_t)A * x + (real_t)K * u;
}

/* x' = mu + std z */
RSM_ELEM real_t
RSM_E(step_next)(real_t mean, double std, real_t z)
{
    return mean + (real_t)std * z;
}

/* One element's ((x' - mu) / std)^2, in double (the difference is taken in the working type). */
RSM_ELEM double
RSM_E(step_sq)(real_t x_next, real_t mean, double std)
{
    double z = (double)(x_next - mean) / std;
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
RSM_ELEM real_t
RSM_E(heun_predict)(double dt, double v_x, double v_u, real_t x, real_t u)
{
    return x - (real_t)dt * ((real_t)v_x * x + (real_t)v_u * u);
}

RSM_ELEM real_t
RSM_E(heun_mean)(double dt, double v_x, double v_u, double v_x_next, double v_u_next, real_t x,
                 real_t u, real_t x_euler, real_t u2)
{
    real_t v1 = (real_t)v_x * x + (real_t)v_u * u;
    real_t v2 = (real_t)v_x_next * x_euler + (real_t)v_u_next * u2;
    return x - (real_t)dt * (real_t)0.5 * (v1 + v2);
}

#endif /* RSM_OPS_SAMPLER_STEP_H */
