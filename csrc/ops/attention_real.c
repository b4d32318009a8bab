/* attention_real.c: multi-head self-attention core and the patchify reshapes of a vision
 * transformer (template, see real.h).
 *
 * Per image b and head h, with q, k, v the [T, dh] slices of qkv[b] (columns h*dh, W + h*dh,
 * 2W + h*dh of the [T, 3W] projection), (Vaswani et al. 2017):
 *   S = q k^T / sqrt(dh)      P = softmax_rows(S)      o[b][:, h*dh:(h+1)*dh] = P v
 * Backward (dP = do v^T; softmax Jacobian row-wise):
 *   dv = P^T do     dS = P * (dP - rowsum(dP * P))     dq = dS k / sqrt(dh)     dk = dS^T q / sqrt(dh)
 * The (b, h) pairs are independent: split over OpenMP threads, each product a single-threaded
 * GEMM (nested regions are off), so every element is computed by one thread in a fixed order.
 * (reference: torch.nn.functional.scaled_dot_product_attention)
 */
#include "real.h"
#include "../blas.h"
#include "real_math.h"

/* o[n*T, W] and probs[n, heads, T, T] from qkv[n*T, 3W]. */
static void
RSM_T(attention_forward)(real_t *o, real_t *probs, const real_t *qkv, int64_t n, int64_t T,
                         int64_t W, int64_t heads)
{
    const int64_t dh = W / heads;
    const real_t scale = (real_t)(1.0 / sqrt((double)dh));
    _Pragma("omp parallel for schedule(static) if (n * heads > 1 && n * T * T * W > 32768)")
    for (int64_t bh = 0; bh < n * heads; bh++) {
        int64_t b = bh / heads, h = bh % heads;
        const real_t *q = qkv + b * T * 3 * W + h * dh, *k = q + W, *v = q + 2 * W;
        real_t *p = probs + bh * T * T;
        RSM_GEMM(0, 1, T, T, dh, scale, q, 3 * W, k, 3 * W, 0, p, T);
        for (int64_t i = 0; i < T; i++) {
            real_t *row = p + i * T;
            real_t m = row[0];
            for (int64_t j = 1; j < T; j++) m = row[j] > m ? row[j] : m;
            real_t sum = 0;
            for (int64_t j = 0; j < T; j++) {
                row[j] = rsm_exp_real(row[j] - m);
                sum += row[j];
            }
            real_t inv = 1 / sum;
            for (int64_t j = 0; j < T; j++) row[j] *= inv;
        }
        RSM_GEMM(0, 0, T, dh, T, 1, p, T, v, 3 * W, 0, o + b * T * W + h * dh, W);
    }
}

/* dqkv[n*T, 3W] (overwritten) from do[n*T, W], qkv and probs; dprobs[n, heads, T, T] scratch. */
static void
RSM_T(attention_backward)(real_t *dqkv, real_t *dprobs, const real_t *dout, const real_t *qkv,
                          const real_t *probs, int64_t n, int64_t T, int64_t W, int64_t heads)
{
    const int64_t dh = W / heads;
    const real_t scale = (real_t)(1.0 / sqrt((double)dh));
    _Pragma("omp parallel for schedule(static) if (n * heads > 1 && n * T * T * W > 32768)")
    for (int64_t bh = 0; bh < n * heads; bh++) {
        int64_t b = bh / heads, h = bh % heads;
        const real_t *q = qkv + b * T * 3 * W + h * dh, *k = q + W, *v = q + 2 * W;
        real_t *dq = dqkv + b * T * 3 * W + h * dh, *dk = dq + W, *dv = dq + 2 * W;
        const real_t *p = probs + bh * T * T;
        const real_t *g = dout + b * T * W + h * dh;
        real_t *dp = dprobs + bh * T * T;
        RSM_GEMM(0, 1, T, T, dh, 1, g, W, v, 3 * W, 0, dp, T);   /* dP = do v^T */
        RSM_GEMM(1, 0, T, dh, T, 1, p, T, g, W, 0, dv, 3 * W);   /* dv = P^T do */
        for (int64_t i = 0; i < T; i++) {
            const real_t *pr = p + i * T;
            real_t *dr = dp + i * T;
            real_t dot = 0;
            for (int64_t j = 0; j < T; j++) dot += dr[j] * pr[j];
            for (int64_t j = 0; j < T; j++) dr[j] = pr[j] * (dr[j] - dot);
        }
        RSM_GEMM(0, 0, T, dh, T, scale, dp, T, k, 3 * W, 0, dq, 3 * W);  /* dq = dS k / sqrt(dh) */
        RSM_GEMM(1, 0, T, dh, T, scale, dp, T, q, 3 * W, 0, dk, 3 * W);  /* dk = dS^T q / sqrt(dh) */
    }
}

/* Patchify: x[n, C, S, S] -> tok[n, T, C*p*p], T = (S/p)^2, token index gi * G + gj (G = S/p),
 * element (c, pi, pj) of a patch at c*p*p + pi*p + pj: the layout of a Conv2d(C, W, p, stride p)
 * weight [W, C, p, p] flattened, i.e. x.reshape(n,C,G,p,G,p).permute(0,2,4,1,3,5). The map is a
 * permutation, so its backward is the inverse permutation (unpatchify), and vice versa. */
static void
RSM_T(patchify_forward)(real_t *tok, const real_t *x, int64_t n, int64_t C, int64_t S, int64_t p)
{
    const int64_t G = S / p, Pd = C * p * p;
    for (int64_t b = 0; b < n; b++)
        for (int64_t gi = 0; gi < G; gi++)
            for (int64_t gj = 0; gj < G; gj++) {
                real_t *dst = tok + ((b * G + gi) * G + gj) * Pd;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t pi = 0; pi < p; pi++)
                        for (int64_t pj = 0; pj < p; pj++)
                            dst[(c * p + pi) * p + pj] =
                                x[((b * C + c) * S + gi * p + pi) * S + gj * p + pj];
            }
}

/* Unpatchify: tok[n, T, C*p*p] -> x[n, C, S, S] (the inverse of patchify, and its backward). */
static void
RSM_T(patchify_backward)(real_t *x, const real_t *tok, int64_t n, int64_t C, int64_t S, int64_t p)
{
    const int64_t G = S / p, Pd = C * p * p;
    for (int64_t b = 0; b < n; b++)
        for (int64_t gi = 0; gi < G; gi++)
            for (int64_t gj = 0; gj < G; gj++) {
                const real_t *src = tok + ((b * G + gi) * G + gj) * Pd;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t pi = 0; pi < p; pi++)
                        for (int64_t pj = 0; pj < p; pj++)
                            x[((b * C + c) * S + gi * p + pi) * S + gj * p + pj] =
                                src[(c * p + pi) * p + pj];
            }
}

