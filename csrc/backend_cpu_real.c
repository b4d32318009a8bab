/* backend_cpu_real.c: the CPU backend's ops of one precision (template, see real.h and
 * backend.h): rsm_backend_cpu_ops_f32 / rsm_backend_cpu_ops_f64, each op the loop the C core has
 * always run (csrc/ops/, rng_real.c, objective_real.c, optim_real.c, nn/guided_real.c) or, where
 * the loop used to sit inline in its caller, that loop moved here unchanged, so a loop through
 * the table computes the same bits as before the table (tests/test_golden.py).
 *
 * Included by precision_f*.c after the templates whose static helpers it calls. Every op ignores
 * `be` (the CPU has no stream and cannot fail after allocation).
 */
#include "real.h"
#include "backend.h"
#include "nn/time_embedding.h"
#include "ops/sampler_step.h"
#include "rng.h"

#include <string.h>

static void
RSM_T(cpu_gemm)(const rsm_backend *be, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                real_t alpha, const real_t *a, int64_t lda, const real_t *b, int64_t ldb,
                real_t beta, real_t *c, int64_t ldc)
{
    (void)be;
    RSM_GEMM(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static void
RSM_T(cpu_bias_rows)(const rsm_backend *be, real_t *y, const real_t *x, const real_t *bias,
                     int64_t n, int64_t w)
{
    (void)be;
    if (x && bias) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < w; j++) y[i * w + j] = x[i * w + j] + bias[j];
        return;
    }
    if (x) {
        if (y != x) memcpy(y, x, (size_t)(n * w) * sizeof(real_t));
        return;
    }
    /* the bias test hoisted out of the loop (callgrind: the loop with it inside took twice the
     * instructions of the inline loop it replaced); +0.0 either way without a bias */
    if (!bias) {
        memset(y, 0, (size_t)(n * w) * sizeof(real_t));
        return;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < w; j++) y[i * w + j] = bias[j];
}

static void
RSM_T(cpu_bias_grad)(const rsm_backend *be, real_t *dbias, const real_t *dy, int64_t n, int64_t w)
{
    (void)be;
    /* column sums in a fixed row order: deterministic whatever the thread count */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < w; j++) dbias[j] += dy[i * w + j];
}

static void
RSM_T(cpu_add_row)(const rsm_backend *be, real_t *y, const real_t *row, int64_t n, int64_t w)
{
    (void)be;
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < w; k++) y[i * w + k] += row[k];
}

static void
RSM_T(cpu_gather_add)(const rsm_backend *be, real_t *y, const real_t *table, const real_t *ids,
                      int64_t n, int64_t w)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) {
        const real_t *e = table + (int64_t)ids[i] * w;
        for (int64_t j = 0; j < w; j++) y[i * w + j] += e[j];
    }
}

static void
RSM_T(cpu_scatter_add)(const rsm_backend *be, real_t *table, const real_t *dy, const real_t *ids,
                       int64_t n, int64_t w)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) { /* rows in a fixed order */
        real_t *e = table + (int64_t)ids[i] * w;
        for (int64_t j = 0; j < w; j++) e[j] += dy[i * w + j];
    }
}

static void
RSM_T(cpu_copy_cols)(const rsm_backend *be, real_t *dst, int64_t ld_dst, const real_t *src,
                     int64_t ld_src, int64_t rows, int64_t cols)
{
    (void)be;
    if (cols <= 0) return;
    for (int64_t i = 0; i < rows; i++)
        memcpy(dst + i * ld_dst, src + i * ld_src, (size_t)cols * sizeof(real_t));
}

static void
RSM_T(cpu_fill)(const rsm_backend *be, real_t *x, int64_t n, double value)
{
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = (real_t)value;
}

