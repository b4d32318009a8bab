/* reward.c: analytic toy rewards and their gradients (see reward.h). */
#include "reward.h"

#include <math.h>
#include <stdlib.h>

int64_t
rsm_reward_num_params(rsm_reward_kind kind, int64_t dim, const double *params, int64_t num_params)
{
    switch (kind) {
    case RSM_REWARD_LINEAR: return dim + 1;
    case RSM_REWARD_QUADRATIC: return dim + 1;
    case RSM_REWARD_DISTANCE: return dim;
    case RSM_REWARD_RING: return 2;
    case RSM_REWARD_GMM_LOGPDF: {
        if (num_params < 1 || !(params[0] >= 1)) return -1;
        int64_t K = (int64_t)params[0];
        return 1 + K * dim + 2 * K;
    }
    }
    return -1;
}

rsm_status
rsm_reward_eval(rsm_reward_kind kind, const double *params, int64_t num_params, int64_t n,
                int64_t dim, rsm_dtype dtype, const void *x, double *rewards, void *grad)
{
    int64_t need = rsm_reward_num_params(kind, dim, params, num_params);
    RSM_CHECK(need >= 0 && need == num_params, RSM_ERR_VALUE,
              "reward kind %d in dimension %lld needs %lld parameters, got %lld", (int)kind,
              (long long)dim, (long long)need, (long long)num_params);
    RSM_CHECK(dtype == RSM_F32 || dtype == RSM_F64, RSM_ERR_TYPE, "x must be float32 or float64");
    double *row = (double *)malloc((size_t)(2 * dim + 64) * sizeof(double));
    RSM_CHECK(row != NULL, RSM_ERR_MEMORY, "out of memory");
    double *g = row + dim;
    rsm_status status = RSM_OK;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t d = 0; d < dim; d++) row[d] = rsm_load_real(x, dtype, i * dim + d);
        double r = 0.0;
        switch (kind) {
        case RSM_REWARD_LINEAR:
            r = params[dim];
            for (int64_t d = 0; d < dim; d++) {
                r += params[d] * row[d];
                g[d] = params[d];
            }
            break;
        case RSM_REWARD_QUADRATIC: {
            double scale = params[dim];
            for (int64_t d = 0; d < dim; d++) {
                double diff = row[d] - params[d];
                r -= 0.5 * scale * diff * diff;
                g[d] = -scale * diff;
            }
            break;
        }
        case RSM_REWARD_DISTANCE: {
            double sq = 0.0;
            for (int64_t d = 0; d < dim; d++) sq += (row[d] - params[d]) * (row[d] - params[d]);
            double dist = sqrt(sq);
            r = -dist;
            /* the gradient at the point itself is set to 0 (a subgradient) */
            for (int64_t d = 0; d < dim; d++) g[d] = dist > 0 ? -(row[d] - params[d]) / dist : 0.0;
            break;
        }
        case RSM_REWARD_RING: {
            double radius = params[0], scale = params[1], sq = 0.0;
            for (int64_t d = 0; d < dim; d++) sq += row[d] * row[d];
            double norm = sqrt(sq);
            r = -scale * (norm - radius) * (norm - radius);
            for (int64_t d = 0; d < dim; d++)
                g[d] = norm > 0 ? -2.0 * scale * (norm - radius) * row[d] / norm : 0.0;
            break;
        }
        case RSM_REWARD_GMM_LOGPDF: {
            int64_t K = (int64_t)params[0];
            const double *mu = params + 1, *s = mu + K * dim, *w = s + K;
            /* log-sum-exp over components; gradient = sum_k gamma_k (mu_k - x) / s_k^2 */
            double max_logit = -INFINITY;
            double logits[64];
            RSM_CHECK_GOTO(K <= 64, RSM_ERR_VALUE, "GMM reward supports up to 64 components");
            for (int64_t k = 0; k < K; k++) {
                double sq = 0.0;
                for (int64_t d = 0; d < dim; d++) sq += (row[d] - mu[k * dim + d]) * (row[d] - mu[k * dim + d]);
                logits[k] = log(w[k]) - 0.5 * sq / (s[k] * s[k]) - (double)dim * log(s[k]) -
                            0.5 * (double)dim * log(2.0 * 3.14159265358979323846);
                if (logits[k] > max_logit) max_logit = logits[k];
            }
            double total = 0.0;
            for (int64_t k = 0; k < K; k++) total += exp(logits[k] - max_logit);
            r = max_logit + log(total);
            for (int64_t d = 0; d < dim; d++) g[d] = 0.0;
            for (int64_t k = 0; k < K; k++) {
                double gamma = exp(logits[k] - r);
                for (int64_t d = 0; d < dim; d++)
                    g[d] += gamma * (mu[k * dim + d] - row[d]) / (s[k] * s[k]);
            }
            break;
        }
        }
        rewards[i] = r;
        if (grad)
            for (int64_t d = 0; d < dim; d++) rsm_store_real(grad, dtype, i * dim + d, g[d]);
    }
fail:
    free(row);
    return status;
}
