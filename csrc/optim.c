/* optim.c: AdamW state management and dtype dispatch (update loop in optim_real.c). */
#include "optim.h"

#include <math.h>
#include <string.h>

rsm_status
rsm_adamw_check_config(const rsm_adamw_config *c)
{
    RSM_CHECK(isfinite(c->lr) && c->lr >= 0, RSM_ERR_VALUE, "lr=%g must be finite and >= 0", c->lr);
    RSM_CHECK(c->beta1 >= 0 && c->beta1 < 1, RSM_ERR_VALUE, "beta1=%g must be in [0, 1)", c->beta1);
    RSM_CHECK(c->beta2 >= 0 && c->beta2 < 1, RSM_ERR_VALUE, "beta2=%g must be in [0, 1)", c->beta2);
    RSM_CHECK(c->eps > 0 && isfinite(c->eps), RSM_ERR_VALUE, "eps=%g must be > 0", c->eps);
    RSM_CHECK(c->weight_decay >= 0 && isfinite(c->weight_decay), RSM_ERR_VALUE,
              "weight_decay=%g must be >= 0", c->weight_decay);
    RSM_CHECK(!isnan(c->max_grad_norm), RSM_ERR_VALUE, "max_grad_norm is NaN");
    RSM_CHECK(c->ema_decay >= 0 && c->ema_decay < 1, RSM_ERR_VALUE,
              "ema_decay=%g must be in [0, 1)", c->ema_decay);
    return RSM_OK;
}

rsm_status
rsm_adamw_init(rsm_adamw *opt, rsm_adamw_config config, rsm_dtype dtype, int64_t num_params,
               const void *params)
{
    memset(opt, 0, sizeof(*opt));
    RSM_TRY(rsm_adamw_check_config(&config));
    RSM_CHECK(dtype == RSM_F32 || dtype == RSM_F64, RSM_ERR_TYPE,
              "AdamW state must be float32 or float64");
    size_t bytes = (size_t)num_params * rsm_dtype_size(dtype);
    opt->config = config;
    opt->dtype = dtype;
    opt->num_params = num_params;
    opt->m = rsm_calloc(bytes);
    opt->v = rsm_calloc(bytes);
    if (config.ema_decay > 0) {
        opt->ema = rsm_malloc(bytes);
        if (opt->ema) memcpy(opt->ema, params, bytes);
    }
    if (!opt->m || !opt->v || (config.ema_decay > 0 && !opt->ema)) {
        rsm_adamw_free(opt);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate AdamW state for %lld parameters",
                        (long long)num_params);
    }
    return RSM_OK;
}

void
rsm_adamw_free(rsm_adamw *opt)
{
    rsm_free(opt->m);
    rsm_free(opt->v);
    rsm_free(opt->ema);
    opt->m = opt->v = opt->ema = NULL;
}

rsm_status
rsm_adamw_step(rsm_adamw *opt, void *params, void *grads, double lr, double *grad_norm)
{
    return RSM_REAL_CALL(opt->dtype, adamw_step, opt, params, grads, lr, grad_norm);
}