static void
RSM_T(cpu_repeat_rows)(const rsm_backend *be, real_t *dst, const real_t *src, int64_t rows,
                       int64_t width, int64_t k)
{
    (void)be;
    if (width <= 0) return;
    for (int64_t j = 0; j < rows; j++)
        for (int64_t c = 0; c < k; c++)
            memcpy(dst + (j * k + c) * width, src + j * width, (size_t)width * sizeof(real_t));
}

/* Rows are walked downwards so no source is overwritten before it is copied. */
static void
RSM_T(cpu_expand_rows)(const rsm_backend *be, real_t *rows, int64_t n, int64_t width,
                       int64_t factor)
{
    (void)be;
    if (width <= 0) return;
    for (int64_t r = n - 1; r >= 0; r--)
        for (int64_t j = factor - 1; j >= 0; j--)
            if (r * factor + j != r)
                memcpy(rows + (r * factor + j) * width, rows + r * width,
                       (size_t)width * sizeof(real_t));
}

static void
RSM_T(cpu_silu_forward)(const rsm_backend *be, real_t *y, const real_t *x, int64_t n)
{
    (void)be;
    RSM_T(silu_forward)(y, x, n);
}

static void
RSM_T(cpu_silu_backward)(const rsm_backend *be, real_t *dx, const real_t *dy, const real_t *x,
                         int64_t n)
{
    (void)be;
    RSM_T(silu_backward)(dx, dy, x, n);
}

static void
RSM_T(cpu_gelu_forward)(const rsm_backend *be, real_t *y, const real_t *x, int64_t n)
{
    (void)be;
    RSM_T(gelu_forward)(y, x, n);
}

static void
RSM_T(cpu_gelu_backward)(const rsm_backend *be, real_t *dx, const real_t *dy, const real_t *x,
                         int64_t n)
{
    (void)be;
    RSM_T(gelu_backward)(dx, dy, x, n);
}

/* Sinusoidal embedding of t in [0, 1] (Vaswani et al. / DDPM): with half = temb_dim / 2 and
 * frequencies f_k = 10000^(-k / half), row i = [sin(1000 t_i f_k), cos(1000 t_i f_k)]; the
 * factor 1000 maps [0, 1] onto the integer-timestep range these frequencies were designed for.
 * The frequencies are computed once per block of 64 (on the stack: no allocation to fail), not
 * once per row; samplers give every row the same t, and then row 0 is computed once and copied
 * (the same bits: the embedding is a function of t alone). */
#define RSM_TEMB_BLOCK 64
static void
RSM_T(cpu_time_embedding)(const rsm_backend *be, real_t *out, int64_t ld, const real_t *t,
                          int64_t n, int64_t temb_dim)
{
    (void)be;
    const int64_t half = temb_dim / 2;
    if (n <= 0 || half <= 0) return;
    int same_t = 1;
    for (int64_t i = 1; i < n && same_t; i++) same_t = t[i] == t[0];
    const int64_t rows = same_t ? 1 : n;
    for (int64_t k0 = 0; k0 < half; k0 += RSM_TEMB_BLOCK) {
        const int64_t kn = half - k0 < RSM_TEMB_BLOCK ? half - k0 : RSM_TEMB_BLOCK;
        double freq[RSM_TEMB_BLOCK];
        for (int64_t k = 0; k < kn; k++) freq[k] = rsm_time_frequency(k0 + k, half);
        _Pragma("omp parallel for schedule(static) if (rows >= 2048)")
        for (int64_t i = 0; i < rows; i++) {
            real_t *row = out + i * ld;
            for (int64_t k = 0; k < kn; k++) {
                double angle = rsm_time_angle((double)t[i], freq[k]);
                row[k0 + k] = (real_t)sin(angle);
                row[half + k0 + k] = (real_t)cos(angle);
            }
        }
    }
    if (same_t)
        for (int64_t i = 1; i < n; i++)
            memcpy(out + i * ld, out, (size_t)temb_dim * sizeof(real_t));
}
#undef RSM_TEMB_BLOCK

