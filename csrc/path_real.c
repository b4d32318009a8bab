/* path_real.c: array conversions among parameterizations and the forward noising x_t
 * (template, compiled per real type; see real.h). */
#include "real.h"
#include "path.h"

rsm_status
RSM_T(path_convert)(const rsm_path *path, rsm_param from, rsm_param to, int64_t n, int64_t dim,
                    const real_t *t, const real_t *x, const real_t *u, real_t *out)
{
    for (int64_t i = 0; i < n; i++) RSM_TRY(rsm_path_check_time(path, (double)t[i]));
    _Pragma("omp parallel for schedule(static) if (n * dim > 65536)")
    for (int64_t i = 0; i < n; i++) {
        rsm_path_coef c = rsm_path_coef_at(path, (double)t[i]);
        rsm_param_map m = rsm_param_map_at(from, c);
        for (int64_t d = 0; d < dim; d++) {
            size_t k = (size_t)(i * dim + d);
            out[k] = (real_t)rsm_param_convert_elem(to, c, m, (double)x[k], (double)u[k]);
        }
    }
    return RSM_OK;
}

rsm_status
RSM_T(path_noise)(const rsm_path *path, int64_t n, int64_t dim, const real_t *t, const real_t *x0,
                  const real_t *eps, real_t *xt)
{
    for (int64_t i = 0; i < n; i++) RSM_TRY(rsm_path_check_time(path, (double)t[i]));
    for (int64_t i = 0; i < n; i++) {
        rsm_path_coef c = rsm_path_coef_at(path, (double)t[i]);
        real_t alpha = (real_t)c.alpha, sigma = (real_t)c.sigma;
        for (int64_t d = 0; d < dim; d++) {
            size_t k = (size_t)(i * dim + d);
            xt[k] = alpha * x0[k] + sigma * eps[k];
        }
    }
    return RSM_OK;
}
