/* pretrain.c: validation and dtype dispatch of pretraining (loop in pretrain_real.c). */
#include "pretrain.h"
#include "../checked.h"

#include <math.h>

#include "../real_api.h"

/* rsm_pretrain_steps_f32/_f64 and rsm_pretrain_grad_f32/_f64, defined in pretrain_real.c */
RSM_DECLARE_REAL_API(RSM_API_PRETRAIN)

double
rsm_pretrain_lr(const rsm_pretrain_config *cfg, int64_t step)
{
    double scale = 1.0;
    if (cfg->warmup_steps > 0 && step < cfg->warmup_steps)
        scale = (double)(step + 1) / (double)cfg->warmup_steps;
    else if (cfg->decay_steps > cfg->warmup_steps) {
        double progress = (double)(step - cfg->warmup_steps) /
                          (double)(cfg->decay_steps - cfg->warmup_steps);
        if (progress > 1.0) progress = 1.0;
        double cosine = 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
        scale = cfg->min_lr_ratio + (1.0 - cfg->min_lr_ratio) * cosine;
    }
    return cfg->lr * scale;
}

/* The checks shared by the steps and the gradient of a batch slice. */
static rsm_status
pretrain_check(const rsm_model *model, const rsm_pretrain_config *cfg, const void *data_cond,
               int64_t n_data)
{
    RSM_TRY(rsm_check_size_arg("batch_size", cfg->batch_size, 1));
    {
        int ok = 1; /* the batch's [B, D] and [B, cond_dim] buffers */
        int64_t width = model->dim > model->cond_dim ? model->dim : model->cond_dim;
        RSM_CHECK(rsm_size_within(rsm_size_mul(cfg->batch_size, width, &ok), ok), RSM_ERR_VALUE,
                  "batch_size=%lld rows of dim=%lld are more than 2^%d values: batch_size is too "
                  "large (see csrc/checked.h)",
                  (long long)cfg->batch_size, (long long)width, RSM_MAX_ELEMS_LOG2);
    }
    RSM_CHECK(n_data >= 1, RSM_ERR_VALUE, "data has %lld rows, needs >= 1", (long long)n_data);
    RSM_CHECK(isfinite(cfg->t_min) && isfinite(cfg->t_max) && 0 <= cfg->t_min &&
                  cfg->t_min < cfg->t_max && cfg->t_max <= 1,
              RSM_ERR_VALUE, "need 0 <= t_min < t_max <= 1, got t_min=%g, t_max=%g", cfg->t_min,
              cfg->t_max);
    RSM_CHECK(isfinite(cfg->lr) && cfg->lr >= 0, RSM_ERR_VALUE, "lr=%g must be >= 0", cfg->lr);
    RSM_CHECK(model->backward != NULL, RSM_ERR_TYPE, "the model has no parameters to train");
    RSM_CHECK(model->cond_dim == 0 || data_cond != NULL || model->cond_optional, RSM_ERR_VALUE,
              "the model is conditional (cond_dim=%lld): conditions for the data are required",
              (long long)model->cond_dim);
    RSM_CHECK(isfinite(cfg->cond_dropout) && cfg->cond_dropout >= 0 && cfg->cond_dropout <= 1,
              RSM_ERR_VALUE, "cond_dropout=%g must be in [0, 1]", cfg->cond_dropout);
    RSM_CHECK(cfg->cond_dropout == 0 || (model->cond_dim > 0 && cfg->null_cond != NULL),
              RSM_ERR_VALUE, "cond_dropout=%g needs a conditional model and a null condition",
              cfg->cond_dropout);
    return RSM_OK;
}

rsm_status
rsm_pretrain_steps(const rsm_model *model, rsm_adamw *opt, const rsm_path *path,
                   const rsm_pretrain_config *cfg, const void *data, const void *data_cond,
                   int64_t n_data, int64_t first_step, int64_t num_steps, void *grads,
                   double *losses, double *grad_norms)
{
    RSM_TRY(pretrain_check(model, cfg, data_cond, n_data));
    RSM_CHECK(num_steps >= 0 && first_step >= 0, RSM_ERR_VALUE, "invalid step range");
    RSM_CHECK(opt->num_params == model->num_params && opt->dtype == model->dtype,
              RSM_ERR_VALUE, "the optimizer was made for another model (%lld parameters)",
              (long long)opt->num_params);
    return RSM_REAL_CALL(model->dtype, pretrain_steps, model, opt, path, cfg, data, data_cond,
                         n_data, first_step, num_steps, grads, losses, grad_norms);
}

rsm_status
rsm_pretrain_grad(const rsm_model *model, const rsm_path *path, const rsm_pretrain_config *cfg,
                  const void *data, const void *data_cond, int64_t n_data, int64_t step,
                  int64_t row_begin, int64_t row_end, void *grads, double *loss)
{
    RSM_TRY(pretrain_check(model, cfg, data_cond, n_data));
    RSM_CHECK(step >= 0, RSM_ERR_VALUE, "step=%lld must be >= 0", (long long)step);
    RSM_CHECK(0 <= row_begin && row_begin < row_end && row_end <= cfg->batch_size, RSM_ERR_VALUE,
              "rows [%lld, %lld) must be a non-empty slice of the batch of %lld",
              (long long)row_begin, (long long)row_end, (long long)cfg->batch_size);
    return RSM_REAL_CALL(model->dtype, pretrain_grad, model, path, cfg, data, data_cond, n_data,
                         step, row_begin, row_end, grads, loss);
}