static void
RSM_T(cpu_layernorm_forward)(const rsm_backend *be, real_t *xhat, real_t *rstd, const real_t *x,
                             int64_t rows, int64_t w)
{
    (void)be;
    RSM_T(layernorm_forward)(xhat, rstd, x, rows, w);
}

static void
RSM_T(cpu_layernorm_backward)(const rsm_backend *be, real_t *dx, const real_t *dxhat,
                              const real_t *xhat, const real_t *rstd, int64_t rows, int64_t w,
                              int accumulate)
{
    (void)be;
    RSM_T(layernorm_backward)(dx, dxhat, xhat, rstd, rows, w, accumulate);
}

static void
RSM_T(cpu_modulate_forward)(const rsm_backend *be, real_t *y, const real_t *xhat,
                            const real_t *shift, const real_t *scale, int64_t ld, int64_t n,
                            int64_t T, int64_t w)
{
    (void)be;
    RSM_T(modulate_forward)(y, xhat, shift, scale, ld, n, T, w);
}

static void
RSM_T(cpu_modulate_backward)(const rsm_backend *be, real_t *dxhat, real_t *dshift, real_t *dscale,
                             const real_t *dy, const real_t *xhat, const real_t *scale, int64_t ld,
                             int64_t n, int64_t T, int64_t w)
{
    (void)be;
    RSM_T(modulate_backward)(dxhat, dshift, dscale, dy, xhat, scale, ld, n, T, w);
}

static void
RSM_T(cpu_gated_residual_forward)(const rsm_backend *be, real_t *x, const real_t *a,
                                  const real_t *gate, int64_t ld, int64_t n, int64_t T, int64_t w)
{
    (void)be;
    RSM_T(gated_residual_forward)(x, a, gate, ld, n, T, w);
}

static void
RSM_T(cpu_gated_residual_backward)(const rsm_backend *be, real_t *da, real_t *dgate,
                                   const real_t *dx, const real_t *a, const real_t *gate,
                                   int64_t ld, int64_t n, int64_t T, int64_t w)
{
    (void)be;
    RSM_T(gated_residual_backward)(da, dgate, dx, a, gate, ld, n, T, w);
}

static void
RSM_T(cpu_attention_forward)(const rsm_backend *be, real_t *o, real_t *probs, const real_t *qkv,
                             int64_t n, int64_t T, int64_t w, int64_t heads)
{
    (void)be;
    RSM_T(attention_forward)(o, probs, qkv, n, T, w, heads);
}

static void
RSM_T(cpu_attention_backward)(const rsm_backend *be, real_t *dqkv, real_t *dprobs,
                              const real_t *dout, const real_t *qkv, const real_t *probs,
                              int64_t n, int64_t T, int64_t w, int64_t heads)
{
    (void)be;
    RSM_T(attention_backward)(dqkv, dprobs, dout, qkv, probs, n, T, w, heads);
}

static void
RSM_T(cpu_patchify_forward)(const rsm_backend *be, real_t *tok, const real_t *x, int64_t n,
                            int64_t C, int64_t S, int64_t p)
{
    (void)be;
    RSM_T(patchify_forward)(tok, x, n, C, S, p);
}

static void
RSM_T(cpu_patchify_backward)(const rsm_backend *be, real_t *x, const real_t *tok, int64_t n,
                             int64_t C, int64_t S, int64_t p)
{
    (void)be;
    RSM_T(patchify_backward)(x, tok, n, C, S, p);
}

static void
RSM_T(cpu_guided_combine)(const rsm_backend *be, int64_t m, double scale, const real_t *u2,
                          real_t *out)
{
    (void)be;
    RSM_T(guided_combine)(m, scale, u2, out);
}

static void
RSM_T(cpu_guided_split)(const rsm_backend *be, int64_t m, double scale, const real_t *dout,
                        real_t *du2)
{
    (void)be;
    RSM_T(guided_split)(m, scale, dout, du2);
}

