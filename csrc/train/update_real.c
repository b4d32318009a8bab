/* update_real.c: the fine-tuning update (template, see real.h and update.h). */
#include "real.h"
#include "update.h"
#include "../backend.h"

#include <string.h>

/* kl_report * mean_rows |u - u_ref|^2: the closed-form KL between the policy's and the
 * reference's Gaussian transitions of this step, per sample (THEORY.md §11). */
static double
RSM_T(update_block_kl)(const rsm_backend *be, const rsm_update_block *b, int64_t dim,
                       const real_t *u, const real_t *u_ref)
{
    if (b->rows == 0) return 0.0;
    double sum = RSM_OP(be, sum_sq_diff, b->rows * dim, u, u_ref);
    return b->kl_report * sum / (double)b->rows;
}

rsm_status
RSM_T(update_gradient)(const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,
                       const rsm_model *ref, int64_t nblocks, rsm_update_block *blocks,
                       real_t *grads, rsm_update_block_stats *stats, int64_t *nfe)
{
    rsm_status status = RSM_OK;
    const int64_t D = policy->dim, P = policy->num_params;
    int64_t max_rows = 0;
    for (int64_t b = 0; b < nblocks; b++)
        if (blocks[b].rows > max_rows) max_rows = blocks[b].rows;
    const size_t cells = (size_t)(max_rows > 0 ? max_rows : 1) * (size_t)D;
    /* buffers and ops on the policy's device (backend.h) */
    const rsm_backend *be = rsm_backend_or_cpu(policy->backend);
    real_t *u = (real_t *)rsm_backend_alloc(be, cells, sizeof(real_t));
    real_t *cotangent = (real_t *)rsm_backend_alloc(be, cells, sizeof(real_t));
    real_t *t = (real_t *)rsm_backend_alloc(be, (size_t)(max_rows > 0 ? max_rows : 1),
                                            sizeof(real_t));
    RSM_CHECK_GOTO(u && cotangent && t, RSM_ERR_MEMORY,
                   "cannot allocate the outputs of a block of %lld rows", (long long)max_rows);
    be->memset_zero(be, grads, (size_t)P * sizeof(real_t));

    for (int64_t b = 0; b < nblocks; b++) {
        rsm_update_block *blk = &blocks[b];
        const int64_t n = blk->rows;
        if (stats) memset(&stats[b], 0, sizeof(stats[b]));
        if (n == 0) continue;
        RSM_OP(be, fill, t, n, blk->t);
        /* the reference first: a reference that runs the policy's network (on other inputs)
         * would otherwise replace the activations the policy's backward needs */
        if (!blk->ref_ready) {
            RSM_TRY_GOTO(ref->forward(ref->self, path, n, blk->x, t, blk->cond, blk->u_ref));
            blk->ref_ready = 1;
            if (nfe) *nfe += n;
        }
        RSM_TRY_GOTO(policy->forward(policy->self, path, n, blk->x, t, blk->cond, u));
        const real_t *u_ref = (const real_t *)blk->u_ref;
        rsm_objective_config obj = {blk->form, 0, cfg->linear_only, cfg->mean_over_dims,
                                    cfg->normalizer};
        rsm_objective_stats obj_stats = {0};
        /* ReFL anchors on its own current outputs (stop-gradient): the score-matching error is
         * then -gamma Psi exactly, whose cotangent is the pathwise reward gradient */
        RSM_TRY_GOTO(RSM_OP(be, objective, &obj, n, D, blk->coef, u, (const real_t *)blk->u_old,
                            blk->anchor_current ? u : u_ref, (const real_t *)blk->psi,
                            (const real_t *)blk->noise, cotangent, NULL, NULL, &obj_stats));
        if (stats) {
            stats[b].loss = obj_stats.loss;
            stats[b].clip_fraction = obj_stats.clip_fraction;
            stats[b].kl = RSM_T(update_block_kl)(be, blk, D, u, u_ref);
        }
        /* grads += J_theta^T cotangent (the backward accumulates into dparams) */
        RSM_TRY_GOTO(policy->backward(policy->self, n, cotangent, grads, NULL));
        if (nfe) *nfe += 2 * n;
    }
    status = be->check(be);

fail:
    rsm_backend_free(be, u);
    rsm_backend_free(be, cotangent);
    rsm_backend_free(be, t);
    return status;
}

rsm_status
RSM_T(update_steps)(const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,
                    const rsm_model *ref, rsm_adamw *opt, double lr, int64_t epochs,
                    int64_t nblocks, rsm_update_block *blocks, real_t *grads,
                    rsm_update_block_stats *stats, double *grad_norms, int64_t *nfe)
{
    rsm_status status = RSM_OK;
    const int64_t P = policy->num_params;
    const size_t bytes = (size_t)P * sizeof(real_t);
    /* the state on entry, restored on failure (a later epoch may fail after an earlier one
     * updated the parameters) */
    const rsm_backend *be = rsm_backend_or_cpu(policy->backend);
    real_t *params = (real_t *)policy->params;
    real_t *saved = (real_t *)rsm_backend_alloc(be, bytes, opt->ema ? 4 : 3);
    const int64_t saved_step = opt->step;
    RSM_CHECK(saved != NULL, RSM_ERR_MEMORY, "cannot allocate a copy of %lld parameters",
              (long long)P);
    be->copy(be, saved, params, bytes, RSM_COPY_D2D);
    be->copy(be, saved + P, opt->m, bytes, RSM_COPY_D2D);
    be->copy(be, saved + 2 * P, opt->v, bytes, RSM_COPY_D2D);
    if (opt->ema) be->copy(be, saved + 3 * P, opt->ema, bytes, RSM_COPY_D2D);

    for (int64_t e = 0; e < epochs; e++) {
        RSM_TRY_GOTO(RSM_T(update_gradient)(cfg, path, policy, ref, nblocks, blocks, grads,
                                            stats ? stats + e * nblocks : NULL, nfe));
        double norm = 0.0;
        RSM_TRY_GOTO(RSM_OP(be, adamw_step, opt, params, grads, lr, &norm));
        if (grad_norms) grad_norms[e] = norm;
    }
    status = be->check(be);

fail:
    if (status != RSM_OK) {
        be->copy(be, params, saved, bytes, RSM_COPY_D2D);
        be->copy(be, opt->m, saved + P, bytes, RSM_COPY_D2D);
        be->copy(be, opt->v, saved + 2 * P, bytes, RSM_COPY_D2D);
        if (opt->ema) be->copy(be, opt->ema, saved + 3 * P, bytes, RSM_COPY_D2D);
        opt->step = saved_step;
    }
    rsm_backend_free(be, saved);
    return status;
}
