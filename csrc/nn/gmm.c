/* gmm.c: the analytic Gaussian-mixture model (see gmm.h). Computed in double for both dtypes. */
#include "gmm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

rsm_status
rsm_gmm_init(rsm_gmm *gmm, int64_t num_components, int64_t dim, const double *means,
             const double *stds, const double *weights, rsm_dtype dtype)
{
    memset(gmm, 0, sizeof(*gmm));
    RSM_CHECK(num_components >= 1 && dim >= 1, RSM_ERR_VALUE,
              "a mixture needs >= 1 component and dim >= 1 (got K=%lld, D=%lld)",
              (long long)num_components, (long long)dim);
    RSM_CHECK(dtype == RSM_F32 || dtype == RSM_F64, RSM_ERR_TYPE, "dtype must be float32/64");
    double total = 0.0;
    for (int64_t k = 0; k < num_components; k++) {
        RSM_CHECK(isfinite(weights[k]) && weights[k] > 0, RSM_ERR_VALUE,
                  "weights[%lld]=%g must be positive", (long long)k, weights[k]);
        RSM_CHECK(isfinite(stds[k]) && stds[k] > 0, RSM_ERR_VALUE,
                  "stds[%lld]=%g must be positive", (long long)k, stds[k]);
        total += weights[k];
    }
    for (int64_t i = 0; i < num_components * dim; i++)
        RSM_CHECK(isfinite(means[i]), RSM_ERR_VALUE, "means has a non-finite entry");
    gmm->means = (double *)malloc((size_t)(num_components * dim) * sizeof(double));
    gmm->stds = (double *)malloc((size_t)num_components * sizeof(double));
    gmm->log_weights = (double *)malloc((size_t)num_components * sizeof(double));
    if (!gmm->means || !gmm->stds || !gmm->log_weights) {
        rsm_gmm_free(gmm);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate the mixture");
    }
    memcpy(gmm->means, means, (size_t)(num_components * dim) * sizeof(double));
    memcpy(gmm->stds, stds, (size_t)num_components * sizeof(double));
    for (int64_t k = 0; k < num_components; k++) gmm->log_weights[k] = log(weights[k] / total);
    gmm->num_components = num_components;
    gmm->dim = dim;
    gmm->dtype = dtype;
    return RSM_OK;
}

void
rsm_gmm_free(rsm_gmm *gmm)
{
    free(gmm->means);
    free(gmm->stds);
    free(gmm->log_weights);
    gmm->means = gmm->stds = gmm->log_weights = NULL;
}

/* One row: x0_hat[D], eps_hat[D] from x[D] at path coefficients c. */
static void
rsm_gmm_posterior_row(const rsm_gmm *gmm, rsm_path_coef c, const double *x, double *x0_hat,
                      double *eps_hat, double *logit)
{
    const int64_t K = gmm->num_components, D = gmm->dim;
    double max_logit = -INFINITY;
    for (int64_t k = 0; k < K; k++) {
        double var = c.alpha * c.alpha * gmm->stds[k] * gmm->stds[k] + c.sigma * c.sigma;
        double sq = 0.0;
        for (int64_t d = 0; d < D; d++) {
            double diff = x[d] - c.alpha * gmm->means[k * D + d];
            sq += diff * diff;
        }
        logit[k] = gmm->log_weights[k] - 0.5 * sq / var - 0.5 * (double)D * log(var);
        if (logit[k] > max_logit) max_logit = logit[k];
    }
    double norm = 0.0;
    for (int64_t k = 0; k < K; k++) {
        logit[k] = exp(logit[k] - max_logit);
        norm += logit[k];
    }
    for (int64_t d = 0; d < D; d++) x0_hat[d] = eps_hat[d] = 0.0;
    for (int64_t k = 0; k < K; k++) {
        double gamma = logit[k] / norm;
        double s2 = gmm->stds[k] * gmm->stds[k];
        double var = c.alpha * c.alpha * s2 + c.sigma * c.sigma;
        for (int64_t d = 0; d < D; d++) {
            double resid = x[d] - c.alpha * gmm->means[k * D + d];
            x0_hat[d] += gamma * (gmm->means[k * D + d] + c.alpha * s2 / var * resid);
            eps_hat[d] += gamma * (c.sigma / var) * resid;
        }
    }
}

rsm_status
rsm_gmm_posterior(const rsm_gmm *gmm, const rsm_path *path, int64_t n, const void *x,
                  const void *t, void *x0_hat, void *eps_hat)
{
    const int64_t D = gmm->dim, K = gmm->num_components;
    for (int64_t i = 0; i < n; i++)
        RSM_TRY(rsm_path_check_time(path, rsm_load_real(t, gmm->dtype, i)));
    rsm_status status = RSM_OK;
    _Pragma("omp parallel if (n > 256)")
    {
        double *row = (double *)malloc((size_t)(3 * D + K) * sizeof(double));
        if (!row) {
            _Pragma("omp atomic write")
            status = RSM_ERR_MEMORY;
        } else {
            double *xr = row, *x0r = row + D, *er = row + 2 * D, *logit = row + 3 * D;
            _Pragma("omp for schedule(static)")
            for (int64_t i = 0; i < n; i++) {
                rsm_path_coef c = rsm_path_coef_at(path, rsm_load_real(t, gmm->dtype, i));
                for (int64_t d = 0; d < D; d++) xr[d] = rsm_load_real(x, gmm->dtype, i * D + d);
                rsm_gmm_posterior_row(gmm, c, xr, x0r, er, logit);
                for (int64_t d = 0; d < D; d++) {
                    if (x0_hat) rsm_store_real(x0_hat, gmm->dtype, i * D + d, x0r[d]);
                    if (eps_hat) rsm_store_real(eps_hat, gmm->dtype, i * D + d, er[d]);
                }
            }
            free(row);
        }
    }
    if (status != RSM_OK) return rsm_fail(status, "cannot allocate mixture workspace");
    return RSM_OK;
}

static rsm_status
rsm_gmm_model_forward(void *self, const rsm_path *path, int64_t n, const void *x, const void *t,
                      const void *cond, void *out)
{
    (void)cond;
    const rsm_gmm *gmm = (const rsm_gmm *)self;
    const int64_t D = gmm->dim;
    size_t bytes = (size_t)(n * D) * rsm_dtype_size(gmm->dtype);
    void *x0_hat = rsm_malloc(bytes), *eps_hat = rsm_malloc(bytes);
    rsm_status status = RSM_OK;
    if (!x0_hat || !eps_hat) {
        status = rsm_fail(RSM_ERR_MEMORY, "cannot allocate %lld rows", (long long)n);
        goto done;
    }
    status = rsm_gmm_posterior(gmm, path, n, x, t, x0_hat, eps_hat);
    if (status != RSM_OK) goto done;
    rsm_param native = rsm_path_native_param(path);
    for (int64_t i = 0; i < n; i++) {
        rsm_path_coef c = rsm_path_coef_at(path, rsm_load_real(t, gmm->dtype, i));
        for (int64_t d = 0; d < D; d++) {
            double value = rsm_param_from_x0_eps(native, c, rsm_load_real(x0_hat, gmm->dtype, i * D + d),
                                                 rsm_load_real(eps_hat, gmm->dtype, i * D + d));
            rsm_store_real(out, gmm->dtype, i * D + d, value);
        }
    }
done:
    rsm_free(x0_hat);
    rsm_free(eps_hat);
    return status;
}

rsm_model
rsm_gmm_as_model(rsm_gmm *gmm)
{
    rsm_model model = {rsm_gmm_model_forward, gmm, gmm->dtype, gmm->dim, 0};
    return model;
}
