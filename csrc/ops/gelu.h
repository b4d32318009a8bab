/* gelu.h: per-element GELU (tanh approximation) and its derivative, written once over real_t
 * (real.h) and shared by the CPU loops (gelu_real.c) and the CUDA kernels (RSM_HOST_DEVICE).
 *
 *   GELU(x) ~= 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
 *   GELU'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 *
 * (Hendrycks & Gimpel 2016; reference: torch.nn.functional.gelu(x, approximate="tanh"), the
 * activation of DiT's MLP.) tanh is rsm_tanh_real (ops/real_math.h): 1 - 2 / (1 + e^{2u}) with
 * rsm_expf in float32 so the loop vectorises, libm's tanh in float64.
 */
// defines: rsm_gelu_f32 rsm_gelu_f64 rsm_gelu_grad_f32 rsm_gelu_grad_f64
#ifndef RSM_GELU_H
#define RSM_GELU_H

#include "../real.h"
#include "real_math.h"

#define RSM_GELU_K 0.7978845608028654  /* sqrt(2 / pi) */
#define RSM_GELU_C 0.044715

RSM_ELEM real_t
RSM_E(gelu)(real_t x)
{
    real_t u = (real_t)RSM_GELU_K * (x + (real_t)RSM_GELU_C * x * x * x);
    return (real_t)0.5 * x * ((real_t)1 + rsm_tanh_real(u));
}

RSM_ELEM real_t
RSM_E(gelu_grad)(real_t x)
{
    real_t u = (real_t)RSM_GELU_K * (x + (real_t)RSM_GELU_C * x * x * x);
    real_t th = rsm_tanh_real(u);
    return (real_t)0.5 * ((real_t)1 + th) +
           (real_t)0.5 * x * ((real_t)1 - th * th) * (real_t)RSM_GELU_K *
               ((real_t)1 + (real_t)3 * (real_t)RSM_GELU_C * x * x);
}

#endif /* RSM_GELU_H */
