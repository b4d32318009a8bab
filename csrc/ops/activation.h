/* activation.h: per-element SiLU and its derivative, written once over real_t (real.h) and
 * shared by the CPU loops (linear_real.c) and the CUDA kernels (kernels/elementwise.cu).
 * The exp is rsm_exp_real (ops/real_math.h): the vectorisable rsm_expf in float32, libm's exp
 * in float64.
 */
// defines: rsm_silu_f32 rsm_silu_f64 rsm_silu_grad_f32 rsm_silu_grad_f64 (CUDA: rsm_silu<real>,
// rsm_silu_grad<real>)
#ifndef RSM_ACTIVATION_H
#define RSM_ACTIVATION_H

#include "../real.h"
#include "real_math.h"

/* SiLU(x) = x * sigmoid(x)  (reference: torch.nn.functional.silu) */
RSM_ELEM real_t
RSM_E(silu)(real_t x)
{
    return x / ((real_t)1 + rsm_exp_real(-x));
}

/* d SiLU / dx = sigmoid(x) (1 + x (1 - sigmoid(x))) */
RSM_ELEM real_t
RSM_E(silu_grad)(real_t x)
{
    real_t s = (real_t)1 / ((real_t)1 + rsm_exp_real(-x));
    return s * ((real_t)1 + x * ((real_t)1 - s));
}

#endif /* RSM_ACTIVATION_H */
