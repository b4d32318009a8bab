/* optim_real.c: the AdamW update loop (template, see real.h and optim.h).
 *
 *   g  <- g * min(1, max_norm / (|g| + 1e-6))              (clip_grad_norm_)
 *   p  <- p - lr wd p                                      (decoupled weight decay)
 *   m  <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
 *   p  <- p - (lr / (1 - b1^k)) m / (sqrt(v) / sqrt(1 - b2^k) + eps)
 *   ema <- d ema + (1 - d) p
 */
#include "real.h"
#include "optim.h"
#include "ops/adamw.h"

rsm_status
RSM_T(adamw_step)(rsm_adamw *opt, real_t *params, real_t *grads, double lr, double *grad_norm)
{
    const rsm_adamw_config *c = &opt->config;
    const int64_t n = opt->num_params;
    RSM_CHECK(isfinite(lr) && lr >= 0, RSM_ERR_VALUE, "lr=%g must be finite and >= 0", lr);
    /* global norm in double, in a fixed order: deterministic */
    double sq = 0.0;
    for (int64_t i = 0; i < n; i++) sq += (double)grads[i] * (double)grads[i];
    double norm = sqrt(sq);
    if (grad_norm) *grad_norm = norm;
    RSM_CHECK(isfinite(norm), RSM_ERR_NUMERIC,
              "the gradient is not finite (norm=%g); parameters and optimizer state unchanged",
              norm);
    const real_t clip = (real_t)rsm_adamw_clip_scale(c->max_grad_norm, norm);
    opt->step += 1;
    const double bc1 = 1.0 - pow(c->beta1, (double)opt->step);
    const double bc2 = 1.0 - pow(c->beta2, (double)opt->step);
    /* 1 - beta in double, then rounded (as torch does): 1 - (float)0.999 is off by 1.3e-5 */
    const RSM_T(adamw_consts) k = {
        .clip = clip,
        .step_size = (real_t)(lr / bc1),
        .inv_sqrt_bc2 = (real_t)(1.0 / sqrt(bc2)),
        .decay = (real_t)(1.0 - lr * c->weight_decay),
        .b1 = (real_t)c->beta1,
        .b2 = (real_t)c->beta2,
        .eps = (real_t)c->eps,
        .omb1 = (real_t)(1.0 - c->beta1),
        .omb2 = (real_t)(1.0 - c->beta2),
        .ema_decay = (real_t)c->ema_decay,
        .one_minus_ema = (real_t)(1.0 - c->ema_decay),
    };
    real_t *m = (real_t *)opt->m, *v = (real_t *)opt->v, *ema = (real_t *)opt->ema;
    /* the per-element update is ops/adamw.h's, shared with the CUDA kernel. Each thread takes
     * its own copy of the constants: read through the shared struct they might alias the float
     * arrays, and gcc then leaves the loop scalar. */
    _Pragma("omp parallel if (n > 262144)")
    {
        const RSM_T(adamw_consts) kk = k;
        _Pragma("omp for schedule(static)")
        for (int64_t i = 0; i < n; i++) RSM_T(adamw_update)(kk, params, grads, m, v, ema, i);
    }
    return RSM_OK;
}
