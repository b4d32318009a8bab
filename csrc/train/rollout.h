/* rollout.h: the rollout engines of fine-tuning (THEORY.md §9.2.1, §12.1 D)
 * and the reward callback they call once per batch.
 *
 *   rsm_rollout_*         one sampler run (full SDE / DDPM trajectories, a Branch-GRPO tree, or
 *                         ODE trajectories for first-order methods), then the reward on its final
 *                         samples;
 *   rsm_branch_rollout_*  stochasticity localisation (THEORY.md §9.2.1): a deterministic root per
 *                         condition over ts[0..S]; for every transition i with budget k_i > 0 the
 *                         root state x_{t_i}, repeated k_i times, takes ONE step of the stochastic
 *                         sampler and is continued by the deterministic one down to ts[S]; then the
 *                         reward on every branch end, once.
 *
 * The reward is a callback (rsm_reward_hook), called by the C loop with the batch's terminal
 * samples after all sampling, so that a binding holds its interpreter lock only inside it and the
 * reward sees the whole batch in one call. A failing hook returns its status (RSM_ERR_CALLBACK
 * when a Python callable raised; the binding keeps the exception), which the rollout returns
 * unchanged. A rollout changes nothing but its outputs: the RNG is counter-based (rng.h).
 *
 * Both samplers of a branch rollout are the caller's: the root one deterministic (Euler, or DDIM
 * with eta = 0), the branch one stochastic (Flow-GRPO's SDE, or DDIM with eta > 0, optionally
 * PCPO's std); the branches at transition i draw their noise from their own seed
 * branch_seeds[i], so a budget change at one transition leaves the others' noise alone.
 */
#ifndef RSM_ROLLOUT_H
#define RSM_ROLLOUT_H

#include <stdint.h>

#include "../nn/model.h"
#include "../path.h"
#include "../real_api.h"
#include "../sampler.h"
#include "../status.h"

/* x0: [rows, dim] terminal samples in the model's dtype, valid during the call only. */
typedef rsm_status (*rsm_reward_fn)(void *ctx, int64_t rows, int64_t dim, const void *x0);

typedef struct rsm_reward_hook {
    rsm_reward_fn fn;
    void *ctx;
} rsm_reward_hook;


typedef struct rsm_branch_config {
    rsm_sampler_config root;      /* deterministic, over ts[0..S]; its seed draws the prior */
    rsm_sampler_config branch;    /* stochastic, over the same grid; window and seed are set
                                     per transition (the first step of ts[i..S]; branch_seeds) */
    const int64_t *budget;        /* [S] children per root at transition i (0: none) */
    const uint64_t *branch_seeds; /* [S] */
} rsm_branch_config;

/* Branch rows: roots * sum_i budget[i]. Rows are transition-major (i ascending) and, within a
 * transition, root-major: root j's children are rows j k_i .. j k_i + k_i - 1 of the block. */
/* The rows roots * sum(budget), overflow-checked with the rollout's buffer sizes: RSM_ERR_VALUE
 * naming roots and the budget above RSM_MAX_ELEMS values (csrc/checked.h). */
rsm_status rsm_branch_rows(const rsm_branch_config *cfg, int64_t roots, int64_t dim, int64_t *rows);
rsm_status rsm_branch_check(const rsm_path *path, const rsm_branch_config *cfg);

/* Outputs of a branch rollout; R = branch rows. Every pointer must be set. The fields once, for
 * real_t = T: rsm_branch_out_f32 and rsm_branch_out_f64 below. */
#define RSM_BRANCH_OUT_FIELDS(T)                                                                   \
    T *root_xs;   /* [S + 1, roots, D] the root trajectory, root_xs[0] = prior */                  \
    T *x_next;    /* [R, D] each branch's state after its stochastic step */                       \
    T *outputs;   /* [R, D] the network output u_old at the branch's start state */                \
    T *noises;    /* [R, D] the z of the stochastic step */                                        \
    T *log_probs; /* [R] log pi_old(x_next | x_{t_i}) */                                           \
    T *x0;        /* [R, D] the branch ends */                                                     \
    int64_t nfe;
typedef struct rsm_branch_out_f32 {
    RSM_BRANCH_OUT_FIELDS(float)
} rsm_branch_out_f32;
typedef struct rsm_branch_out_f64 {
    RSM_BRANCH_OUT_FIELDS(double)
} rsm_branch_out_f64;

/* rsm_rollout_f32/_f64 (rsm_sample_*, then reward->fn(ctx, N, D, out->x_final) unless reward is
 * NULL) and rsm_branch_rollout_f32/_f64 (x_init: [roots, D] prior or NULL, drawn from the root
 * sampler's seed; cond: [roots, C] or NULL, each branch row takes its root's condition), declared
 * by real_api.h. */
RSM_DECLARE_REAL_API(RSM_API_ROLLOUT)

#endif /* RSM_ROLLOUT_H */
