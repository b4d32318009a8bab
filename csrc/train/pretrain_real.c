/* pretrain_real.c: the pretraining loop (template, see real.h and pretrain.h). */
#include "real.h"
#include "pretrain.h"
#include "../backend.h"
#include "../rng.h"


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
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    const int64_t B = cfg->batch_size, D = model->dim, n = r1 - r0;
    const int64_t C = data_cond ? model->cond_dim : 0;
    const int dropout = C > 0 && cfg->cond_dropout > 0;
    /* the draws (index, time, noise, dropout: double uniforms whatever real_t is) */
    be->fill_index(be, cfg->seed, rsm_stream_id(RSM_STREAM_DATA, (uint64_t)k, 0), (uint64_t)r0, n,
                   n_data, b->index);
    be->f64->fill_uniform(be, cfg->seed, rsm_stream_id(RSM_STREAM_TIME, (uint64_t)k, 0),
                          (uint64_t)r0, n, b->u_time);
    RSM_OP(be, fill_normal, cfg->seed, rsm_stream_id(RSM_STREAM_NOISE, (uint64_t)k, 0),
           (uint64_t)(r0 * D), n * D, b->eps);
    if (dropout)
        be->f64->fill_uniform(be, cfg->seed, rsm_stream_id(RSM_STREAM_COND_DROP, (uint64_t)k, 0),
                              (uint64_t)r0, n, b->u_drop);
    /* x_t, t, the target and the (dropped-out) conditions of these rows */
    RSM_OP(be, pretrain_batch, path, cfg, n, D, C, data, data_cond, b->index, b->u_time,
           dropout ? b->u_drop : NULL, b->eps, b->t, b->xt, b->target, b->cond);
    RSM_TRY(model->forward(model->self, path, n, b->xt, b->t, C > 0 ? b->cond : NULL, b->pred));
    /* loss = mean (pred - target)^2; seed of the backward: dL/dpred = 2 (pred - target) / (B D) */
    const real_t scale = (real_t)(2.0 / (double)(B * D));
    double loss = RSM_OP(be, mse_seed, n * D, b->pred, b->target, scale);
    *loss_out = loss / (double)(B * D);
    RSM_TRY(model->backward(model->self, n, b->pred, grads, NULL));
    return be->check(be);
}

static int
RSM_T(pretrain_alloc)(const rsm_backend *be, RSM_T(pretrain_buffers) *b, int64_t rows, int64_t D,
                      int64_t C)
{
    const size_t R = (size_t)rows, RD = (size_t)(rows * D), RC = (size_t)(rows * (C > 0 ? C : 1));
    b->index = (int64_t *)rsm_backend_alloc(be, R, sizeof(int64_t));
    b->u_time = (double *)rsm_backend_alloc(be, R, sizeof(double));
    b->t = (real_t *)rsm_backend_alloc(be, R, sizeof(real_t));
    b->eps = (real_t *)rsm_backend_alloc(be, RD, sizeof(real_t));
    b->xt = (real_t *)rsm_backend_alloc(be, RD, sizeof(real_t));
    b->target = (real_t *)rsm_backend_alloc(be, RD, sizeof(real_t));
    b->pred = (real_t *)rsm_backend_alloc(be, RD, sizeof(real_t));
    b->cond = (real_t *)rsm_backend_alloc(be, RC, sizeof(real_t));
    b->u_drop = (double *)rsm_backend_alloc(be, R, sizeof(double));
    return b->index && b->u_time && b->t && b->eps && b->xt && b->target && b->pred && b->cond &&
           b->u_drop;
}

static void
RSM_T(pretrain_free)(const rsm_backend *be, RSM_T(pretrain_buffers) *b)
{
    rsm_backend_free(be, b->index);
    rsm_backend_free(be, b->u_time);
    rsm_backend_free(be, b->t);
    rsm_backend_free(be, b->eps);
    rsm_backend_free(be, b->xt);
    rsm_backend_free(be, b->target);
    rsm_backend_free(be, b->pred);
    rsm_backend_free(be, b->cond);
    rsm_backend_free(be, b->u_drop);
}

rsm_status
RSM_T(pretrain_steps)(const rsm_model *model, rsm_adamw *opt, const rsm_path *path,
                      const rsm_pretrain_config *cfg, const real_t *data, const real_t *data_cond,
                      int64_t n_data, int64_t first_step, int64_t num_steps, real_t *grads,
                      double *losses, double *grad_norms)
{
    rsm_status status = RSM_OK;
    const int64_t B = cfg->batch_size, P = model->num_params;
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    RSM_T(pretrain_buffers) b;
    RSM_CHECK_GOTO(RSM_T(pretrain_alloc)(be, &b, B, model->dim, data_cond ? model->cond_dim : 0),
                   RSM_ERR_MEMORY, "cannot allocate a batch of %lld rows", (long long)B);

    for (int64_t s = 0; s < num_steps; s++) {
        const int64_t k = first_step + s;
        double loss = 0.0;
        be->memset_zero(be, grads, (size_t)P * sizeof(real_t));
        RSM_TRY_GOTO(RSM_T(pretrain_rows)(model, path, cfg, data, data_cond, n_data, k, 0, B,
                                          &b, grads, &loss));
        double lr = rsm_pretrain_lr(cfg, k);
        double norm = 0.0;
        RSM_TRY_GOTO(RSM_OP(be, adamw_step, opt, (real_t *)model->params, grads, lr, &norm));
        if (losses) losses[s] = loss;
        if (grad_norms) grad_norms[s] = norm;
    }

fail:
    RSM_T(pretrain_free)(be, &b);
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
    const rsm_backend *be = rsm_backend_or_cpu(model->backend);
    RSM_T(pretrain_buffers) b;
    RSM_CHECK_GOTO(RSM_T(pretrain_alloc)(be, &b, n, model->dim, data_cond ? model->cond_dim : 0),
                   RSM_ERR_MEMORY, "cannot allocate a batch of %lld rows", (long long)n);
    be->memset_zero(be, grads, (size_t)model->num_params * sizeof(real_t));
    status = RSM_T(pretrain_rows)(model, path, cfg, data, data_cond, n_data, step, row_begin,
                                  row_end, &b, grads, loss);
fail:
    RSM_T(pretrain_free)(be, &b);
    return status;
}