static void
RSM_T(cpu_guided_stack)(const rsm_backend *be, int64_t n, int64_t dim, int64_t cond_dim,
                        const real_t *null_cond, const real_t *x, const real_t *t,
                        const real_t *cond, real_t *x2, real_t *t2, real_t *cond2)
{
    (void)be;
    RSM_T(guided_stack)(n, dim, cond_dim, null_cond, x, t, cond, x2, t2, cond2);
}

static void
RSM_T(cpu_guided_sum_halves)(const rsm_backend *be, int64_t m, const real_t *dx2, real_t *dx)
{
    (void)be;
    RSM_T(guided_sum_halves)(m, dx2, dx);
}

static void
RSM_T(cpu_fill_normal)(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset,
                       int64_t n, real_t *out)
{
    (void)be;
    RSM_T(fill_normal)(seed, stream, offset, n, out);
}

static void
RSM_T(cpu_fill_uniform)(const rsm_backend *be, uint64_t seed, uint64_t stream, uint64_t offset,
                        int64_t n, real_t *out)
{
    (void)be;
    RSM_T(fill_uniform)(seed, stream, offset, n, out);
}

/* Per-element bodies (mean, next state, log-density terms) are ops/sampler_step.h's, shared
 * with the CUDA kernels. */
static void
RSM_T(cpu_sampler_step)(const rsm_backend *be, const rsm_step_coef *s, int64_t n,
                        const real_t *x, const real_t *u, real_t *z, real_t *mean, real_t *x_next)
{
    (void)be;
    const double A = s->A, K = s->K, std = s->std;
    for (int64_t k = 0; k < n; k++) {
        mean[k] = RSM_T(step_mean)(A, K, x[k], u[k]);
        if (!x_next) continue;
        if (s->stochastic) {
            x_next[k] = RSM_T(step_next)(mean[k], std, z[k]);
        } else {
            x_next[k] = mean[k];
            z[k] = 0;
        }
    }
}

static void
RSM_T(cpu_heun_predict)(const rsm_backend *be, const rsm_step_coef *s, int64_t n,
                        const real_t *x, const real_t *u, real_t *x_euler)
{
    (void)be;
    for (int64_t k = 0; k < n; k++)
        x_euler[k] = RSM_T(heun_predict)(s->dt, s->v_x, s->v_u, x[k], u[k]);
}

static void
RSM_T(cpu_heun_step)(const rsm_backend *be, const rsm_step_coef *s, int64_t n, const real_t *x,
                     const real_t *u, const real_t *x_euler, const real_t *u2, real_t *z,
                     real_t *mean, real_t *x_next)
{
    (void)be;
    for (int64_t k = 0; k < n; k++) {
        mean[k] = RSM_T(heun_mean)(s->dt, s->v_x, s->v_u, s->v_x_next, s->v_u_next, x[k], u[k],
                                   x_euler[k], u2[k]);
        x_next[k] = mean[k];
        z[k] = 0;
    }
}

/* log N(x_next; mean, std^2 I) summed over D (accumulated in double). */
static double
RSM_T(gaussian_log_prob)(const real_t *x_next, const real_t *mean, double std, int64_t dim)
{
    double sq = 0.0;
    for (int64_t d = 0; d < dim; d++) sq += RSM_T(step_sq)(x_next[d], mean[d], std);
    return rsm_step_log_prob(sq, std, dim);
}

static void
RSM_T(cpu_step_log_prob)(const rsm_backend *be, const rsm_step_coef *s, int64_t rows, int64_t dim,
                         const real_t *x_next, const real_t *mean, real_t *log_prob,
                         int64_t repeat)
{
    (void)be;
    for (int64_t r = 0; r < rows; r++) {
        double value = s->stochastic ? RSM_T(gaussian_log_prob)(x_next + r * dim, mean + r * dim,
                                                                s->std, dim)
                                     : 0.0;
        for (int64_t k = 0; k < repeat; k++) log_prob[r * repeat + k] = (real_t)value;
    }
}

