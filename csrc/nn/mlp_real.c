/* mlp_real.c: forward and backward of the MLP backbone (template, see real.h and mlp.h).
 *
 * Shapes (B rows, D = dim, H = hidden, I = in_dim = D + temb_dim + cond_dim, L = depth):
 *   saved activations, one contiguous block per tensor:
 *     inp [B, I]   h [L + 1][B, H]   pre [L][B, H]   act [L][B, H]   feat [B, H]
 *   backward scratch:  dh [B, H]   dact [B, H]   dpre [B, H]   dinp [B, I]
 * Accumulation: parameter gradients +=, activation gradients = (except the residual merge).
 */
#include "real.h"
#include "mlp.h"
#include "../backend.h"
#include "../checked.h"
#include "../rng.h"

#include <stdlib.h>
#include <string.h>

/* linear_real.c's static helpers are in the same translation unit (precision_f*.c) */

typedef struct {
    real_t *inp, *h, *pre, *act, *feat;
} RSM_T(mlp_acts);

static RSM_T(mlp_acts)
RSM_T(mlp_point_acts)(const rsm_mlp *mlp, int64_t rows)
{
    const rsm_mlp_config *c = &mlp->config;
    int64_t H = c->hidden, L = c->depth;
    RSM_T(mlp_acts) a;
    a.inp = (real_t *)mlp->acts;
    a.h = a.inp + rows * mlp->layout.in_dim;
    a.pre = a.h + (L + 1) * rows * H;
    a.act = a.pre + L * rows * H;
    a.feat = a.act + L * rows * H;
    return a;
}

static rsm_status
RSM_T(mlp_reserve)(rsm_mlp *mlp, int64_t rows)
{
    if (rows <= mlp->acts_rows) return RSM_OK;
    const rsm_mlp_config *c = &mlp->config;
    int64_t H = c->hidden, L = c->depth, I = mlp->layout.in_dim;
    /* per row: inp I, h (L + 1) H, pre and act L H each, feat H; scratch 3 H + I */
    int ok = 1;
    int64_t per_row = rsm_size_add(rsm_size_mul(rsm_size_add(rsm_size_mul(3, L, &ok), 2, &ok), H, &ok),
                                   I, &ok);
    size_t acts, scratch;
    RSM_TRY(rsm_size_bytes(rsm_size_mul(rows, per_row, &ok), ok, 1, "the MLP's activations", &acts));
    RSM_TRY(rsm_size_bytes(rsm_size_mul(rows, rsm_size_add(rsm_size_mul(3, H, &ok), I, &ok), &ok), ok,
                           1, "the MLP's backward scratch", &scratch));
    const rsm_backend *be = rsm_backend_or_cpu(mlp->backend);
    real_t *new_acts = (real_t *)rsm_backend_alloc(be, acts, sizeof(real_t));
    real_t *new_scratch = (real_t *)rsm_backend_alloc(be, scratch, sizeof(real_t));
    if (!new_acts || !new_scratch) {
        rsm_backend_free(be, new_acts);
        rsm_backend_free(be, new_scratch);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate MLP activations for %lld rows",
                        (long long)rows);
    }
    rsm_backend_free(be, mlp->acts);
    rsm_backend_free(be, mlp->scratch);
    mlp->acts = new_acts;
    mlp->scratch = new_scratch;
    mlp->acts_rows = rows;
    return RSM_OK;
}

rsm_status
RSM_T(mlp_init_params)(const rsm_mlp *mlp, uint64_t seed)
{
    const rsm_mlp_config *c = &mlp->config;
    const rsm_mlp_layout *l = &mlp->layout;
    real_t *p = (real_t *)mlp->params;
    int64_t H = c->hidden;
    /* One uniform stream for all parameters, in flat order; U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as
     * torch.nn.Linear's default. The output layer is zero (see mlp.h). */
    double *u = (double *)malloc((size_t)l->num_params * sizeof(double));
    /* refused before anything is written: a failed re-draw leaves the parameters as they were */
    RSM_CHECK(u != NULL, RSM_ERR_MEMORY, "cannot allocate the initialisation draws of %lld parameters",
              (long long)l->num_params);
    rsm_fill_uniform_f64(seed, rsm_stream_id(RSM_STREAM_INIT, 0, 0), 0, l->num_params, u);
    for (int64_t k = 0; k < l->out_w; k++) {
        int64_t fan_in;
        if (k < l->block0) {
            fan_in = l->in_dim;
        } else {
            fan_in = H;
        }
        double bound = 1.0 / sqrt((double)fan_in);
        p[k] = (real_t)((2.0 * u[k] - 1.0) * bound);
    }
    for (int64_t k = l->out_w; k < l->num_params; k++) p[k] = 0;
    free(u);
    return RSM_OK;
}

