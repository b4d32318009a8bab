/* update.c: validation and dtype dispatch of the fine-tuning update (loops in update_real.c). */
#include "update.h"

#include <math.h>

#include "../real_api.h"

/* rsm_update_gradient/steps_f32/_f64, defined in update_real.c */
RSM_DECLARE_REAL_API(RSM_API_UPDATE)

static rsm_status
rsm_update_check(const rsm_update_config *cfg, const rsm_model *policy, const rsm_model *ref,
                 int64_t nblocks, const rsm_update_block *blocks)
{
    RSM_CHECK(policy->backward && policy->params, RSM_ERR_VALUE,
              "the policy must be a trainable model (with a backward and parameters)");
    RSM_CHECK(ref->dtype == policy->dtype && ref->dim == policy->dim, RSM_ERR_VALUE,
              "ref (dtype %d, dim %lld) must match the policy (dtype %d, dim %lld)",
              (int)ref->dtype, (long long)ref->dim, (int)policy->dtype, (long long)policy->dim);
    RSM_CHECK(cfg->normalizer > 0 && isfinite(cfg->normalizer), RSM_ERR_VALUE,
              "normalizer=%g must be positive and finite", cfg->normalizer);
    RSM_CHECK(nblocks >= 0 && (nblocks == 0 || blocks), RSM_ERR_VALUE, "nblocks=%lld",
              (long long)nblocks);
    for (int64_t b = 0; b < nblocks; b++) {
        const rsm_update_block *blk = &blocks[b];
        RSM_CHECK(blk->rows >= 0, RSM_ERR_VALUE, "block %lld: rows=%lld must be >= 0",
                  (long long)b, (long long)blk->rows);
        if (blk->rows == 0) continue;
        RSM_CHECK(blk->x && blk->coef && blk->u_ref, RSM_ERR_VALUE,
                  "block %lld: x, coef and the u_ref buffer are required", (long long)b);
        RSM_CHECK(isfinite(blk->t) && isfinite(blk->kl_report), RSM_ERR_VALUE,
                  "block %lld: t=%g and kl_report=%g must be finite", (long long)b, blk->t,
                  blk->kl_report);
        RSM_CHECK(blk->cond || policy->cond_dim == 0 || policy->cond_optional, RSM_ERR_VALUE,
                  "block %lld: the policy is conditional (cond_dim %lld) but the block has no "
                  "condition", (long long)b, (long long)policy->cond_dim);
    }
    return RSM_OK;
}

rsm_status
rsm_update_gradient(const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,
                    const rsm_model *ref, int64_t nblocks, rsm_update_block *blocks, void *grads,
                    rsm_update_block_stats *stats, int64_t *nfe)
{
    RSM_TRY(rsm_update_check(cfg, policy, ref, nblocks, blocks));
    return RSM_REAL_CALL(policy->dtype, update_gradient, cfg, path, policy, ref, nblocks, blocks,
                         grads, stats, nfe);
}

rsm_status
rsm_update_steps(const rsm_update_config *cfg, const rsm_path *path, const rsm_model *policy,
                 const rsm_model *ref, rsm_adamw *opt, double lr, int64_t epochs, int64_t nblocks,
                 rsm_update_block *blocks, void *grads, rsm_update_block_stats *stats,
                 double *grad_norms, int64_t *nfe)
{
    RSM_TRY(rsm_update_check(cfg, policy, ref, nblocks, blocks));
    RSM_CHECK(opt->dtype == policy->dtype && opt->num_params == policy->num_params, RSM_ERR_VALUE,
              "the optimizer (%lld parameters) does not belong to the policy (%lld parameters)",
              (long long)opt->num_params, (long long)policy->num_params);
    RSM_CHECK(epochs >= 1, RSM_ERR_VALUE, "epochs=%lld must be >= 1", (long long)epochs);
    RSM_CHECK(isfinite(lr) && lr >= 0, RSM_ERR_VALUE, "lr=%g must be finite and >= 0", lr);
    return RSM_REAL_CALL(policy->dtype, update_steps, cfg, path, policy, ref, opt, lr, epochs,
                         nblocks, blocks, grads, stats, grad_norms, nfe);
}
