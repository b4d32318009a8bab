/* pretrain_real.c: the pretraining loop (template, see real.h and pretrain.h). */
#include "real.h"
#include "pretrain.h"
#include "../rng.h"

#include <string.h>

/* The batch buffers of `rows` rows. */
typedef struct RSM_T(pretrain_buffers) {
    int64_t *index;
    double *u_time, *u_drop;
    real_t *t, *eps, *xt, *target, *pred, *cond;
} RSM_T(pretrain_buffers);

/* Rows [r0, r1) of step k's batch (element offsets r0, r0 * D of the step's streams, so a
 * slice of the batch draws exactly what the whole batch draws for those rows): the states xt,
 * times t, targets and conditions into row 0.. of the buffers; then the forward, the loss seed
 * and the backward into grads (accumulated: the caller zeroes it). Returns the squared error
 * over the rows divided by the GLOBAL B D, so the slices' values add up to the batch loss. */
static rsm_status
RSM_T(pretrain_rows)(const rsm_model *model, const rsm_path *path, const rsm_pretrain_config *cfg,
                     const real_t *data, const real_t *data_cond, int64_t n_data, int64_t k,
                     int64_t r0, int64_t r1, RSM_T(pretrain_buffers) *b, real_t *grads,
                     double *loss_out)
{
    int64_t *index = b->index;
    double *u_time = b->u_time, *u_drop = b->u_drop;
    real_t *t = b->t, *eps = b->eps, *xt = b->xt, *target = b->target, *pred = b->pred,
           *cond = b->cond;
    const int64_t B = cfg->batch_size, D = model->dim, n = r1 - r0;
    const int64_t C = data_cond ? model->cond_dim : 0;
    const rsm_param target_param = rsm_path_native_param(path);
    const real_t *null_cond = (const real_t *)cfg->null_cond;
    const int dropout = C > 0 && cfg->cond_dropout > 0;
    rsm_fill_index(cfg->seed, rsm_stream_id(RSM_STREAM_DATA, (uint64_t)k, 0), (uint64_t)r0, n,
                   n_data, index);
    rsm_fill_uniform_f64(cfg->seed, rsm_stream_id(RSM_STREAM_TIME, (uint64_t)k, 0), (uint64_t)r0,
                         n, u_time);
    RSM_T(fill_normal)(cfg->seed, rsm_stream_id(RSM_STREAM_NOISE, (uint64_t)k, 0),
                       (uint64_t)(r0 * D), n * D, eps);
    if (dropout)
        rsm_fill_uniform_f64(cfg->seed, rsm_stream_id(RSM_STREAM_COND_DROP, (uint64_t)k, 0),
                             (uint64_t)r0, n, u_drop);
    for (int64_t i = 0; i < n; i++) {
        double ti = cfg->t_min + (cfg->t_max - cfg->t_min) * u_time[i];
        t[i] = (real_t)ti;
        rsm_path_coef c = rsm_path_coef_at(path, (double)t[i]);
        const real_t *x0 = data + index[i] * D;
        for (int64_t d = 0; d < D; d++) {
            double e = (double)eps[i * D + d];
            xt[i * D + d] = (real_t)rsm_path_noise_elem(c, (double)x0[d], e);
            target[i * D + d] = (real_t)rsm_param_from_x0_eps(target_param, c, (double)x0[d], e);
        }
        if (C > 0) {
            /* the null condition with probability cond_dropout: the unconditional model of
             * classifier-free guidance is the same network (Ho & Salimans 2022, Alg. 1) */
            const real_t *src = dropout && u_drop[i] < cfg->cond_dropout
                                    ? null_cond
                                    : data_cond + index[i] * C;
            memcpy(cond + i * C, src, (size_t)C * sizeof(real_t));
        }
    }
    RSM_TRY(model->forward(model->self, path, n, xt, t, C > 0 ? cond : NULL, pred));
    /* loss = mean (pred - target)^2; seed of the backward: dL/dpred = 2 (pred - target) / (B D) */
    double loss = 0.0;
    const real_t scale = (real_t)(2.0 / (double)(B * D));
    for (int64_t i = 0; i < n * D; i++) {
        real_t diff = pred[i] - target[i];
        loss += (double)diff * (double)diff;
        pred[i] = scale * diff;
    }
    *loss_out = loss / (double)(B * D);
    return model->backward(model->self, n, pred, grads, NULL);
}

