/* linear_real.c: dense layer y = x W^T + b and elementwise ops on rows (template, see real.h).
 *
 * Argument order (llm.c): outputs, inputs, weights, sizes. Accumulation rule of this file:
 * parameter gradients (dweight, dbias) are ACCUMULATED (+=); input gradients (dinp) are
 * OVERWRITTEN (=) unless the function name says _accumulate.
 */
#include "real.h"
#include "../backend.h"
#include "../blas.h"
#include "activation.h"

/* rsm_silu_f32 / rsm_silu_f64 of activation.h */

/* y[n, out] = x[n, in] W[out, in]^T + b[out]      (reference: torch.nn.functional.linear)
 * through the backend's ops (backend.h): the bias rows, then the GEMM accumulating onto them. */
static void
RSM_T(linear_forward)(const rsm_backend *be, real_t *y, const real_t *x, const real_t *weight,
                      const real_t *bias, int64_t n, int64_t in, int64_t out)
{
    RSM_OP(be, bias_rows, y, NULL, bias, n, out);
    RSM_OP(be, gemm, 0, 1, n, out, in, 1, x, in, weight, in, 1, y, out);
}

/* dW[out, in] += dy^T x,  db[out] += sum_rows dy,  dx[n, in] (=, or += when accumulate) dy W */
static void
RSM_T(linear_backward)(const rsm_backend *be, real_t *dx, real_t *dweight, real_t *dbias,
                       const real_t *dy, const real_t *x, const real_t *weight, int64_t n,
                       int64_t in, int64_t out, int accumulate_dx)
{
    if (dweight) RSM_OP(be, gemm, 1, 0, out, in, n, 1, dy, out, x, in, 1, dweight, in);
    /* column sums in a fixed row order: deterministic whatever the thread count */
    if (dbias) RSM_OP(be, bias_grad, dbias, dy, n, out);
    if (dx) RSM_OP(be, gemm, 0, 0, n, in, out, 1, dy, out, weight, in, accumulate_dx ? 1 : 0, dx, in);
}

/* y = SiLU(x), elementwise over n values */
static void
RSM_T(silu_forward)(real_t *y, const real_t *x, int64_t n)
{
    _Pragma("omp parallel for schedule(static) if (n > 65536)")
    for (int64_t i = 0; i < n; i++) y[i] = RSM_T(silu)(x[i]);
}

/* dx = dy * SiLU'(x) */
static void
RSM_T(silu_backward)(real_t *dx, const real_t *dy, const real_t *x, int64_t n)
{
    _Pragma("omp parallel for schedule(static) if (n > 65536)")
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * RSM_T(silu_grad)(x[i]);
}