static rsm_status
RSM_T(cpu_objective)(const rsm_backend *be, const rsm_objective_config *cfg, int64_t rows,
                     int64_t dim, const rsm_objective_row *coef, const real_t *u,
                     const real_t *u_old, const real_t *u_ref, const real_t *psi,
                     const real_t *noise, real_t *cotangent, double *log_ratio, uint8_t *active,
                     rsm_objective_stats *stats)
{
    (void)be;
    return RSM_T(objective)(cfg, rows, dim, coef, u, u_old, u_ref, psi, noise, cotangent,
                            log_ratio, active, stats);
}

static double
RSM_T(cpu_sum_sq_diff)(const rsm_backend *be, int64_t n, const real_t *a, const real_t *b)
{
    (void)be;
    double sum = 0.0;
    if (b) {
        for (int64_t i = 0; i < n; i++) {
            double d = (double)a[i] - (double)b[i];
            sum += d * d;
        }
    } else {
        for (int64_t i = 0; i < n; i++) sum += (double)a[i] * (double)a[i];
    }
    return sum;
}

static double
RSM_T(cpu_mse_seed)(const rsm_backend *be, int64_t n, real_t *pred, const real_t *target,
                    real_t scale)
{
    (void)be;
    double loss = 0.0;
    for (int64_t i = 0; i < n; i++) {
        real_t diff = pred[i] - target[i];
        loss += (double)diff * (double)diff;
        pred[i] = scale * diff;
    }
    return loss;
}

static void
RSM_T(cpu_pretrain_batch)(const rsm_backend *be, const rsm_path *path,
                          const rsm_pretrain_config *cfg, int64_t n, int64_t D, int64_t C,
                          const real_t *data, const real_t *data_cond, const int64_t *index,
                          const double *u_time, const double *u_drop, const real_t *eps,
                          real_t *t, real_t *xt, real_t *target, real_t *cond)
{
    (void)be;
    const rsm_param target_param = rsm_path_native_param(path);
    const real_t *null_cond = (const real_t *)cfg->null_cond;
    for (int64_t i = 0; i < n; i++) {
        double ti = cfg->t_min + (cfg->t_max - cfg->t_min) * u_time[i];
        t[i] = (real_t)ti;
        rsm_path_coef c = rsm_path_coef_at(path, (double)t[i]);
        const real_t *x0 = data + index[i] * D;
        for (int64_t d = 0; d < D; d++) {
            double e = (double)eps[i * D + d];
            xt[i * D + d] = (real_t)rsm_path_noise_elem(c, (double)x0[d], e);
            target[i * D + d] = (real_t)rsm_param_from_x0_eps(target_param, c, (double)x0[d], e);
        }
        if (C > 0) {
            /* the null condition with probability cond_dropout: the unconditional model of
             * classifier-free guidance is the same network (Ho & Salimans 2022, Alg. 1) */
            const real_t *src = u_drop && u_drop[i] < cfg->cond_dropout
                                    ? null_cond
                                    : data_cond + index[i] * C;
            memcpy(cond + i * C, src, (size_t)C * sizeof(real_t));
        }
    }
}

static rsm_status
RSM_T(cpu_adamw_step)(const rsm_backend *be, rsm_adamw *opt, real_t *params, real_t *grads,
                      double lr, double *grad_norm)
{
    (void)be;
    return RSM_T(adamw_step)(opt, params, grads, lr, grad_norm);
}

/* The table: one entry per op of backend.h's list, so an op missing here fails to compile. */
#define RSM_CPU_OP_ENTRY(ret, name, params) .name = RSM_T(cpu_##name),
const RSM_T(backend_ops) RSM_T(backend_cpu_ops) = {RSM_BACKEND_OPS(RSM_CPU_OP_ENTRY, real_t)};
#undef RSM_CPU_OP_ENTRY
