/* layernorm_real.c: LayerNorm without affine parameters and the adaLN modulation of DiT
 * (template, see real.h).
 *
 *   xhat = (x - mean(x)) / sqrt(var(x) + eps)   per row of length W (biased variance, eps 1e-6;
 *                                               torch.nn.LayerNorm(W, elementwise_affine=False))
 *   y    = xhat * (1 + scale[b]) + shift[b]      adaLN modulation (Peebles & Xie 2023, DiT §3.2):
 *                                               scale/shift are per image b, shared by its tokens
 */
#include "real.h"

#define RSM_LAYERNORM_EPS 1e-6

/* xhat[rows, W] = LN(x[rows, W]); rstd[rows] = 1/sqrt(var + eps) saved for the backward.
 * Two passes (mean, then the centred sum of squares: no cancellation), each an `omp simd`
 * reduction in real_t so the loops vectorise; the lane order is fixed at compile time, so the
 * result is deterministic. */
static void
RSM_T(layernorm_forward)(real_t *xhat, real_t *rstd, const real_t *x, int64_t rows, int64_t W)
{
    _Pragma("omp parallel for schedule(static) if (rows * W > 65536)")
    for (int64_t r = 0; r < rows; r++) {
        const real_t *xr = x + r * W;
        real_t sum = 0, sq = 0;
        _Pragma("omp simd reduction(+:sum)")
        for (int64_t j = 0; j < W; j++) sum += xr[j];
        const real_t mean = sum / (real_t)W;
        _Pragma("omp simd reduction(+:sq)")
        for (int64_t j = 0; j < W; j++) sq += (xr[j] - mean) * (xr[j] - mean);
        const real_t s = (real_t)(1.0 / sqrt((double)(sq / (real_t)W) + RSM_LAYERNORM_EPS));
        rstd[r] = s;
        real_t *out = xhat + r * W;
        for (int64_t j = 0; j < W; j++) out[j] = (xr[j] - mean) * s;
    }
}

/* dx[rows, W] (=, or += when accumulate) from dxhat[rows, W], xhat, rstd:
 *   dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat * xhat)) */
static void
RSM_T(layernorm_backward)(real_t *dx, const real_t *dxhat, const real_t *xhat, const real_t *rstd,
                          int64_t rows, int64_t W, int accumulate)
{
    _Pragma("omp parallel for schedule(static) if (rows * W > 65536)")
    for (int64_t r = 0; r < rows; r++) {
        const real_t *g = dxhat + r * W, *h = xhat + r * W;
        real_t mg = 0, mgh = 0;
        _Pragma("omp simd reduction(+:mg, mgh)")
        for (int64_t j = 0; j < W; j++) {
            mg += g[j];
            mgh += g[j] * h[j];
        }
        mg /= (real_t)W;
        mgh /= (real_t)W;
        real_t s = rstd[r], a = mg, b = mgh;
        real_t *out = dx + r * W;
        if (accumulate)
            for (int64_t j = 0; j < W; j++) out[j] += s * (g[j] - a - h[j] * b);
        else
            for (int64_t j = 0; j < W; j++) out[j] = s * (g[j] - a - h[j] * b);
    }
}

/* y[n, T, W] = xhat[n, T, W] * (1 + scale[n, W]) + shift[n, W]; scale and shift are rows of a
 * modulation matrix with row stride ld (the 6W or 2W adaLN output). */
static void
RSM_T(modulate_forward)(real_t *y, const real_t *xhat, const real_t *shift, const real_t *scale,
                        int64_t ld, int64_t n, int64_t T, int64_t W)
{
    _Pragma("omp parallel for schedule(static) if (n * T * W > 65536)")
    for (int64_t b = 0; b < n; b++) {
        const real_t *sh = shift + b * ld, *sc = scale + b * ld;
        for (int64_t t = 0; t < T; t++) {
            const real_t *h = xhat + (b * T + t) * W;
            real_t *out = y + (b * T + t) * W;
            for (int64_t j = 0; j < W; j++) out[j] = h[j] * (1 + sc[j]) + sh[j];
        }
    }
}

/* Backward of modulate: dxhat = dy * (1 + scale) (overwritten); dshift[b] += sum_t dy,
 * dscale[b] += sum_t dy * xhat (rows of a gradient matrix with stride ld). */
static void
RSM_T(modulate_backward)(real_t *dxhat, real_t *dshift, real_t *dscale, const real_t *dy,
                         const real_t *xhat, const real_t *scale, int64_t ld, int64_t n, int64_t T,
                         int64_t W)
{
    _Pragma("omp parallel for schedule(static) if (n * T * W > 65536)")
    for (int64_t b = 0; b < n; b++) {
        const real_t *sc = scale + b * ld;
        real_t *dsh = dshift + b * ld, *dsc = dscale + b * ld;
        for (int64_t t = 0; t < T; t++) {
            const real_t *g = dy + (b * T + t) * W, *h = xhat + (b * T + t) * W;
            real_t *out = dxhat + (b * T + t) * W;
            /* omp simd: out, dsh and dsc are distinct buffers, which the compiler cannot prove
             * (measured: without it this loop stayed scalar, ~2% of a DiT forward+vjp) */
            _Pragma("omp simd")
            for (int64_t j = 0; j < W; j++) {
                out[j] = g[j] * (1 + sc[j]);
                dsh[j] += g[j];
                dsc[j] += g[j] * h[j];
            }
        }
    }
}

/* Gated residual of adaLN-Zero: x[n, T, W] += gate[n, W] * a[n, T, W] (gate rows stride ld). */
static void
RSM_T(gated_residual_forward)(real_t *x, const real_t *a, const real_t *gate, int64_t ld,
                              int64_t n, int64_t T, int64_t W)
{
    _Pragma("omp parallel for schedule(static) if (n * T * W > 65536)")
    for (int64_t b = 0; b < n; b++) {
        const real_t *gt = gate + b * ld;
        for (int64_t t = 0; t < T; t++) {
            real_t *xr = x + (b * T + t) * W;
            const real_t *ar = a + (b * T + t) * W;
            for (int64_t j = 0; j < W; j++) xr[j] += gt[j] * ar[j];
        }
    }
}

/* Backward of the gated residual (the identity path is the caller's): da = gate * dx
 * (overwritten), dgate[b] += sum_t dx * a. */
static void
RSM_T(gated_residual_backward)(real_t *da, real_t *dgate, const real_t *dx, const real_t *a,
                               const real_t *gate, int64_t ld, int64_t n, int64_t T, int64_t W)
{
    _Pragma("omp parallel for schedule(static) if (n * T * W > 65536)")
    for (int64_t b = 0; b < n; b++) {
        const real_t *gt = gate + b * ld;
        real_t *dg = dgate + b * ld;
        for (int64_t t = 0; t < T; t++) {
            const real_t *g = dx + (b * T + t) * W, *ar = a + (b * T + t) * W;
            real_t *out = da + (b * T + t) * W;
            _Pragma("omp simd")   /* da and dgate are distinct buffers (as in modulate_backward) */
            for (int64_t j = 0; j < W; j++) {
                out[j] = gt[j] * g[j];
                dg[j] += g[j] * ar[j];
            }
        }
    }
}
