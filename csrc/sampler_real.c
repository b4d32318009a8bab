/* sampler_real.c: the sampling loop and the transition log-prob (template, see sampler.h). */
#include "real.h"
#include "sampler.h"
#include "rng.h"
#include "ops/sampler_step.h"

#include <string.h>

#define RSM_TRAJ RSM_T(trajectory)

/* Per-element bodies (mean, next state, log-density terms) are RSM_T(step_mean) etc. of
 * ops/sampler_step.h, shared with the CUDA kernels. */

/* log N(x_next; mean, std^2 I) summed over D (accumulated in double). */
static double
RSM_T(gaussian_log_prob)(const real_t *x_next, const real_t *mean, double std, int64_t dim)
{
    double sq = 0.0;
    for (int64_t d = 0; d < dim; d++) sq += RSM_T(step_sq)(x_next[d], mean[d], std);
    return rsm_step_log_prob(sq, std, dim);
}

static rsm_status
RSM_T(model_forward)(const rsm_model *model, const rsm_path *path, int64_t n, const real_t *x,
                     const real_t *t, const real_t *cond, real_t *out)
{
    return model->forward(model->self, path, n, x, t, cond, out);
}

/* Split every live row into `factor` copies in place: row r -> rows r*factor .. r*factor+factor-1.
 * Rows are walked downwards so no source is overwritten before it is copied. */
static void
RSM_T(expand_rows)(real_t *rows, int64_t n, int64_t width, int64_t factor)
{
    if (width == 0) return;
    for (int64_t r = n - 1; r >= 0; r--)
        for (int64_t j = factor - 1; j >= 0; j--)
            if (r * factor + j != r)
                memcpy(rows + (r * factor + j) * width, rows + r * width,
                       (size_t)width * sizeof(real_t));
}

/* Write n_cur unique rows into a [N, width] slab, each repeated N / n_cur times. */
static void
RSM_T(store_rows)(real_t *slab, const real_t *rows, int64_t n_cur, int64_t n_final, int64_t width)
{
    int64_t repeat = n_final / n_cur;
    for (int64_t r = 0; r < n_cur; r++)
        for (int64_t k = 0; k < repeat; k++)
            memcpy(slab + (r * repeat + k) * width, rows + r * width,
                   (size_t)width * sizeof(real_t));
}

rsm_status
RSM_T(sample)(const rsm_model *model, const rsm_path *path, const rsm_sampler_config *cfg,
              int64_t n, const real_t *x_init, const real_t *cond, RSM_TRAJ *out)
{
    rsm_status status = RSM_OK;
    RSM_TRY(rsm_sampler_check(path, cfg));
    RSM_CHECK(n >= 1, RSM_ERR_VALUE, "n=%lld must be >= 1", (long long)n);
    RSM_CHECK(model->cond_dim == 0 || cond != NULL || model->cond_optional, RSM_ERR_VALUE,
              "the model is conditional (cond_dim=%lld): cond is required",
              (long long)model->cond_dim);
    const int64_t D = model->dim, C = cond ? model->cond_dim : 0, S = cfg->steps;
    int64_t N;
    RSM_TRY(rsm_sampler_final_rows(cfg, n, D, &N));
    real_t *x = NULL, *u = NULL, *x_next = NULL, *t_buf = NULL, *c_buf = NULL, *z = NULL;
    real_t *mean = NULL, *x_euler = NULL, *u2 = NULL;
    x = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
    u = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
    x_next = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
    mean = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
    z = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
    t_buf = (real_t *)rsm_malloc((size_t)N * sizeof(real_t));
    c_buf = (real_t *)rsm_malloc((size_t)(N * (C > 0 ? C : 1)) * sizeof(real_t));
    RSM_CHECK_GOTO(x && u && x_next && mean && z && t_buf && c_buf, RSM_ERR_MEMORY,
                   "cannot allocate sampler buffers for %lld rows", (long long)N);
    if (cfg->kind == RSM_SAMPLER_HEUN) {
        x_euler = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
        u2 = (real_t *)rsm_malloc((size_t)(N * D) * sizeof(real_t));
        RSM_CHECK_GOTO(x_euler && u2, RSM_ERR_MEMORY, "cannot allocate Heun buffers");
    }

    /* x at ts[0]: the given start or the prior N(0, I) */
    if (x_init) {
        memcpy(x, x_init, (size_t)(n * D) * sizeof(real_t));
    } else {
        RSM_T(fill_normal)(cfg->seed, rsm_stream_id(RSM_STREAM_PRIOR, 0, 0),
                           (uint64_t)(cfg->row_offset * D), n * D, x);
    }
    if (C > 0) memcpy(c_buf, cond, (size_t)(n * C) * sizeof(real_t));
    int64_t n_cur = n, next_branch = 0;
    out->nfe = 0;

    for (int64_t i = 0; i < S; i++) {
        if (out->rows) out->rows[i] = n_cur; /* distinct states at ts[i], before any split */
        /* branching: every row splits into branch_factor children before step i */
        if (next_branch < cfg->num_branch_steps && cfg->branch_steps[next_branch] == i) {
            RSM_T(expand_rows)(x, n_cur, D, cfg->branch_factor);
            RSM_T(expand_rows)(c_buf, n_cur, C, cfg->branch_factor);
            n_cur *= cfg->branch_factor;
            next_branch++;
        }
        if (out->xs) RSM_T(store_rows)(out->xs + i * N * D, x, n_cur, N, D);
        rsm_step_coef s = rsm_sampler_step_coef(path, cfg, i);
        for (int64_t r = 0; r < n_cur; r++) t_buf[r] = (real_t)s.t;
        RSM_TRY_GOTO(RSM_T(model_forward)(model, path, n_cur, x, t_buf, C ? c_buf : NULL, u));
        out->nfe += n_cur;

        if (s.heun) {
            /* Heun: x_e = x - dt v(x, t); x' = x - dt (v(x, t) + v(x_e, t')) / 2 */
            for (int64_t k = 0; k < n_cur * D; k++)
                x_euler[k] = RSM_T(heun_predict)(s.dt, s.v_x, s.v_u, x[k], u[k]);
            for (int64_t r = 0; r < n_cur; r++) t_buf[r] = (real_t)s.t_next;
            RSM_TRY_GOTO(
                RSM_T(model_forward)(model, path, n_cur, x_euler, t_buf, C ? c_buf : NULL, u2));
            out->nfe += n_cur;
            for (int64_t k = 0; k < n_cur * D; k++) {
                mean[k] = RSM_T(heun_mean)(s.dt, s.v_x, s.v_u, s.v_x_next, s.v_u_next, x[k], u[k],
                                           x_euler[k], u2[k]);
                x_next[k] = mean[k];
                z[k] = 0;
            }
        } else {
            if (s.stochastic)
                RSM_T(fill_normal)(cfg->seed, rsm_stream_id(RSM_STREAM_STEP, (uint64_t)i, 0),
                                   (uint64_t)(cfg->row_offset * (n_cur / n) * D), n_cur * D, z);
            for (int64_t k = 0; k < n_cur * D; k++) {
                mean[k] = RSM_T(step_mean)(s.A, s.K, x[k], u[k]);
                if (s.stochastic) {
                    x_next[k] = RSM_T(step_next)(mean[k], s.std, z[k]);
                } else {
                    x_next[k] = mean[k];
                    z[k] = 0;
                }
            }
        }
        if (out->log_probs) {
            real_t *lp = out->log_probs + i * N;
            int64_t repeat = N / n_cur;
            for (int64_t r = 0; r < n_cur; r++) {
                double value = s.stochastic ? RSM_T(gaussian_log_prob)(x_next + r * D,
                                                                       mean + r * D, s.std, D)
                                            : 0.0;
                for (int64_t k = 0; k < repeat; k++) lp[r * repeat + k] = (real_t)value;
            }
        }
        if (out->means) RSM_T(store_rows)(out->means + i * N * D, mean, n_cur, N, D);
        if (out->noises) RSM_T(store_rows)(out->noises + i * N * D, z, n_cur, N, D);
        if (out->outputs) RSM_T(store_rows)(out->outputs + i * N * D, u, n_cur, N, D);
        if (out->stds) out->stds[i] = (real_t)s.std;
        real_t *swap = x;
        x = x_next;
        x_next = swap;
    }
    if (out->rows) out->rows[S] = n_cur;
    if (out->xs) RSM_T(store_rows)(out->xs + S * N * D, x, n_cur, N, D);
    RSM_T(store_rows)(out->x_final, x, n_cur, N, D);

fail:
    rsm_free(x);
    rsm_free(u);
    rsm_free(x_next);
    rsm_free(mean);
    rsm_free(z);
    rsm_free(t_buf);
    rsm_free(c_buf);
    rsm_free(x_euler);
    rsm_free(u2);
    return status;
}

