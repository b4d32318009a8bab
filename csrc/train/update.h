/* update.h: the fine-tuning update: the RSM objective of every training row
 * at the current parameters, its backward into one flat gradient, and the optimizer steps of the
 * inner epochs (PPO-style: several steps on one rollout, THEORY.md §12.5), in one C call.
 *
 * A rollout gives blocks of training rows; a block is one trained transition of the sampler:
 * `rows` states x at the same time t, with the per-row coefficients of the objective (objective.h)
 * that the method's preset chose, and what its form reads (rollout-time outputs u_old, the value
 * guidance psi, the sampler noise). Per block and epoch:
 *
 *     u_ref = ref(x, t, cond)        first use only: the reference does not change, so its outputs
 *                                    are kept in the caller's buffer for later epochs and calls
 *     u     = policy(x, t, cond)     the forward saves the activations the backward below uses
 *     (loss, dL/du) = objective(form, u, coef, u_old, u_ref (or u itself: ReFL), psi, noise)
 *     grads += J_theta(u)^T dL/du    the backbone's backward, accumulated in place
 *
 * then one AdamW step on the summed gradient. Every method of the zoo that trains through the
 * objective reaches the parameters here; the Python layer only builds the blocks (THEORY.md §12.6).
 *
 * The reference is evaluated before the policy in every block, so the policy's saved activations
 * are those of its own forward when the backward runs, also when the reference runs the policy's
 * network on other inputs (e.g. rsm.Guided around the policy's own model). On any failure in rsm_update_steps the parameters and the optimizer state are
 * restored to what they were on entry: a failed update changes nothing.
 */
#ifndef RSM_UPDATE_H
#define RSM_UPDATE_H

#include <stdint.h>

#include "../nn/model.h"
#include "../objective.h"
#include "../optim.h"
#include "../path.h"

typedef struct rsm_update_block {
    rsm_objective_form form;
    int64_t rows;
    double t;                       /* the time of every row of the block */
    const void *x;                  /* [rows, dim] states (model dtype) */
    const void *cond;               /* [rows, cond_dim] or NULL */
    const rsm_objective_row *coef;  /* [rows] */
    const void *u_old;              /* [rows, dim] rollout-time outputs, or NULL */
    const void *psi;                /* [rows, dim] value guidance (score units), or NULL */
    const void *noise;              /* [rows, dim] the sampler's standard normal draw, or NULL */
    void *u_ref;                    /* [rows, dim] reference outputs: filled here unless ref_ready */
    int ref_ready;                  /* 1 once u_ref holds them (set by the update) */
    int anchor_current;             /* 1: anchor on the current outputs, stop-gradient (ReFL) */
    double kl_report;               /* (1/2) w^2 of the step: the reported KL is
                                       kl_report * mean_rows |u - u_ref|^2 (THEORY.md §11) */
} rsm_update_block;

typedef struct rsm_update_config {
    int linear_only;     /* ratio forms: GRPO-Guard's RatioNorm term (objective.h) */
    int mean_over_dims;  /* per-element means instead of sums over dim */
    double normalizer;   /* the masked-mean denominator shared by all blocks (> 0) */
} rsm_update_config;

/* What one block gave in one epoch. */
typedef struct rsm_update_block_stats {
    double loss;          /* its share of the objective */
    double clip_fraction; /* weighted fraction of its rows clipped away */
    double kl;            /* kl_report * mean_rows |u - u_ref|^2 */
} rsm_update_block_stats;

/* grads[num_params] = the gradient of the objective summed over the blocks at the policy's current
 * parameters (overwritten, not accumulated). stats[nblocks] (may be NULL); *nfe (may be NULL) is
 * increased by the network evaluations: rows for each reference forward computed, 2 rows for the
 * policy's forward and backward. */
rsm_status rsm_update_gradient(const rsm_update_config *cfg, const rsm_path *path,
                               const rsm_model *policy, const rsm_model *ref, int64_t nblocks, rsm_update_block *blocks,
                               void *grads, rsm_update_block_stats *stats, int64_t *nfe);

/* `epochs` AdamW steps at learning rate lr, each on rsm_update_gradient at the parameters the
 * previous step left. grads[num_params] is workspace; stats[epochs * nblocks] and
 * grad_norms[epochs] (pre-clip norms) may be NULL. All or nothing: on failure the policy's
 * parameters and the optimizer's moments, EMA and step count are as they were on entry. */
rsm_status rsm_update_steps(const rsm_update_config *cfg, const rsm_path *path,
                            const rsm_model *policy, const rsm_model *ref, rsm_adamw *opt, double lr, int64_t epochs,
                            int64_t nblocks, rsm_update_block *blocks, void *grads,
                            rsm_update_block_stats *stats, double *grad_norms, int64_t *nfe);

#endif /* RSM_UPDATE_H */
