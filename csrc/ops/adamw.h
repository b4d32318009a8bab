/* adamw.h: the per-element AdamW update (torch.optim.AdamW semantics, see csrc/optim.h), written
 * once over real_t (real.h) and shared by the CPU loop (optim_real.c) and the CUDA kernel
 * (kernels/optim.cu).
 *
 *   g <- g clip;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
 *   p <- p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps);   ema <- d ema + (1 - d) p
 *
 * The scalar constants are computed once per step in double on the host and rounded to the
 * working precision (rsm_adamw_consts), so both devices see the same per-element inputs.
 */
// defines: rsm_adamw_clip_scale rsm_adamw_consts_f32 rsm_adamw_consts_f64 rsm_adamw_update_f32
// rsm_adamw_update_f64 rsm_ema_update_f32 rsm_ema_update_f64 (CUDA: rsm_adamw_consts<real>,
// rsm_adamw_update<real>, rsm_ema_update<real>)
#ifndef RSM_OPS_ADAMW_H
#define RSM_OPS_ADAMW_H

#include <math.h>
#include <stdint.h>

#include "../real.h"

RSM_ELEM_TEMPLATE struct RSM_E(adamw_consts) {
    real_t clip, step_size, inv_sqrt_bc2, decay, b1, b2, eps, omb1, omb2, ema_decay, one_minus_ema;
};
#ifndef __cplusplus
typedef struct RSM_T(adamw_consts) RSM_T(adamw_consts);
#endif

/* torch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)), so a norm just at or below
 * max_norm (within 1e-6) is scaled too; max_norm <= 0 means no clipping. */
static inline RSM_HOST_DEVICE double
rsm_adamw_clip_scale(double max_grad_norm, double norm)
{
    if (max_grad_norm > 0 && max_grad_norm / (norm + 1e-6) < 1.0) return max_grad_norm / (norm + 1e-6);
    return 1.0;
}

/* Element i: grads[i] is overwritten by the clipped gradient; ema may be NULL. The constants
 * come by value: through a pointer they could alias the float arrays and block vectorisation. */
RSM_ELEM void
RSM_E(adamw_update)(RSM_ET(adamw_consts) k, real_t *params, real_t *grads, real_t *m, real_t *v,
                    real_t *ema, int64_t i)
{
    real_t g = grads[i] * k.clip;
    grads[i] = g;
    m[i] = k.b1 * m[i] + k.omb1 * g;
    v[i] = k.b2 * v[i] + k.omb2 * g * g;
    real_t p = params[i] * k.decay;
    p -= k.step_size * m[i] / (sqrt(v[i]) * k.inv_sqrt_bc2 + k.eps);
    params[i] = p;
    if (ema) ema[i] = k.ema_decay * ema[i] + k.one_minus_ema * p;
}

/* EMA alone (ema <- d ema + (1 - d) p), for the device's separate EMA update. */
RSM_ELEM real_t
RSM_E(ema_update)(real_t decay, real_t one_minus_decay, real_t ema, real_t p)
{
    return decay * ema + one_minus_decay * p;
}

#endif /* RSM_OPS_ADAMW_H */
