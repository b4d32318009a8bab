/* reward.h: analytic rewards for low-dimensional toys, with exact gradients (first-order methods).
 *
 *   LINEAR      r = c.x + b                                params: c[D], b
 *   QUADRATIC   r = -scale |x - m|^2 / 2                   params: m[D], scale
 *   DISTANCE    r = -|x - p|                               params: p[D]
 *   GMM_LOGPDF  r = log sum_k w_k N(x; mu_k, s_k^2 I)      params: K, then mu[K, D], s[K], w[K]
 *   RING        r = -scale (|x| - radius)^2                params: radius, scale
 * Rewards and gradients are computed in double for both real types.
 */
#ifndef RSM_REWARD_H
#define RSM_REWARD_H

#include <stdint.h>

#include "status.h"
#include "tensor.h"

typedef enum rsm_reward_kind {
    RSM_REWARD_LINEAR = 0,
    RSM_REWARD_QUADRATIC = 1,
    RSM_REWARD_DISTANCE = 2,
    RSM_REWARD_GMM_LOGPDF = 3,
    RSM_REWARD_RING = 4
} rsm_reward_kind;

/* Number of parameters a kind needs for dimension D (GMM: K must be params[0]). */
int64_t rsm_reward_num_params(rsm_reward_kind kind, int64_t dim, const double *params,
                              int64_t num_params);

/* rewards[n] and (if grad != NULL) grad[n, D] = d r / dx for x[n, D] of `dtype`. */
rsm_status rsm_reward_eval(rsm_reward_kind kind, const double *params, int64_t num_params,
                           int64_t n, int64_t dim, rsm_dtype dtype, const void *x, double *rewards,
                           void *grad);

#endif /* RSM_REWARD_H */
