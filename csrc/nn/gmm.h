/* gmm.h: an analytic "model" for data from an isotropic Gaussian mixture
 *     p_0 = sum_k w_k N(mu_k, s_k^2 I),
 * whose exact posterior predictions are known on every path x_t = alpha x0 + sigma eps:
 *     p_t = sum_k w_k N(alpha mu_k, v_k I),   v_k = alpha^2 s_k^2 + sigma^2
 *     gamma_k(x) = softmax_k(log w_k - |x - alpha mu_k|^2 / (2 v_k) - (D/2) log v_k)
 *     E[x0 | x_t]  = sum_k gamma_k (mu_k + alpha s_k^2 / v_k (x - alpha mu_k))
 *     E[eps | x_t] = sum_k gamma_k (sigma / v_k) (x - alpha mu_k)
 * (Gaussian conditioning per component). forward() returns the path's native parameterization
 * (velocity for flow, eps for VP), so samplers run on the exact optimum with no network error.
 * Used as ground truth: SDE vs ODE marginals, estimator RMSE against exact value gradients.
 */
#ifndef RSM_GMM_H
#define RSM_GMM_H

#include <stdint.h>

#include "model.h"

typedef struct rsm_gmm {
    int64_t num_components, dim;
    rsm_dtype dtype;
    double *means;   /* [K, D] */
    double *stds;    /* [K] */
    double *log_weights; /* [K], normalised */
} rsm_gmm;

rsm_status rsm_gmm_init(rsm_gmm *gmm, int64_t num_components, int64_t dim, const double *means,
                        const double *stds, const double *weights, rsm_dtype dtype);
void rsm_gmm_free(rsm_gmm *gmm);
rsm_model rsm_gmm_as_model(rsm_gmm *gmm);

/* Exact E[x0 | x_t] and E[eps | x_t] for n rows with per-row t (arrays of gmm->dtype). */
rsm_status rsm_gmm_posterior(const rsm_gmm *gmm, const rsm_path *path, int64_t n, const void *x,
                             const void *t, void *x0_hat, void *eps_hat);

#endif /* RSM_GMM_H */
