/* real_math.h: the math primitives that differ by precision, for the element bodies of csrc/ops/
 * (CPU and CUDA, RSM_HOST_DEVICE). Everything else is written once over real_t (see real.h).
 *
 * float32 uses rsm_expf, a branch-free exp (Cody-Waite reduction + degree-6 polynomial, max error
 * about 2 ulp on [-87, 88]) that the compiler vectorises; libm's expf is a scalar call per element
 * and made SiLU cost as much as the matrix products at batch 256. tanh likewise as
 * 1 - 2 / (1 + e^{2u}) with rsm_expf (libm's tanhf is a scalar call). float64 (gradient checks)
 * keeps libm's exp and tanh.
 *
 * rsm_exp_real(x) / rsm_tanh_real(x) pick by the type of x: a C11 _Generic in C, an overload in
 * C++ (CUDA). sqrt needs no entry: <tgmath.h> (C) and the CUDA math overloads already pick sqrtf
 * for a float.
 */
// defines: rsm_expf rsm_tanhf rsm_exp_real rsm_tanh_real
#ifndef RSM_OPS_REAL_MATH_H
#define RSM_OPS_REAL_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common.h"

static inline RSM_HOST_DEVICE float
rsm_expf(float x)
{
    /* clamp: below -87.3 the result underflows to (near) 0, above 88.7 it overflows */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* x = n ln2 + r, |r| <= ln2 / 2; ln2 split in a high part exact in float and a low part.
     * n = floor(y): round to nearest by adding and subtracting 1.5 2^23 (exact for |y| < 2^22),
     * then step down where that rounded up. The same value as floorf(y), written so that gcc
     * vectorises it without -fno-trapping-math (floorf, or a float -> int -> float round trip
     * after the clamp, left the SiLU loops scalar: about 8x slower). */
    float y = x * 1.44269504088896341f + 0.5f;
    float n = (y + 12582912.0f) - 12582912.0f;
    n -= n > y ? 1.0f : 0.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    /* e^r by its Taylor polynomial (Horner); degree 6 reaches float precision for |r| <= 0.347 */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* scale by 2^n through the exponent bits */
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

static inline RSM_HOST_DEVICE float
rsm_tanhf(float u)
{
    return 1.0f - 2.0f / (1.0f + rsm_expf(2.0f * u));
}

#ifdef __cplusplus
static inline RSM_HOST_DEVICE float
rsm_exp_real(float x)
{
    return rsm_expf(x);
}

static inline RSM_HOST_DEVICE double
rsm_exp_real(double x)
{
    return exp(x);
}

static inline RSM_HOST_DEVICE float
rsm_tanh_real(float x)
{
    return rsm_tanhf(x);
}

static inline RSM_HOST_DEVICE double
rsm_tanh_real(double x)
{
    return tanh(x);
}
#else
/* (exp and tanh not followed by '(' are libm's double functions, also under <tgmath.h>) */
#define rsm_exp_real(x) _Generic((x), float: rsm_expf, double: exp)(x)
#define rsm_tanh_real(x) _Generic((x), float: rsm_tanhf, double: tanh)(x)
#endif

#endif /* RSM_OPS_REAL_MATH_H */