rsm_status
RSM_T(mlp_forward)(rsm_mlp *mlp, int64_t n, const real_t *x, const real_t *t, const real_t *cond,
                   real_t *out)
{
    RSM_TRY(RSM_T(mlp_reserve)(mlp, n > 0 ? n : 1));
    const rsm_backend *be = rsm_backend_or_cpu(mlp->backend);
    const rsm_mlp_config *c = &mlp->config;
    const rsm_mlp_layout *l = &mlp->layout;
    const real_t *p = (const real_t *)mlp->params;
    int64_t D = c->dim, H = c->hidden, L = c->depth, I = l->in_dim;
    RSM_T(mlp_acts) a = RSM_T(mlp_point_acts)(mlp, n);

    /* input = [x, temb(t), cond] (the sinusoidal embedding: the backend's time_embedding) */
    const int64_t F = c->temb_dim, C = c->cond_dim;
    RSM_OP(be, copy_cols, a.inp, I, x, D, n, D);
    RSM_OP(be, time_embedding, a.inp + D, I, t, n, F);
    if (C > 0) RSM_OP(be, copy_cols, a.inp + D + F, I, cond, C, n, C);
    RSM_T(linear_forward)(be, a.h, a.inp, p + l->in_w, p + l->in_b, n, I, H);
    for (int64_t b = 0; b < L; b++) {
        const real_t *w = p + l->block0 + b * l->block_size;
        const real_t *w1 = w, *b1 = w + H * H, *w2 = b1 + H, *b2 = w2 + H * H;
        real_t *h_in = a.h + b * n * H, *h_out = h_in + n * H;
        real_t *pre = a.pre + b * n * H, *act = a.act + b * n * H;
        RSM_T(linear_forward)(be, pre, h_in, w1, b1, n, H, H);
        RSM_OP(be, silu_forward, act, pre, n * H);
        /* residual: h_out = h_in + act W2^T + b2 */
        RSM_OP(be, bias_rows, h_out, h_in, b2, n, H);
        RSM_OP(be, gemm, 0, 1, n, H, H, 1, act, H, w2, H, 1, h_out, H);
    }
    RSM_OP(be, silu_forward, a.feat, a.h + L * n * H, n * H);
    RSM_T(linear_forward)(be, out, a.feat, p + l->out_w, p + l->out_b, n, H, D);
    return be->check(be);
}

rsm_status
RSM_T(mlp_backward)(rsm_mlp *mlp, int64_t n, const real_t *dout, real_t *dparams, real_t *dx)
{
    RSM_CHECK(n <= mlp->acts_rows, RSM_ERR_INTERNAL,
              "backward of %lld rows without a matching forward", (long long)n);
    const rsm_backend *be = rsm_backend_or_cpu(mlp->backend);
    const rsm_mlp_config *c = &mlp->config;
    const rsm_mlp_layout *l = &mlp->layout;
    const real_t *p = (const real_t *)mlp->params;
    int64_t D = c->dim, H = c->hidden, L = c->depth, I = l->in_dim;
    RSM_T(mlp_acts) a = RSM_T(mlp_point_acts)(mlp, n);
    real_t *dh = (real_t *)mlp->scratch;
    real_t *dact = dh + n * H, *dpre = dact + n * H, *dinp = dpre + n * H;
    real_t *g = dparams; /* NULL: input VJP only */

    /* out = feat W_out^T + b_out;  feat = SiLU(h_L) */
    RSM_T(linear_backward)(be, dact, g ? g + l->out_w : NULL, g ? g + l->out_b : NULL, dout, a.feat,
                           p + l->out_w, n, H, D, 0);
    RSM_OP(be, silu_backward, dh, dact, a.h + L * n * H, n * H);
    for (int64_t b = L - 1; b >= 0; b--) {
        const real_t *w = p + l->block0 + b * l->block_size;
        const real_t *w1 = w, *w2 = w + H * H + H;
        real_t *gw = g ? g + l->block0 + b * l->block_size : NULL;
        real_t *h_in = a.h + b * n * H;
        real_t *pre = a.pre + b * n * H, *act = a.act + b * n * H;
        /* h_out = h_in + act W2^T + b2: dh flows to h_in unchanged (residual) and into act */
        RSM_T(linear_backward)(be, dact, gw ? gw + H * H + H : NULL, gw ? gw + 2 * H * H + H : NULL,
                               dh, act, w2, n, H, H, 0);
        RSM_OP(be, silu_backward, dpre, dact, pre, n * H);
        /* pre = h_in W1^T + b1: dh += dpre W1 (the residual merge accumulates) */
        RSM_T(linear_backward)(be, dh, gw, gw ? gw + H * H : NULL, dpre, h_in, w1, n, H, H, 1);
    }
    /* h_0 = inp W_in^T + b_in */
    RSM_T(linear_backward)(be, dx ? dinp : NULL, g ? g + l->in_w : NULL, g ? g + l->in_b : NULL, dh,
                           a.inp, p + l->in_w, n, I, H, 0);
    if (dx) RSM_OP(be, copy_cols, dx, D, dinp, I, n, D);
    return be->check(be);
}