rsm_status
RSM_T(transition_log_prob)(const rsm_model *model, const rsm_path *path,
                           const rsm_sampler_config *cfg, int64_t step, int64_t n,
                           const real_t *x, const real_t *x_next, const real_t *cond,
                           real_t *log_prob, real_t *mean_out, real_t *output_out)
{
    rsm_status status = RSM_OK;
    RSM_TRY(rsm_sampler_check(path, cfg));
    RSM_CHECK(step >= 0 && step < cfg->steps, RSM_ERR_VALUE, "step=%lld is outside [0, %lld)",
              (long long)step, (long long)cfg->steps);
    RSM_CHECK(cfg->kind != RSM_SAMPLER_HEUN, RSM_ERR_VALUE,
              "Heun steps are deterministic: they have no transition density");
    RSM_CHECK(model->cond_dim == 0 || cond != NULL || model->cond_optional, RSM_ERR_VALUE,
              "the model is conditional (cond_dim=%lld): cond is required",
              (long long)model->cond_dim);
    const int64_t D = model->dim;
    rsm_step_coef s = rsm_sampler_step_coef(path, cfg, step);
    RSM_CHECK(s.stochastic, RSM_ERR_VALUE,
              "step %lld of this sampler is deterministic (std = 0): no transition density",
              (long long)step);
    real_t *u = (real_t *)rsm_malloc((size_t)(n * D) * sizeof(real_t));
    real_t *mean = (real_t *)rsm_malloc((size_t)(n * D) * sizeof(real_t));
    real_t *t_buf = (real_t *)rsm_malloc((size_t)(n > 0 ? n : 1) * sizeof(real_t));
    RSM_CHECK_GOTO(u && mean && t_buf, RSM_ERR_MEMORY, "cannot allocate %lld rows", (long long)n);
    for (int64_t r = 0; r < n; r++) t_buf[r] = (real_t)s.t;
    RSM_TRY_GOTO(RSM_T(model_forward)(model, path, n, x, t_buf, cond, u));
    for (int64_t k = 0; k < n * D; k++) mean[k] = RSM_T(step_mean)(s.A, s.K, x[k], u[k]);
    for (int64_t r = 0; r < n; r++)
        log_prob[r] = (real_t)RSM_T(gaussian_log_prob)(x_next + r * D, mean + r * D, s.std, D);
    if (mean_out) memcpy(mean_out, mean, (size_t)(n * D) * sizeof(real_t));
    if (output_out) memcpy(output_out, u, (size_t)(n * D) * sizeof(real_t));
fail:
    rsm_free(u);
    rsm_free(mean);
    rsm_free(t_buf);
    return status;
}
