/* path.c: schedules and coefficients of the probability paths (see path.h). */
#include "path.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

rsm_status
rsm_path_init_flow(rsm_path *path)
{
    memset(path, 0, sizeof(*path));
    path->kind = RSM_PATH_FLOW;
    return RSM_OK;
}

rsm_status
rsm_path_init_vp(rsm_path *path, rsm_vp_schedule schedule, double beta_min, double beta_max)
{
    memset(path, 0, sizeof(*path));
    path->kind = RSM_PATH_VP;
    path->schedule = schedule;
    if (schedule == RSM_VP_LINEAR) {
        RSM_CHECK(beta_min > 0 && beta_max > beta_min && isfinite(beta_max), RSM_ERR_VALUE,
                  "linear VP schedule needs 0 < beta_min < beta_max, got beta_min=%g, beta_max=%g",
                  beta_min, beta_max);
        path->beta_min = beta_min;
        path->beta_max = beta_max;
    } else if (schedule == RSM_VP_COSINE) {
        path->cosine_s = 0.008;
    } else {
        return rsm_fail(RSM_ERR_VALUE, "use rsm_path_init_vp_discrete for discrete schedules");
    }
    return RSM_OK;
}

rsm_status
rsm_path_init_vp_discrete(rsm_path *path, int64_t num_steps, const double *betas)
{
    memset(path, 0, sizeof(*path));
    RSM_CHECK(num_steps >= 2, RSM_ERR_VALUE, "a discrete schedule needs >= 2 steps, got %lld",
              (long long)num_steps);
    double *table = (double *)malloc((size_t)num_steps * sizeof(double));
    RSM_CHECK(table != NULL, RSM_ERR_MEMORY, "out of memory for a %lld-step schedule",
              (long long)num_steps);
    double log_abar = 0.0;
    for (int64_t k = 0; k < num_steps; k++) {
        if (!(betas[k] > 0 && betas[k] < 1)) {
            free(table);
            return rsm_fail(RSM_ERR_VALUE, "betas[%lld]=%g is outside (0, 1)", (long long)k,
                            betas[k]);
        }
        log_abar += log1p(-betas[k]);
        table[k] = log_abar;
    }
    path->kind = RSM_PATH_VP;
    path->schedule = RSM_VP_DISCRETE;
    path->num_steps = num_steps;
    path->log_alpha_bar = table;
    return RSM_OK;
}

void
rsm_path_free(rsm_path *path)
{
    free(path->log_alpha_bar);
    path->log_alpha_bar = NULL;
}

rsm_status
rsm_path_check_time(const rsm_path *path, double t)
{
    RSM_CHECK(isfinite(t) && t >= 0.0 && t <= 1.0, RSM_ERR_VALUE,
              "time t=%g is outside [0, 1] (t = 1 is noise, t = 0 is data)", t);
    return RSM_OK;
}

rsm_param
rsm_path_native_param(const rsm_path *path)
{
    return path->kind == RSM_PATH_FLOW ? RSM_PARAM_VELOCITY : RSM_PARAM_EPS;
}

/* log abar(t) and its time derivative for the VP schedules. */
static void
rsm_vp_log_alpha_bar(const rsm_path *path, double t, double *value, double *slope)
{
    switch (path->schedule) {
    case RSM_VP_LINEAR: {
        double db = path->beta_max - path->beta_min;
        *value = -(path->beta_min * t + 0.5 * db * t * t);
        *slope = -(path->beta_min + db * t);
        return;
    }
    case RSM_VP_COSINE: {
        const double s = path->cosine_s, scale = 0.999;
        double u = 0.5 * RSM_PI * (scale * t + s) / (1.0 + s);
        double u0 = 0.5 * RSM_PI * s / (1.0 + s);
        double du = 0.5 * RSM_PI * scale / (1.0 + s);
        *value = 2.0 * log(cos(u)) - 2.0 * log(cos(u0));
        *slope = -2.0 * tan(u) * du;
        return;
    }
    case RSM_VP_DISCRETE: {
        /* t = k / T addresses table entry k; linear in log abar between entries, and the last
         * segment's slope continues to t = 1 (k = T). */
        int64_t T = path->num_steps;
        double k = t * (double)T;
        int64_t k0 = (int64_t)floor(k);
        if (k0 > T - 2) k0 = T - 2;
        if (k0 < 0) k0 = 0;
        double frac = k - (double)k0;
        double a = path->log_alpha_bar[k0], b = path->log_alpha_bar[k0 + 1];
        *value = a + frac * (b - a);
        *slope = (b - a) * (double)T;
        return;
    }
    }
    *value = 0.0;
    *slope = 0.0;
}

rsm_path_coef
rsm_path_coef_at(const rsm_path *path, double t)
{
    rsm_path_coef c;
    if (path->kind == RSM_PATH_FLOW) {
        c.alpha = 1.0 - t;
        c.sigma = t;
        c.dalpha = -1.0;
        c.dsigma = 1.0;
        c.alpha_bar = c.alpha * c.alpha;
        return c;
    }
    double log_abar, slope;
    rsm_vp_log_alpha_bar(path, t, &log_abar, &slope);
    c.alpha_bar = exp(log_abar);
    c.alpha = exp(0.5 * log_abar);
    c.sigma = sqrt(-expm1(log_abar));
    c.dalpha = 0.5 * slope * c.alpha;
    /* d sigma / dt = -(d abar / dt) / (2 sigma) = -abar * slope / (2 sigma) */
    c.dsigma = c.sigma > 0 ? -c.alpha_bar * slope / (2.0 * c.sigma) : INFINITY;
    return c;
}

rsm_param_map
rsm_param_map_at(rsm_param param, rsm_path_coef c)
{
    rsm_param_map m;
    switch (param) {
    case RSM_PARAM_EPS: /* x0 = (x - sigma eps) / alpha */
        m.eps_x = 0.0;
        m.eps_u = 1.0;
        m.x0_x = 1.0 / c.alpha;
        m.x0_u = -c.sigma / c.alpha;
        break;
    case RSM_PARAM_X0: /* eps = (x - alpha x0) / sigma */
        m.x0_x = 0.0;
        m.x0_u = 1.0;
        m.eps_x = 1.0 / c.sigma;
        m.eps_u = -c.alpha / c.sigma;
        break;
    case RSM_PARAM_SCORE: /* eps = -sigma s */
        m.eps_x = 0.0;
        m.eps_u = -c.sigma;
        m.x0_x = 1.0 / c.alpha;
        m.x0_u = c.sigma * c.sigma / c.alpha;
        break;
    case RSM_PARAM_VELOCITY:
    default: {
        /* Solve x = alpha x0 + sigma eps, v = alpha' x0 + sigma' eps for (x0, eps):
         * det = alpha sigma' - sigma alpha' (= 1 for rectified flow). */
        double det = c.alpha * c.dsigma - c.sigma * c.dalpha;
        m.x0_x = c.dsigma / det;
        m.x0_u = -c.sigma / det;
        m.eps_x = -c.dalpha / det;
        m.eps_u = c.alpha / det;
        break;
    }
    }
    return m;
}
