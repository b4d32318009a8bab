/* rollout.c: precision-independent parts of the rollout engines (rollout.h). */
#include "rollout.h"
#include "../checked.h"

#include <math.h>

rsm_status
rsm_branch_rows(const rsm_branch_config *cfg, int64_t roots, int64_t dim, int64_t *rows)
{
    int ok = 1;
    int64_t children = 0, k_max = 0;
    const int64_t S = cfg->root.steps;
    for (int64_t i = 0; i < S; i++) {
        children = rsm_size_add(children, cfg->budget[i], &ok);
        k_max = cfg->budget[i] > k_max ? cfg->budget[i] : k_max;
    }
    const int64_t r = rsm_size_mul(roots, children, &ok);
    /* the buffers: [R, dim] outputs, and [S + 1, roots * k_max, dim] for the branch trajectory */
    const int64_t traj = rsm_size_mul3(rsm_size_add(S, 1, &ok), rsm_size_mul(roots, k_max, &ok), dim,
                                       &ok);
    RSM_CHECK(rsm_size_within(rsm_size_mul(r, dim, &ok), ok) && rsm_size_within(traj, ok),
              RSM_ERR_VALUE,
              "roots=%lld with a budget of %lld branches (at most %lld per step) over %lld steps "
              "of dim=%lld are more than 2^%d values: roots or the budget is too large "
              "(see csrc/checked.h)",
              (long long)roots, (long long)children, (long long)k_max, (long long)S,
              (long long)dim, RSM_MAX_ELEMS_LOG2);
    *rows = r;
    return RSM_OK;
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
