/* rollout_real.c: the rollout engines (template, see real.h and rollout.h). */
#include "real.h"
#include "rollout.h"
#include "../backend.h"


static rsm_status
RSM_T(rollout_reward)(const rsm_reward_hook *reward, int64_t rows, int64_t dim, const real_t *x0)
{
    if (!reward || !reward->fn) return RSM_OK;
    return reward->fn(reward->ctx, rows, dim, x0);
}

rsm_status
RSM_T(rollout)(const rsm_model *model, const rsm_path *path, const rsm_sampler_config *cfg,
               int64_t n, const real_t *x_init, const real_t *cond, RSM_T(trajectory) *out,
               const rsm_reward_hook *reward)
{
    RSM_TRY(RSM_T(sample)(model, path, cfg, n, x_init, cond, out));
    int64_t rows;
    RSM_TRY(rsm_sampler_final_rows(cfg, n, model->dim, &rows));
    return RSM_T(rollout_reward)(reward, rows, model->dim, out->x_final);
}

rsm_status
RSM_T(branch_rollout)(const rsm_model *model, const rsm_path *path, const rsm_branch_config *cfg,
                      int64_t roots, const real_t *x_init, const real_t *cond,
                      RSM_T(branch_out) *out, const rsm_reward_hook *reward)
{
    rsm_status status = RSM_OK;
    RSM_TRY(rsm_branch_check(path, cfg));
    RSM_CHECK(roots >= 1, RSM_ERR_VALUE, "roots=%lld must be >= 1", (long long)roots);
    RSM_CHECK(out->root_xs && out->x_next && out->outputs && out->noises && out->log_probs &&
                  out->x0,
              RSM_ERR_VALUE, "a branch rollout needs every output buffer");
    const int64_t D = model->dim, C = cond ? model->cond_dim : 0, S = cfg->root.steps;
    int64_t k_max = 0;
    for (int64_t i = 0; i < S; i++) k_max = cfg->budget[i] > k_max ? cfg->budget[i] : k_max;
    /* sizes are checked by rsm_branch_rows: (S + 1) n_max D <= RSM_MAX_ELEMS */
    int64_t total_rows;
    RSM_TRY(rsm_branch_rows(cfg, roots, D, &total_rows));
    const int64_t n_max = roots * k_max;
    real_t *root_final = NULL, *x = NULL, *c = NULL, *xs = NULL, *outputs = NULL, *noises = NULL,
           *log_probs = NULL;
    /* buffers and copies on the model's device (backend.h) */
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    root_final = (real_t *)rsm_backend_alloc(be, (size_t)(roots * D), sizeof(real_t));
    x = (real_t *)rsm_backend_alloc(be, (size_t)(n_max * D), sizeof(real_t));
    c = (real_t *)rsm_backend_alloc(be, (size_t)(n_max * (C > 0 ? C : 1)), sizeof(real_t));
    /* the branch sampler's trajectory over the longest sub-grid (transition 0: S steps) */
    xs = (real_t *)rsm_backend_alloc(be, (size_t)((S + 1) * n_max * D), sizeof(real_t));
    outputs = (real_t *)rsm_backend_alloc(be, (size_t)(S * n_max * D), sizeof(real_t));
    noises = (real_t *)rsm_backend_alloc(be, (size_t)(S * n_max * D), sizeof(real_t));
    log_probs = (real_t *)rsm_backend_alloc(be, (size_t)(S * n_max), sizeof(real_t));
    RSM_CHECK_GOTO(root_final && x && c && xs && outputs && noises && log_probs, RSM_ERR_MEMORY,
                   "cannot allocate branch-rollout buffers for %lld rows", (long long)n_max);

    /* pass 1: the deterministic root trajectory (THEORY.md §9.2.1) */
    RSM_T(trajectory) root = {0};
    root.x_final = root_final;
    root.xs = out->root_xs;
    status = RSM_T(sample)(model, path, &cfg->root, roots, x_init, cond, &root);
    if (status != RSM_OK) goto fail;
    out->nfe = root.nfe;

    /* pass 2: per transition with k_i > 0, the root states repeated k_i times, ONE stochastic
     * step (window [0, 1) of the sub-grid ts[i..S]), then the deterministic sampler to ts[S] */
    int64_t offset = 0;
    for (int64_t i = 0; i < S; i++) {
        const int64_t k = cfg->budget[i];
        if (k == 0) continue;
        const int64_t n = roots * k;
        RSM_OP(be, repeat_rows, x, out->root_xs + i * roots * D, roots, D, k);
        if (C > 0) RSM_OP(be, repeat_rows, c, cond, roots, C, k);
        rsm_sampler_config sub = cfg->branch;
        sub.ts = cfg->branch.ts + i;
        sub.steps = S - i;
        sub.window_begin = 0;
        sub.window_end = 1;
        sub.seed = cfg->branch_seeds[i];
        sub.row_offset = cfg->root.row_offset * k; /* root j's branches: rows j k .. j k + k - 1 */
        RSM_T(trajectory) tr = {0};
        tr.x_final = out->x0 + offset * D;
        tr.xs = xs;
        tr.outputs = outputs;
        tr.noises = noises;
        tr.log_probs = log_probs;
        status = RSM_T(sample)(model, path, &sub, n, x, C > 0 ? c : NULL, &tr);
        if (status != RSM_OK) goto fail;
        /* what the loss reads of the stochastic step: step 0 of the sub-trajectory */
        be->copy(be, out->x_next + offset * D, xs + n * D, (size_t)(n * D) * sizeof(real_t),
                 RSM_COPY_D2D);
        be->copy(be, out->outputs + offset * D, outputs, (size_t)(n * D) * sizeof(real_t),
                 RSM_COPY_D2D);
        be->copy(be, out->noises + offset * D, noises, (size_t)(n * D) * sizeof(real_t),
                 RSM_COPY_D2D);
        be->copy(be, out->log_probs + offset, log_probs, (size_t)n * sizeof(real_t),
                 RSM_COPY_D2D);
        out->nfe += tr.nfe;
        offset += n;
    }
    status = be->check(be);
    if (status == RSM_OK) status = RSM_T(rollout_reward)(reward, offset, D, out->x0);
fail:
    rsm_backend_free(be, root_final);
    rsm_backend_free(be, x);
    rsm_backend_free(be, c);
    rsm_backend_free(be, xs);
    rsm_backend_free(be, outputs);
    rsm_backend_free(be, noises);
    rsm_backend_free(be, log_probs);
    return status;
}