static int
RSM_T(pretrain_alloc)(RSM_T(pretrain_buffers) *b, int64_t rows, int64_t D, int64_t C)
{
    b->index = (int64_t *)rsm_malloc((size_t)rows * sizeof(int64_t));
    b->u_time = (double *)rsm_malloc((size_t)rows * sizeof(double));
    b->t = (real_t *)rsm_malloc((size_t)rows * sizeof(real_t));
    b->eps = (real_t *)rsm_malloc((size_t)(rows * D) * sizeof(real_t));
    b->xt = (real_t *)rsm_malloc((size_t)(rows * D) * sizeof(real_t));
    b->target = (real_t *)rsm_malloc((size_t)(rows * D) * sizeof(real_t));
    b->pred = (real_t *)rsm_malloc((size_t)(rows * D) * sizeof(real_t));
    b->cond = (real_t *)rsm_malloc((size_t)(rows * (C > 0 ? C : 1)) * sizeof(real_t));
    b->u_drop = (double *)rsm_malloc((size_t)rows * sizeof(double));
    return b->index && b->u_time && b->t && b->eps && b->xt && b->target && b->pred && b->cond &&
           b->u_drop;
}

static void
RSM_T(pretrain_free)(RSM_T(pretrain_buffers) *b)
{
    rsm_free(b->index);
    rsm_free(b->u_time);
    rsm_free(b->t);
    rsm_free(b->eps);
    rsm_free(b->xt);
    rsm_free(b->target);
    rsm_free(b->pred);
    rsm_free(b->cond);
    rsm_free(b->u_drop);
}

rsm_status
RSM_T(pretrain_steps)(const rsm_model *model, rsm_adamw *opt, const rsm_path *path,
                      const rsm_pretrain_config *cfg, const real_t *data, const real_t *data_cond,
                      int64_t n_data, int64_t first_step, int64_t num_steps, real_t *grads,
                      double *losses, double *grad_norms)
{
    rsm_status status = RSM_OK;
    const int64_t B = cfg->batch_size, P = model->num_params;
    RSM_T(pretrain_buffers) b;
    RSM_CHECK_GOTO(RSM_T(pretrain_alloc)(&b, B, model->dim, data_cond ? model->cond_dim : 0),
                   RSM_ERR_MEMORY, "cannot allocate a batch of %lld rows", (long long)B);

    for (int64_t s = 0; s < num_steps; s++) {
        const int64_t k = first_step + s;
        double loss = 0.0;
        memset(grads, 0, (size_t)P * sizeof(real_t));
        RSM_TRY_GOTO(RSM_T(pretrain_rows)(model, path, cfg, data, data_cond, n_data, k, 0, B,
                                          &b, grads, &loss));
        double lr = rsm_pretrain_lr(cfg, k);
        double norm = 0.0;
        RSM_TRY_GOTO(RSM_T(adamw_step)(opt, (real_t *)model->params, grads, lr, &norm));
        if (losses) losses[s] = loss;
        if (grad_norms) grad_norms[s] = norm;
    }

fail:
    RSM_T(pretrain_free)(&b);
    return status;
}

rsm_status
RSM_T(pretrain_grad)(const rsm_model *model, const rsm_path *path,
                     const rsm_pretrain_config *cfg, const real_t *data, const real_t *data_cond,
                     int64_t n_data, int64_t step, int64_t row_begin, int64_t row_end,
                     real_t *grads, double *loss)
{
    rsm_status status = RSM_OK;
    const int64_t n = row_end - row_begin;
    RSM_T(pretrain_buffers) b;
    RSM_CHECK_GOTO(RSM_T(pretrain_alloc)(&b, n, model->dim, data_cond ? model->cond_dim : 0),
                   RSM_ERR_MEMORY, "cannot allocate a batch of %lld rows", (long long)n);
    memset(grads, 0, (size_t)model->num_params * sizeof(real_t));
    status = RSM_T(pretrain_rows)(model, path, cfg, data, data_cond, n_data, step, row_begin,
                                  row_end, &b, grads, loss);
fail:
    RSM_T(pretrain_free)(&b);
    return status;
}
