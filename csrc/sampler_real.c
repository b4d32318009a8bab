/* sampler_real.c: the sampling loop and the transition log-prob (template, see sampler.h). */
#include "real.h"
#include "sampler.h"
#include "backend.h"
#include "rng.h"

#include <string.h>

#define RSM_TRAJ RSM_T(trajectory)

/* Every array op runs through the model's backend (backend.h; NULL: the CPU), whose
 * per-element bodies (mean, next state, log-density terms) are ops/sampler_step.h's, shared with
 * the CUDA kernels. Buffers come from the backend's allocator. */

static rsm_status
RSM_T(model_forward)(const rsm_model *model, const rsm_path *path, int64_t n, const real_t *x,
                     const real_t *t, const real_t *cond, real_t *out)
{
    return model->forward(model->self, path, n, x, t, cond, out);
}

/* Write n_cur unique rows into a [N, width] slab, each repeated N / n_cur times. */
static void
RSM_T(store_rows)(const rsm_backend *be, real_t *slab, const real_t *rows, int64_t n_cur,
                  int64_t n_final, int64_t width)
{
    RSM_OP(be, repeat_rows, slab, rows, n_cur, width, n_final / n_cur);
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
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    x = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
    u = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
    x_next = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
    mean = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
    z = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
    t_buf = (real_t *)rsm_backend_alloc(be, (size_t)N, sizeof(real_t));
    c_buf = (real_t *)rsm_backend_alloc(be, (size_t)(N * (C > 0 ? C : 1)), sizeof(real_t));
    RSM_CHECK_GOTO(x && u && x_next && mean && z && t_buf && c_buf, RSM_ERR_MEMORY,
                   "cannot allocate sampler buffers for %lld rows", (long long)N);
    if (cfg->kind == RSM_SAMPLER_HEUN) {
        x_euler = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
        u2 = (real_t *)rsm_backend_alloc(be, (size_t)(N * D), sizeof(real_t));
        RSM_CHECK_GOTO(x_euler && u2, RSM_ERR_MEMORY, "cannot allocate Heun buffers");
    }

    /* x at ts[0]: the given start or the prior N(0, I) */
    if (x_init) {
        be->copy(be, x, x_init, (size_t)(n * D) * sizeof(real_t), RSM_COPY_D2D);
    } else {
        RSM_OP(be, fill_normal, cfg->seed, rsm_stream_id(RSM_STREAM_PRIOR, 0, 0),
               (uint64_t)(cfg->row_offset * D), n * D, x);
    }
    if (C > 0) be->copy(be, c_buf, cond, (size_t)(n * C) * sizeof(real_t), RSM_COPY_D2D);
    int64_t n_cur = n, next_branch = 0;
    out->nfe = 0;

    for (int64_t i = 0; i < S; i++) {
        if (out->rows) out->rows[i] = n_cur; /* distinct states at ts[i], before any split */
        /* branching: every row splits into branch_factor children before step i */
        if (next_branch < cfg->num_branch_steps && cfg->branch_steps[next_branch] == i) {
            RSM_OP(be, expand_rows, x, n_cur, D, cfg->branch_factor);
            RSM_OP(be, expand_rows, c_buf, n_cur, C, cfg->branch_factor);
            n_cur *= cfg->branch_factor;
            next_branch++;
        }
        if (out->xs) RSM_T(store_rows)(be, out->xs + i * N * D, x, n_cur, N, D);
        rsm_step_coef s = rsm_sampler_step_coef(path, cfg, i);
        RSM_OP(be, fill, t_buf, n_cur, s.t);
        RSM_TRY_GOTO(RSM_T(model_forward)(model, path, n_cur, x, t_buf, C ? c_buf : NULL, u));
        out->nfe += n_cur;

        if (s.heun) {
            /* Heun: x_e = x - dt v(x, t); x' = x - dt (v(x, t) + v(x_e, t')) / 2 */
            RSM_OP(be, heun_predict, &s, n_cur * D, x, u, x_euler);
            RSM_OP(be, fill, t_buf, n_cur, s.t_next);
            RSM_TRY_GOTO(
                RSM_T(model_forward)(model, path, n_cur, x_euler, t_buf, C ? c_buf : NULL, u2));
            out->nfe += n_cur;
            RSM_OP(be, heun_step, &s, n_cur * D, x, u, x_euler, u2, z, mean, x_next);
        } else {
            if (s.stochastic)
                RSM_OP(be, fill_normal, cfg->seed, rsm_stream_id(RSM_STREAM_STEP, (uint64_t)i, 0),
                       (uint64_t)(cfg->row_offset * (n_cur / n) * D), n_cur * D, z);
            RSM_OP(be, sampler_step, &s, n_cur * D, x, u, z, mean, x_next);
        }
        if (out->log_probs)
            RSM_OP(be, step_log_prob, &s, n_cur, D, x_next, mean, out->log_probs + i * N,
                   N / n_cur);
        if (out->means) RSM_T(store_rows)(be, out->means + i * N * D, mean, n_cur, N, D);
        if (out->noises) RSM_T(store_rows)(be, out->noises + i * N * D, z, n_cur, N, D);
        if (out->outputs) RSM_T(store_rows)(be, out->outputs + i * N * D, u, n_cur, N, D);
        if (out->stds) RSM_OP(be, fill, out->stds + i, 1, s.std);
        real_t *swap = x;
        x = x_next;
        x_next = swap;
    }
    if (out->rows) out->rows[S] = n_cur;
    if (out->xs) RSM_T(store_rows)(be, out->xs + S * N * D, x, n_cur, N, D);
    RSM_T(store_rows)(be, out->x_final, x, n_cur, N, D);
    status = be->check(be);

fail:
    rsm_backend_free(be, x);
    rsm_backend_free(be, u);
    rsm_backend_free(be, x_next);
    rsm_backend_free(be, mean);
    rsm_backend_free(be, z);
    rsm_backend_free(be, t_buf);
    rsm_backend_free(be, c_buf);
    rsm_backend_free(be, x_euler);
    rsm_backend_free(be, u2);
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
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    real_t *u = (real_t *)rsm_backend_alloc(be, (size_t)(n * D), sizeof(real_t));
    real_t *mean = (real_t *)rsm_backend_alloc(be, (size_t)(n * D), sizeof(real_t));
    real_t *t_buf = (real_t *)rsm_backend_alloc(be, (size_t)(n > 0 ? n : 1), sizeof(real_t));
    RSM_CHECK_GOTO(u && mean && t_buf, RSM_ERR_MEMORY, "cannot allocate %lld rows", (long long)n);
    RSM_OP(be, fill, t_buf, n, s.t);
    RSM_TRY_GOTO(RSM_T(model_forward)(model, path, n, x, t_buf, cond, u));
    RSM_OP(be, sampler_step, &s, n * D, x, u, NULL, mean, NULL); /* the mean only */
    RSM_OP(be, step_log_prob, &s, n, D, x_next, mean, log_prob, 1);
    if (mean_out) be->copy(be, mean_out, mean, (size_t)(n * D) * sizeof(real_t), RSM_COPY_D2D);
    if (output_out) be->copy(be, output_out, u, (size_t)(n * D) * sizeof(real_t), RSM_COPY_D2D);
    status = be->check(be);
fail:
    rsm_backend_free(be, u);
    rsm_backend_free(be, mean);
    rsm_backend_free(be, t_buf);
    return status;
}
