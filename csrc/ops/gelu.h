/* gelu.h: per-element GELU (tanh approximation) and its derivative, shared by the CPU loops and
 * the CUDA kernels (RSM_HOST_DEVICE).
 *
 *   GELU(x) ~= 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
 *   GELU'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 *
 * (Hendrycks & Gimpel 2016; reference: torch.nn.functional.gelu(x, approximate="tanh"), the
 * activation of DiT's MLP.) float32 writes tanh(u) = 1 - 2 / (1 + e^{2u}) with rsm_expf so the
 * loop vectorises (libm's tanhf is a scalar call per element); float64 keeps libm's tanh.
 */
#ifndef RSM_GELU_H
#define RSM_GELU_H

#include <math.h>

#include "../common.h"
#include "activation.h"

#define RSM_GELU_K 0.7978845608028654  /* sqrt(2 / pi) */
#define RSM_GELU_C 0.044715

static inline RSM_HOST_DEVICE float
rsm_tanh_f32(float u)
{
    return 1.0f - 2.0f / (1.0f + rsm_expf(2.0f * u));
}

static inline RSM_HOST_DEVICE float
rsm_gelu_f32(float x)
{
    float u = (float)RSM_GELU_K * (x + (float)RSM_GELU_C * x * x * x);
    return 0.5f * x * (1.0f + rsm_tanh_f32(u));
}

static inline RSM_HOST_DEVICE float
rsm_gelu_grad_f32(float x)
{
    float u = (float)RSM_GELU_K * (x + (float)RSM_GELU_C * x * x * x);
    float th = rsm_tanh_f32(u);
    return 0.5f * (1.0f + th) +
           0.5f * x * (1.0f - th * th) * (float)RSM_GELU_K * (1.0f + 3.0f * (float)RSM_GELU_C * x * x);
}

static inline RSM_HOST_DEVICE double
rsm_gelu_f64(double x)
{
    double u = RSM_GELU_K * (x + RSM_GELU_C * x * x * x);
    return 0.5 * x * (1.0 + tanh(u));
}

static inline RSM_HOST_DEVICE double
rsm_gelu_grad_f64(double x)
{
    double u = RSM_GELU_K * (x + RSM_GELU_C * x * x * x);
    double th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * RSM_GELU_K * (1.0 + 3.0 * RSM_GELU_C * x * x);
}

#endif /* RSM_GELU_H */
