/* pretrain.h: pretraining of a backbone on data by regression onto the path's native target:
 * flow matching (velocity v = eps - x0 for rectified flow; Lipman et al. 2023, Liu et al. 2023)
 * or denoising score matching in eps-parameterization (Ho et al. 2020):
 *
 *   L = mean_{batch, dims} | u_theta(x_t, t, c) - target |^2,   x_t = alpha(t) x0 + sigma(t) eps.
 *
 * Step k draws everything from Philox streams keyed by (seed, k): batch indices
 * (RSM_STREAM_DATA), times (RSM_STREAM_TIME) and noise (RSM_STREAM_NOISE). So a run resumed at
 * step k from a checkpoint (parameters + optimizer state) continues exactly as the uninterrupted
 * run, and the result does not depend on how steps are grouped into calls.
 */
#ifndef RSM_PRETRAIN_H
#define RSM_PRETRAIN_H

#include <stdint.h>

#include "../nn/model.h"
#include "../optim.h"
#include "../path.h"

typedef struct rsm_pretrain_config {
    int64_t batch_size;
    double t_min, t_max;   /* t ~ U(t_min, t_max) */
    double lr;             /* peak learning rate */
    int64_t warmup_steps;  /* linear warm-up from 0 to lr over these steps */
    int64_t decay_steps;   /* cosine decay from lr to lr * min_lr_ratio at this step (0: none) */
    double min_lr_ratio;
    uint64_t seed;
    /* Condition dropout for classifier-free guidance (Ho & Salimans 2022): each row's condition
     * is replaced by null_cond[cond_dim] (model dtype) with probability cond_dropout, drawn from
     * (seed, RSM_STREAM_COND_DROP, step). 0 (and null_cond NULL) for plain conditional training. */
    double cond_dropout;
    const void *null_cond;
} rsm_pretrain_config;

/* The learning rate of step k: linear warm-up, then cosine decay (if decay_steps > 0). */
double rsm_pretrain_lr(const rsm_pretrain_config *cfg, int64_t step);

/* Runs steps [first_step, first_step + num_steps) on a trainable model (backward != NULL; its
 * `params` are updated). data[n_data, dim], data_cond[n_data, cond_dim]
 * (NULL for an unconditional model). grads[num_params] is workspace. losses and grad_norms
 * [num_steps] receive one value per step (may be NULL). */
rsm_status rsm_pretrain_steps(const rsm_model *model, rsm_adamw *opt, const rsm_path *path,
                              const rsm_pretrain_config *cfg, const void *data,
                              const void *data_cond, int64_t n_data, int64_t first_step,
                              int64_t num_steps, void *grads, double *losses, double *grad_norms);

/* Data parallelism: the gradient (into grads[num_params], overwritten) and the loss share
 * (squared error / (batch_size dim)) of rows [row_begin, row_end) of step `step`'s batch, no
 * optimizer step. Row r draws exactly what it draws in the whole batch (the streams are offset
 * by row_begin), so slices computed anywhere add up to the batch's gradient. */
rsm_status rsm_pretrain_grad(const rsm_model *model, const rsm_path *path,
                             const rsm_pretrain_config *cfg, const void *data,
                             const void *data_cond, int64_t n_data, int64_t step,
                             int64_t row_begin, int64_t row_end, void *grads, double *loss);

#endif /* RSM_PRETRAIN_H */
