/* optim.h: AdamW (Loshchilov & Hutter 2019, torch.optim.AdamW semantics: bias correction,
 * decoupled weight decay), global gradient-norm clipping (torch.nn.utils.clip_grad_norm_) and an
 * exponential moving average of the parameters. One loop over the flat parameter buffer.
 */
#ifndef RSM_OPTIM_H
#define RSM_OPTIM_H

#include <stdint.h>

#include "real_api.h"
#include "status.h"
#include "tensor.h"

typedef struct rsm_adamw_config {
    double lr;            /* learning rate */
    double beta1, beta2;  /* moment decays (0.9, 0.999) */
    double eps;           /* denominator guard (1e-8) */
    double weight_decay;  /* decoupled: p -= lr * wd * p */
    double max_grad_norm; /* clip the global L2 norm to this; <= 0: no clipping */
    double ema_decay;     /* ema = d ema + (1 - d) p after each step; 0: no EMA */
} rsm_adamw_config;

typedef struct rsm_adamw {
    rsm_adamw_config config;
    rsm_dtype dtype;
    int64_t num_params;
    int64_t step; /* completed steps */
    void *m, *v;  /* [num_params] first and second moments */
    void *ema;    /* [num_params] or NULL */
} rsm_adamw;

rsm_status rsm_adamw_check_config(const rsm_adamw_config *config);
rsm_status rsm_adamw_init(rsm_adamw *opt, rsm_adamw_config config, rsm_dtype dtype,
                          int64_t num_params, const void *params);
void rsm_adamw_free(rsm_adamw *opt);

/* One update of params from grads (grads are scaled in place when clipped). Returns the global
 * gradient norm before clipping. A non-finite norm is RSM_ERR_NUMERIC and changes nothing. */
rsm_status rsm_adamw_step(rsm_adamw *opt, void *params, void *grads, double lr,
                          double *grad_norm);
/* its precisions rsm_adamw_step_f32/_f64 (optim_real.c), declared by real_api.h */
RSM_DECLARE_REAL_API(RSM_API_OPTIM)

#endif /* RSM_OPTIM_H */
