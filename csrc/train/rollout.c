/* rollout.c: precision-independent parts of the rollout engines (rollout.h). */
#include "rollout.h"

#include <math.h>

int64_t
rsm_branch_rows(const rsm_branch_config *cfg, int64_t roots)
{
    int64_t children = 0;
    for (int64_t i = 0; i < cfg->root.steps; i++) children += cfg->budget[i];
    return roots * children;
}

rsm_status
rsm_branch_check(const rsm_path *path, const rsm_branch_config *cfg)
{
    const rsm_sampler_config *root = &cfg->root, *branch = &cfg->branch;
    RSM_CHECK(cfg->budget != NULL && cfg->branch_seeds != NULL, RSM_ERR_VALUE,
              "a branch rollout needs a budget and a seed per transition");
    RSM_TRY(rsm_sampler_check(path, root));
    RSM_CHECK(branch->steps == root->steps, RSM_ERR_VALUE,
              "root and branch samplers must share the grid (%lld vs %lld steps)",
              (long long)root->steps, (long long)branch->steps);
    for (int64_t i = 0; i <= root->steps; i++)
        RSM_CHECK(root->ts[i] == branch->ts[i], RSM_ERR_VALUE,
                  "root and branch samplers must share the grid: ts[%lld] = %g vs %g",
                  (long long)i, root->ts[i], branch->ts[i]);
    RSM_CHECK(root->num_branch_steps == 0 && branch->num_branch_steps == 0, RSM_ERR_VALUE,
              "a branch rollout splits by its budget, not by branch_steps");
    int64_t children = 0;
    for (int64_t i = 0; i < root->steps; i++) {
        rsm_step_coef det = rsm_sampler_step_coef(path, root, i);
        RSM_CHECK(!det.stochastic, RSM_ERR_VALUE,
                  "the root sampler must be deterministic: step %lld has std %g", (long long)i,
                  det.std);
        const int64_t k = cfg->budget[i];
        RSM_CHECK(k >= 0, RSM_ERR_VALUE, "budget[%lld]=%lld must be >= 0", (long long)i,
                  (long long)k);
        children += k;
        if (k == 0) continue;
        /* the branch's stochastic step is step 0 of the sub-grid ts[i..S] */
        rsm_sampler_config sub = *branch;
        sub.ts = branch->ts + i;
        sub.steps = branch->steps - i;
        sub.window_begin = 0;
        sub.window_end = 1;
        RSM_TRY(rsm_sampler_check(path, &sub));
        rsm_step_coef s = rsm_sampler_step_coef(path, &sub, 0);
        RSM_CHECK(s.stochastic, RSM_ERR_VALUE,
                  "budget[%lld]=%lld branches at a step where the stochastic sampler has std 0 "
                  "(t=%g -> %g)",
                  (long long)i, (long long)k, s.t, s.t_next);
    }
    RSM_CHECK(children > 0, RSM_ERR_VALUE, "the budget has no branch (all k_i = 0)");
    return RSM_OK;
}
