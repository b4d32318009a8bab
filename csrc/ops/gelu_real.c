/* gelu_real.c: GELU over arrays (template, see real.h; per-element bodies in gelu.h). */
#include "real.h"
#include "gelu.h"

/* y[n] = GELU(x[n]) */
static void
RSM_T(gelu_forward)(real_t *y, const real_t *x, int64_t n)
{
    _Pragma("omp parallel for schedule(static) if (n > 65536)")
    for (int64_t i = 0; i < n; i++) y[i] = RSM_T(gelu)(x[i]);
}

/* dx[n] = dy[n] * GELU'(x[n]) */
static void
RSM_T(gelu_backward)(real_t *dx, const real_t *dy, const real_t *x, int64_t n)
{
    _Pragma("omp parallel for schedule(static) if (n > 65536)")
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * RSM_T(gelu_grad)(x[i]);
}
