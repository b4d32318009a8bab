/* pretrain_real.c: the pretraining loop (template, see real.h and pretrain.h). */
#include "real.h"
#include "pretrain.h"
#include "../rng.h"

#include <string.h>

rsm_status
RSM_T(pretrain_steps)(const rsm_model *model, rsm_adamw *opt, const rsm_path *path,
                      const rsm_pretrain_config *cfg, const real_t *data, const real_t *data_cond,
                      int64_t n_data, int64_t first_step, int64_t num_steps, real_t *grads,
                      double *losses, double *grad_norms)
{
    rsm_status status = RSM_OK;
    const int64_t B = cfg->batch_size, D = model->dim;
    /* conditions are copied only when the data has them (a DiT without cond: the null class) */
    const int64_t C = data_cond ? model->cond_dim : 0;
    const int64_t P = model->num_params;
    const rsm_param target_param = rsm_path_native_param(path);
    int64_t *index = (int64_t *)rsm_malloc((size_t)B * sizeof(int64_t));
    double *u_time = (double *)rsm_malloc((size_t)B * sizeof(double));
    real_t *t = (real_t *)rsm_malloc((size_t)B * sizeof(real_t));
    real_t *eps = (real_t *)rsm_malloc((size_t)(B * D) * sizeof(real_t));
    real_t *xt = (real_t *)rsm_malloc((size_t)(B * D) * sizeof(real_t));
    real_t *target = (real_t *)rsm_malloc((size_t)(B * D) * sizeof(real_t));
    real_t *pred = (real_t *)rsm_malloc((size_t)(B * D) * sizeof(real_t));
    real_t *cond = (real_t *)rsm_malloc((size_t)(B * (C > 0 ? C : 1)) * sizeof(real_t));
    double *u_drop = (double *)rsm_malloc((size_t)B * sizeof(double));
    const real_t *null_cond = (const real_t *)cfg->null_cond;
    const int dropout = C > 0 && cfg->cond_dropout > 0;
    RSM_CHECK_GOTO(index && u_time && t && eps && xt && target && pred && cond && u_drop,
                   RSM_ERR_MEMORY,
                   "cannot allocate a batch of %lld rows", (long long)B);

    for (int64_t s = 0; s < num_steps; s++) {
        const int64_t k = first_step + s;
        rsm_fill_index(cfg->seed, rsm_stream_id(RSM_STREAM_DATA, (uint64_t)k, 0), 0, B, n_data,
                       index);
        rsm_fill_uniform_f64(cfg->seed, rsm_stream_id(RSM_STREAM_TIME, (uint64_t)k, 0), 0, B,
                             u_time);
        RSM_T(fill_normal)(cfg->seed, rsm_stream_id(RSM_STREAM_NOISE, (uint64_t)k, 0), 0, B * D,
                           eps);
        if (dropout)
            rsm_fill_uniform_f64(cfg->seed, rsm_stream_id(RSM_STREAM_COND_DROP, (uint64_t)k, 0), 0,
                                 B, u_drop);
        for (int64_t i = 0; i < B; i++) {
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
        RSM_TRY_GOTO(model->forward(model->self, path, B, xt, t, C > 0 ? cond : NULL, pred));
        /* loss = mean (pred - target)^2; seed of the backward: dL/dpred = 2 (pred - target) / (B D) */
        double loss = 0.0;
        const real_t scale = (real_t)(2.0 / (double)(B * D));
        for (int64_t i = 0; i < B * D; i++) {
            real_t diff = pred[i] - target[i];
            loss += (double)diff * (double)diff;
            pred[i] = scale * diff;
        }
        loss /= (double)(B * D);
        memset(grads, 0, (size_t)P * sizeof(real_t));
        RSM_TRY_GOTO(model->backward(model->self, B, pred, grads, NULL));
        double lr = rsm_pretrain_lr(cfg, k);
        double norm = 0.0;
        RSM_TRY_GOTO(RSM_T(adamw_step)(opt, (real_t *)model->params, grads, lr, &norm));
        if (losses) losses[s] = loss;
        if (grad_norms) grad_norms[s] = norm;
    }

fail:
    rsm_free(index);
    rsm_free(u_time);
    rsm_free(t);
    rsm_free(eps);
    rsm_free(xt);
    rsm_free(target);
    rsm_free(pred);
    rsm_free(cond);
    rsm_free(u_drop);
    return status;
}
