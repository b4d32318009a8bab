/* path.h: probability paths x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1] (t = 1 noise, t = 0 data),
 * and the conversions among the network parameterizations (THEORY.md §2).
 *
 *   rectified flow : alpha = 1 - t, sigma = t; native output velocity v = eps - x0
 *   VP diffusion   : alpha = sqrt(abar(t)), sigma = sqrt(1 - abar(t)); native output eps
 *       "linear"       continuous VP-SDE schedule, beta(t) = beta_min + t (beta_max - beta_min),
 *                      log abar = -(beta_min t + (beta_max - beta_min) t^2 / 2)  (Song et al. 2021)
 *       "cosine"       abar = f(t)/f(0), f(t) = cos^2(pi/2 (0.999 t + s)/(1 + s)), s = 0.008
 *                      (Nichol & Dhariwal 2021; t scaled by 0.999 so that abar(1) > 0)
 *       "discrete"     a DDPM table abar[k], k = 0..T-1 (e.g. SD1.5's scaled_linear), at t = k/T,
 *                      log-linear between table points; abar(0) = abar[0] as in diffusers.
 *
 * Schedules are evaluated in double precision for both real types, so float32 and float64 runs see
 * the same coefficients.
 */
#ifndef RSM_PATH_H
#define RSM_PATH_H

#include <stdint.h>

#include "common.h"
#include "real_api.h"
#include "status.h"

typedef enum rsm_path_kind { RSM_PATH_FLOW = 0, RSM_PATH_VP = 1 } rsm_path_kind;
typedef enum rsm_vp_schedule {
    RSM_VP_LINEAR = 0,
    RSM_VP_COSINE = 1,
    RSM_VP_DISCRETE = 2
} rsm_vp_schedule;

/* The parameterizations a network output (or a target) can be expressed in. */
typedef enum rsm_param {
    RSM_PARAM_EPS = 0,      /* noise prediction eps_hat */
    RSM_PARAM_VELOCITY = 1, /* d x_t / dt = alpha' x0 + sigma' eps */
    RSM_PARAM_X0 = 2,       /* Tweedie x0_hat = E[x0 | x_t] */
    RSM_PARAM_SCORE = 3     /* grad log p_t(x_t) = -eps_hat / sigma */
} rsm_param;

typedef struct rsm_path {
    rsm_path_kind kind;
    rsm_vp_schedule schedule;
    double beta_min, beta_max; /* linear: 0.1, 20 */
    double cosine_s;           /* cosine: 0.008 */
    int64_t num_steps;         /* discrete: table length T */
    double *log_alpha_bar;     /* discrete: [T], owned */
} rsm_path;

/* Coefficients of the path at one time. */
typedef struct rsm_path_coef {
    double alpha, sigma;   /* x_t = alpha x0 + sigma eps */
    double dalpha, dsigma; /* time derivatives */
    double alpha_bar;      /* alpha^2 */
} rsm_path_coef;

rsm_status rsm_path_init_flow(rsm_path *path);
rsm_status rsm_path_init_vp(rsm_path *path, rsm_vp_schedule schedule, double beta_min,
                            double beta_max);
/* A discrete table from its betas (`betas[T]`, each in (0, 1)). */
rsm_status rsm_path_init_vp_discrete(rsm_path *path, int64_t num_steps, const double *betas);
void rsm_path_free(rsm_path *path);

rsm_status rsm_path_check_time(const rsm_path *path, double t);
rsm_path_coef rsm_path_coef_at(const rsm_path *path, double t);
rsm_param rsm_path_native_param(const rsm_path *path);

/* Linear maps from (x_t, u) to x0_hat and eps_hat for an output u in parameterization `param`:
 *     x0_hat = x0_x x + x0_u u,    eps_hat = eps_x x + eps_u u.
 * Everything else (velocity, score) follows from x0_hat and eps_hat. */
typedef struct rsm_param_map {
    double x0_x, x0_u, eps_x, eps_u;
} rsm_param_map;

rsm_param_map rsm_param_map_at(rsm_param param, rsm_path_coef c);

/* out = to_param expressed through (x, x0_hat, eps_hat). */
static inline RSM_HOST_DEVICE double
rsm_param_from_x0_eps(rsm_param to, rsm_path_coef c, double x0, double eps)
{
    switch (to) {
    case RSM_PARAM_EPS: return eps;
    case RSM_PARAM_X0: return x0;
    case RSM_PARAM_VELOCITY: return c.dalpha * x0 + c.dsigma * eps;
    case RSM_PARAM_SCORE: return -eps / c.sigma;
    }
    return 0.0;
}

/* x_t = alpha x0 + sigma eps, one element in double (pretraining's noised input). */
static inline RSM_HOST_DEVICE double
rsm_path_noise_elem(rsm_path_coef c, double x0, double eps)
{
    return c.alpha * x0 + c.sigma * eps;
}

/* One element of a conversion: the prediction u (parameterization of map m) at state x, as `to`. */
static inline RSM_HOST_DEVICE double
rsm_param_convert_elem(rsm_param to, rsm_path_coef c, rsm_param_map m, double x, double u)
{
    double x0 = m.x0_x * x + m.x0_u * u;
    double eps = m.eps_x * x + m.eps_u * u;
    return rsm_param_from_x0_eps(to, c, x0, eps);
}

/* Conversions of whole arrays (csrc/path_real.c), n rows of `dim` values with per-row times t[n]:
 * rsm_path_convert_f32/_f64 (out = the `to` parameterization of the prediction given as `from`;
 * in place is allowed) and rsm_path_noise_f32/_f64 (x_t = alpha(t) x0 + sigma(t) eps), declared
 * by real_api.h's list. */
RSM_DECLARE_REAL_API(RSM_API_PATH)

#endif /* RSM_PATH_H */
