/* sampler.c: validation and per-step Gaussian coefficients of the samplers (see sampler.h). */
#include "sampler.h"
#include "checked.h"

#include <math.h>

rsm_status
rsm_sampler_check(const rsm_path *path, const rsm_sampler_config *cfg)
{
    RSM_CHECK(cfg->steps >= 1, RSM_ERR_VALUE, "steps=%lld must be >= 1", (long long)cfg->steps);
    RSM_CHECK(cfg->row_offset >= 0, RSM_ERR_VALUE, "row_offset=%lld must be >= 0",
              (long long)cfg->row_offset);
    RSM_CHECK(cfg->kind >= RSM_SAMPLER_EULER && cfg->kind <= RSM_SAMPLER_SDE_CONST, RSM_ERR_VALUE,
              "unknown sampler kind %d", (int)cfg->kind);
    for (int64_t i = 0; i <= cfg->steps; i++) RSM_TRY(rsm_path_check_time(path, cfg->ts[i]));
    for (int64_t i = 0; i < cfg->steps; i++) {
        RSM_CHECK(cfg->ts[i + 1] < cfg->ts[i], RSM_ERR_VALUE,
                  "time grid must decrease strictly: ts[%lld]=%g, ts[%lld]=%g", (long long)i,
                  cfg->ts[i], (long long)(i + 1), cfg->ts[i + 1]);
    }
    if (cfg->kind == RSM_SAMPLER_SDE_CONST)
        RSM_CHECK(isfinite(cfg->noise_level) && cfg->noise_level >= 0, RSM_ERR_VALUE,
                  "noise_level=%g must be finite and >= 0", cfg->noise_level);
    if (cfg->kind == RSM_SAMPLER_SDE) {
        RSM_CHECK(isfinite(cfg->noise_level) && cfg->noise_level >= 0, RSM_ERR_VALUE,
                  "noise_level=%g must be finite and >= 0", cfg->noise_level);
        RSM_CHECK(cfg->ts[cfg->steps] < 1.0 && (cfg->steps > 1 || cfg->ts[0] < 1.0) ,
                  RSM_ERR_VALUE, "the SDE needs at least one grid point below t = 1");
    }
    if (cfg->kind == RSM_SAMPLER_DDIM) {
        RSM_CHECK(isfinite(cfg->eta) && cfg->eta >= 0 && cfg->eta <= 1, RSM_ERR_VALUE,
                  "eta=%g must be in [0, 1]", cfg->eta);
        RSM_CHECK(isfinite(cfg->pcpo_weight) && cfg->pcpo_weight >= 0, RSM_ERR_VALUE,
                  "pcpo_weight=%g must be finite and >= 0", cfg->pcpo_weight);
        /* PCPO's std needs (1 + w^2) sigma'^2 >= c1^2 (a real root): false for steps so coarse
         * that alpha grows by a large factor (e.g. 5 steps on the linear VP schedule) */
        for (int64_t i = cfg->window_begin; cfg->pcpo_weight > 0 && cfg->eta > 0 &&
                                            i < cfg->window_end; i++) {
            rsm_path_coef c = rsm_path_coef_at(path, cfg->ts[i]);
            rsm_path_coef cn = rsm_path_coef_at(path, cfg->ts[i + 1]);
            if (!(cn.alpha > 0 && c.alpha > 0 && cn.sigma > 0)) continue; /* into data: DDPM's 0 */
            double w = cfg->pcpo_weight, c1 = c.sigma * cn.alpha / c.alpha;
            double lhs = (1.0 + w * w) * cn.sigma * cn.sigma;
            RSM_CHECK(lhs >= c1 * c1, RSM_ERR_VALUE,
                      "PCPO std undefined at step %lld (t=%g -> %g): (1 + w^2) sigma'^2 = %g < "
                      "c1^2 = %g; use a finer time grid or a larger pcpo_weight",
                      (long long)i, cfg->ts[i], cfg->ts[i + 1], lhs, c1 * c1);
        }
        if (path->kind == RSM_PATH_FLOW)
            RSM_CHECK(cfg->ts[0] < 1.0 || cfg->steps >= 1, RSM_ERR_VALUE, "invalid DDIM grid");
    }
    RSM_CHECK(cfg->window_begin >= 0 && cfg->window_begin <= cfg->window_end &&
                  cfg->window_end <= cfg->steps,
              RSM_ERR_VALUE, "stochastic window [%lld, %lld) must lie within [0, steps=%lld]",
              (long long)cfg->window_begin, (long long)cfg->window_end, (long long)cfg->steps);
    if (cfg->num_branch_steps > 0) {
        RSM_CHECK(cfg->branch_factor >= 1, RSM_ERR_VALUE, "branch_factor=%lld must be >= 1",
                  (long long)cfg->branch_factor);
        for (int64_t b = 0; b < cfg->num_branch_steps; b++) {
            int64_t s = cfg->branch_steps[b];
            RSM_CHECK(s >= 0 && s < cfg->steps, RSM_ERR_VALUE,
                      "branch step %lld is outside [0, steps=%lld)", (long long)s,
                      (long long)cfg->steps);
            RSM_CHECK(b == 0 || s > cfg->branch_steps[b - 1], RSM_ERR_VALUE,
                      "branch steps must be strictly increasing (got %lld after %lld)",
                      (long long)s, (long long)cfg->branch_steps[b - 1]);
        }
    }
    return RSM_OK;
}

rsm_status
rsm_sampler_final_rows(const rsm_sampler_config *cfg, int64_t n, int64_t dim, int64_t *rows)
{
    int ok = 1;
    int64_t r = n;
    for (int64_t b = 0; b < cfg->num_branch_steps; b++) r = rsm_size_mul(r, cfg->branch_factor, &ok);
    /* the trajectory's [steps + 1, rows, dim] must be a size too */
    RSM_CHECK(rsm_size_within(rsm_size_mul3(r, dim, cfg->steps + 1, &ok), ok), RSM_ERR_VALUE,
              "n=%lld rows split by branch_factor=%lld at %lld branch_steps, of dim=%lld over "
              "%lld steps, are more than 2^%d values: n or branch_factor is too large "
              "(see csrc/checked.h)",
              (long long)n, (long long)cfg->branch_factor, (long long)cfg->num_branch_steps,
              (long long)dim, (long long)cfg->steps, RSM_MAX_ELEMS_LOG2);
    *rows = r;
    return RSM_OK;
}

/* velocity = alpha' x0_hat + sigma' eps_hat, as coefficients on (x, u) */
static void
rsm_velocity_coef(const rsm_path *path, double t, double *v_x, double *v_u)
{
    rsm_path_coef c = rsm_path_coef_at(path, t);
    rsm_param_map m = rsm_param_map_at(rsm_path_native_param(path), c);
    *v_x = c.dalpha * m.x0_x + c.dsigma * m.eps_x;
    *v_u = c.dalpha * m.x0_u + c.dsigma * m.eps_u;
    /* the flow's native output is the velocity itself: make that exact */
    if (path->kind == RSM_PATH_FLOW) {
        *v_x = 0.0;
        *v_u = 1.0;
    }
}

rsm_step_coef
rsm_sampler_step_coef(const rsm_path *path, const rsm_sampler_config *cfg, int64_t step)
{
    rsm_step_coef s = {0};
    s.t = cfg->ts[step];
    s.t_next = cfg->ts[step + 1];
    s.dt = s.t - s.t_next;
    int in_window = step >= cfg->window_begin && step < cfg->window_end;
    rsm_velocity_coef(path, s.t, &s.v_x, &s.v_u);
    /* default: Euler on the probability-flow ODE */
    s.A = 1.0 - s.dt * s.v_x;
    s.K = -s.dt * s.v_u;
    s.std = 0.0;

    switch (cfg->kind) {
    case RSM_SAMPLER_EULER: break;
    case RSM_SAMPLER_HEUN:
        rsm_velocity_coef(path, s.t_next, &s.v_x_next, &s.v_u_next);
        s.heun = isfinite(s.v_x_next) && isfinite(s.v_u_next);
        break;
    case RSM_SAMPLER_SDE:
    case RSM_SAMPLER_SDE_CONST: {
        if (!in_window) break;
        /* Flow-GRPO: sigma~ = a sqrt(t / (1 - t*)), t* = t except at t = 1 where 1 - t* uses the
         * second grid point (its t_max), so that the first step's std equals a * sqrt(dt/(1-ts[1])).
         * DanceGRPO (SDE_CONST): sigma~ = a at every t. */
        double t_star = s.t >= 1.0 ? cfg->ts[1] : s.t;
        double sde_sigma = cfg->kind == RSM_SAMPLER_SDE_CONST
                               ? cfg->noise_level
                               : cfg->noise_level * sqrt(s.t / (1.0 - t_star));
        rsm_path_coef c = rsm_path_coef_at(path, s.t);
        rsm_param_map m = rsm_param_map_at(rsm_path_native_param(path), c);
        /* mu = x - dt [v - (sigma~^2 / 2) score], score = -eps_hat / sigma */
        double half_var_over_sigma = 0.5 * sde_sigma * sde_sigma / c.sigma;
        s.A = 1.0 - s.dt * (s.v_x + half_var_over_sigma * m.eps_x);
        s.K = -s.dt * (s.v_u + half_var_over_sigma * m.eps_u);
        s.std = sde_sigma * sqrt(s.dt);
        break;
    }
    case RSM_SAMPLER_DDIM: {
        rsm_path_coef c = rsm_path_coef_at(path, s.t);
        rsm_path_coef cn = rsm_path_coef_at(path, s.t_next);
        rsm_param_map m = rsm_param_map_at(rsm_path_native_param(path), c);
        double eta = in_window ? cfg->eta : 0.0;
        double var = 0.0;
        if (eta > 0 && cn.alpha > 0 && cfg->pcpo_weight > 0 && c.alpha > 0 && cn.sigma > 0) {
            /* PCPO's std (THEORY.md §6.3.6): the "+" root of (c1 + sqrt(sigma'^2 - s^2)) / s = w */
            double w = cfg->pcpo_weight;
            double c1 = c.sigma * cn.alpha / c.alpha;
            /* the discriminant is >= 0 by rsm_sampler_check */
            double disc = fmax((1.0 + w * w) * cn.sigma * cn.sigma - c1 * c1, 0.0);
            double s_pcpo = eta * (w * c1 + sqrt(disc)) / (1.0 + w * w);
            var = s_pcpo * s_pcpo;
        } else if (eta > 0 && cn.alpha > 0) {
            double ratio = (c.alpha * c.alpha) / (cn.alpha * cn.alpha);
            var = eta * eta * (cn.sigma * cn.sigma) / (c.sigma * c.sigma) * (1.0 - ratio);
            if (var < 0) var = 0;
        }
        double dir = sqrt(fmax(cn.sigma * cn.sigma - var, 0.0));
        s.A = cn.alpha * m.x0_x + dir * m.eps_x;
        s.K = cn.alpha * m.x0_u + dir * m.eps_u;
        s.std = sqrt(var);
        break;
    }
    }
    s.stochastic = s.std > 0;
    return s;
}
