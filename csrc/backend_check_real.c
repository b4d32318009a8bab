/* backend_check_real.c: the op-by-op check of a backend table against the CPU loops (template,
 * see real.h and backend.h; a test hook: tests/test_backend.py through rsm._C.backend_check).
 *
 * For every op of one precision, random inputs (Philox, fixed seed) go through be's op and
 * through the CPU's reference: the direct call of the loop the CPU backend wraps (the BLAS GEMM,
 * the csrc/ops/ loops, rng_real.c, guided_real.c, objective_real.c, optim_real.c) or, for the
 * loops that moved into the backend (bias rows, row copies, the sampler step, ...), the formula
 * backend.h states for the op, evaluated in the same element order. The results must agree BIT
 * FOR BIT on the CPU (a device backend would be held to a tolerance instead: not this hook).
 * Ops that need a path and a model's configuration (pretrain_batch) are checked through the
 * loops that call them (tests/test_golden.py).
 */
#include "real.h"
#include "backend.h"
#include "nn/time_embedding.h"
#include "ops/sampler_step.h"
#include "rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct RSM_T(backend_checker) {
    const rsm_backend *be;
    int64_t mismatches;
    char *checked; /* space-separated names of the ops compared */
    size_t checked_len;
    char *msg; /* the first mismatches */
    size_t msg_len;
    /* values that reach libm (log, exp) read from memory at run time: a constant would let the
     * compiler fold the reference's log(std) at build time, correctly rounded, where the op calls
     * the run-time libm (a last-bit difference that is not the backend's) */
    double std;
    int64_t temb_dim;
} RSM_T(backend_checker);

static void
RSM_T(bc_append)(char *dst, size_t len, const char *text)
{
    size_t used = strlen(dst);
    if (used + strlen(text) + 2 < len) {
        if (used) strcat(dst, " ");
        strcat(dst, text);
    }
}

/* records `name` as checked (once) and a mismatch when the bytes differ */
static void
RSM_T(bc_compare)(RSM_T(backend_checker) *c, const char *name, const void *got,
                  const void *want, size_t bytes)
{
    char key[64];
    snprintf(key, sizeof(key), " %s ", name);
    char padded[4096];
    snprintf(padded, sizeof(padded), " %s ", c->checked);
    if (!strstr(padded, key)) RSM_T(bc_append)(c->checked, c->checked_len, name);
    if (memcmp(got, want, bytes) != 0) {
        c->mismatches++;
        RSM_T(bc_append)(c->msg, c->msg_len, name);
    }
}

/* n normals of stream `salt` (scaled), the inputs of one check */
static void
RSM_T(bc_normals)(real_t *out, int64_t n, uint64_t salt, double scale)
{
    RSM_T(fill_normal)(0x5eedULL, salt, 0, n, out);
    for (int64_t i = 0; i < n; i++) out[i] = (real_t)(scale * (double)out[i]);
}

#define RSM_BC_BYTES(count) ((size_t)(count) * sizeof(real_t))

/* dense algebra, rows, activations, norms, attention, guidance */
static void
RSM_T(bc_layers)(RSM_T(backend_checker) *c, real_t *in, real_t *a, real_t *b, real_t *w)
{
    const rsm_backend *be = c->be;
    const int64_t m = 7, n = 5, k = 6;
    /* gemm: every transpose, alpha and beta not 1 */
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            RSM_T(bc_normals)(a, m * n, 3, 1.0);
            memcpy(b, a, RSM_BC_BYTES(m * n));
            RSM_OP(be, gemm, ta, tb, m, n, k, (real_t)0.75, in, ta ? m : k, w, tb ? k : n,
                   (real_t)0.5, a, n);
            RSM_GEMM(ta, tb, m, n, k, (real_t)0.75, in, ta ? m : k, w, tb ? k : n, (real_t)0.5, b,
                     n);
            RSM_T(bc_compare)(c, "gemm", a, b, RSM_BC_BYTES(m * n));
        }
    /* bias_rows: with x, bias only, neither */
    RSM_OP(be, bias_rows, a, in, w, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[i * n + j] = in[i * n + j] + w[j];
    RSM_T(bc_compare)(c, "bias_rows", a, b, RSM_BC_BYTES(m * n));
    RSM_OP(be, bias_rows, a, NULL, w, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[i * n + j] = w[j];
    RSM_T(bc_compare)(c, "bias_rows", a, b, RSM_BC_BYTES(m * n));
    RSM_OP(be, bias_rows, a, NULL, NULL, m, n);
    memset(b, 0, RSM_BC_BYTES(m * n));
    RSM_T(bc_compare)(c, "bias_rows", a, b, RSM_BC_BYTES(m * n));
    /* bias_grad, add_row: accumulate in row order */
    memcpy(a, w, RSM_BC_BYTES(n));
    memcpy(b, w, RSM_BC_BYTES(n));
    RSM_OP(be, bias_grad, a, in, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[j] += in[i * n + j];
    RSM_T(bc_compare)(c, "bias_grad", a, b, RSM_BC_BYTES(n));
    memcpy(a, in, RSM_BC_BYTES(m * n));
    memcpy(b, in, RSM_BC_BYTES(m * n));
    RSM_OP(be, add_row, a, w, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[i * n + j] += w[j];
    RSM_T(bc_compare)(c, "add_row", a, b, RSM_BC_BYTES(m * n));
    /* gather_add / scatter_add with repeated ids (the scatter's order matters) */
    const real_t ids[7] = {2, 0, 2, 1, 3, 2, 0};
    memcpy(a, in, RSM_BC_BYTES(m * n));
    memcpy(b, in, RSM_BC_BYTES(m * n));
    RSM_OP(be, gather_add, a, w, ids, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[i * n + j] += w[(int64_t)ids[i] * n + j];
    RSM_T(bc_compare)(c, "gather_add", a, b, RSM_BC_BYTES(m * n));
    memcpy(a, w, RSM_BC_BYTES(4 * n));
    memcpy(b, w, RSM_BC_BYTES(4 * n));
    RSM_OP(be, scatter_add, a, in, ids, m, n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) b[(int64_t)ids[i] * n + j] += in[i * n + j];
    RSM_T(bc_compare)(c, "scatter_add", a, b, RSM_BC_BYTES(4 * n));
    /* copy_cols: 3 columns of 5 into rows of 4 */
    memset(a, 0, RSM_BC_BYTES(m * 4));
    memset(b, 0, RSM_BC_BYTES(m * 4));
    RSM_OP(be, copy_cols, a, 4, in, n, m, 3);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < 3; j++) b[i * 4 + j] = in[i * n + j];
    RSM_T(bc_compare)(c, "copy_cols", a, b, RSM_BC_BYTES(m * 4));
    RSM_OP(be, fill, a, m, 0.1);
    for (int64_t i = 0; i < m; i++) b[i] = (real_t)0.1;
    RSM_T(bc_compare)(c, "fill", a, b, RSM_BC_BYTES(m));
    /* repeat_rows, expand_rows: 3 rows of 5, 4 copies each */
    RSM_OP(be, repeat_rows, a, in, 3, n, 4);
    for (int64_t r = 0; r < 3; r++)
        for (int64_t q = 0; q < 4; q++)
            for (int64_t j = 0; j < n; j++) b[(r * 4 + q) * n + j] = in[r * n + j];
    RSM_T(bc_compare)(c, "repeat_rows", a, b, RSM_BC_BYTES(12 * n));
    memcpy(a, in, RSM_BC_BYTES(3 * n));
    RSM_OP(be, expand_rows, a, 3, n, 4);
    RSM_T(bc_compare)(c, "expand_rows", a, b, RSM_BC_BYTES(12 * n));
    /* activations (dx aliasing dy, as the DiT's GELU backward) */
    const int64_t e = m * n;
#define RSM_BC_ACTIVATION(fwd, bwd)                                                                \
    RSM_OP(be, fwd, a, in, e);                                                                     \
    RSM_T(fwd)(b, in, e);                                                                          \
    RSM_T(bc_compare)(c, #fwd, a, b, RSM_BC_BYTES(e));                                             \
    memcpy(a, w, RSM_BC_BYTES(e));                                                                 \
    memcpy(b, w, RSM_BC_BYTES(e));                                                                 \
    RSM_OP(be, bwd, a, a, in, e);                                                                  \
    RSM_T(bwd)(b, b, in, e);                                                                       \
    RSM_T(bc_compare)(c, #bwd, a, b, RSM_BC_BYTES(e));
    RSM_BC_ACTIVATION(silu_forward, silu_backward)
    RSM_BC_ACTIVATION(gelu_forward, gelu_backward)
#undef RSM_BC_ACTIVATION
    /* time_embedding: distinct times, then one shared time (the copied-row path) */
    real_t t[7];
    for (int64_t i = 0; i < m; i++) t[i] = (real_t)(0.13 * (double)i + 0.01);
    for (int pass = 0; pass < 2; pass++) {
        if (pass) for (int64_t i = 0; i < m; i++) t[i] = (real_t)0.37;
        const int64_t F = c->temb_dim, ld = 12, half = F / 2;
        memset(a, 0, RSM_BC_BYTES(m * ld));
        memset(b, 0, RSM_BC_BYTES(m * ld));
        RSM_OP(be, time_embedding, a, ld, t, m, F);
        for (int64_t i = 0; i < m; i++)
            for (int64_t q = 0; q < half; q++) {
                double angle = rsm_time_angle((double)t[i], rsm_time_frequency(q, half));
                b[i * ld + q] = (real_t)sin(angle);
                b[i * ld + half + q] = (real_t)cos(angle);
            }
        RSM_T(bc_compare)(c, "time_embedding", a, b, RSM_BC_BYTES(m * ld));
    }
    /* guidance (m = 35 values, stacked halves) */
    RSM_OP(be, guided_combine, e, 2.5, in, a);
    RSM_T(guided_combine)(e, 2.5, in, b);
    RSM_T(bc_compare)(c, "guided_combine", a, b, RSM_BC_BYTES(e));
    RSM_OP(be, guided_split, e, 2.5, in, a);
    RSM_T(guided_split)(e, 2.5, in, b);
    RSM_T(bc_compare)(c, "guided_split", a, b, RSM_BC_BYTES(2 * e));
    RSM_OP(be, guided_sum_halves, e, in, a);
    RSM_T(guided_sum_halves)(e, in, b);
    RSM_T(bc_compare)(c, "guided_sum_halves", a, b, RSM_BC_BYTES(e));
    /* stack: n = 3 rows, dim 2, cond 2: x2 [6, 2], t2 [6], cond2 [6, 2] */
    RSM_OP(be, guided_stack, 3, 2, 2, w, in, in + 6, in + 9, a, a + 12, a + 18);
    RSM_T(guided_stack)(3, 2, 2, w, in, in + 6, in + 9, b, b + 12, b + 18);
    RSM_T(bc_compare)(c, "guided_stack", a, b, RSM_BC_BYTES(30));
}

/* layernorm, adaLN, attention, patches: n = 2 images, T = 4 tokens, W = 6, 2 heads */
static void
RSM_T(bc_dit)(RSM_T(backend_checker) *c, real_t *in, real_t *a, real_t *b, real_t *w)
{
    const rsm_backend *be = c->be;
    const int64_t n = 2, T = 4, W = 6, NT = n * T, H = 2;
    real_t ra[8], rb[8];
    RSM_OP(be, layernorm_forward, a, ra, in, NT, W);
    RSM_T(layernorm_forward)(b, rb, in, NT, W);
    RSM_T(bc_compare)(c, "layernorm_forward", a, b, RSM_BC_BYTES(NT * W));
    RSM_T(bc_compare)(c, "layernorm_forward", ra, rb, RSM_BC_BYTES(NT));
    for (int acc = 0; acc < 2; acc++) {
        memcpy(a + NT * W, w, RSM_BC_BYTES(NT * W));
        memcpy(b + NT * W, w, RSM_BC_BYTES(NT * W));
        RSM_OP(be, layernorm_backward, a + NT * W, w + 64, a, ra, NT, W, acc);
        RSM_T(layernorm_backward)(b + NT * W, w + 64, b, rb, NT, W, acc);
        RSM_T(bc_compare)(c, "layernorm_backward", a + NT * W, b + NT * W, RSM_BC_BYTES(NT * W));
    }
    /* modulate with the adaLN layout: shift and scale rows of stride 6W */
    const real_t *mod = w + 128;
    RSM_OP(be, modulate_forward, a, in, mod, mod + W, 6 * W, n, T, W);
    RSM_T(modulate_forward)(b, in, mod, mod + W, 6 * W, n, T, W);
    RSM_T(bc_compare)(c, "modulate_forward", a, b, RSM_BC_BYTES(NT * W));
    memset(a, 0, RSM_BC_BYTES(NT * W + 2 * n * W));
    memset(b, 0, RSM_BC_BYTES(NT * W + 2 * n * W));
    RSM_OP(be, modulate_backward, a, a + NT * W, a + NT * W + n * W, w, in, mod + W, 6 * W, n, T,
           W);
    RSM_T(modulate_backward)(b, b + NT * W, b + NT * W + n * W, w, in, mod + W, 6 * W, n, T, W);
    RSM_T(bc_compare)(c, "modulate_backward", a, b, RSM_BC_BYTES(NT * W + 2 * n * W));
    memcpy(a, w, RSM_BC_BYTES(NT * W));
    memcpy(b, w, RSM_BC_BYTES(NT * W));
    RSM_OP(be, gated_residual_forward, a, in, mod + 2 * W, 6 * W, n, T, W);
    RSM_T(gated_residual_forward)(b, in, mod + 2 * W, 6 * W, n, T, W);
    RSM_T(bc_compare)(c, "gated_residual_forward", a, b, RSM_BC_BYTES(NT * W));
    memset(a, 0, RSM_BC_BYTES(NT * W + n * W));
    memset(b, 0, RSM_BC_BYTES(NT * W + n * W));
    RSM_OP(be, gated_residual_backward, a, a + NT * W, w, in, mod + 2 * W, 6 * W, n, T, W);
    RSM_T(gated_residual_backward)(b, b + NT * W, w, in, mod + 2 * W, 6 * W, n, T, W);
    RSM_T(bc_compare)(c, "gated_residual_backward", a, b, RSM_BC_BYTES(NT * W + n * W));
    /* attention: qkv [NT, 3W] = in; o [NT, W]; probs [n, H, T, T] */
    const int64_t P = n * H * T * T;
    RSM_OP(be, attention_forward, a, a + NT * W, in, n, T, W, H);
    RSM_T(attention_forward)(b, b + NT * W, in, n, T, W, H);
    RSM_T(bc_compare)(c, "attention_forward", a, b, RSM_BC_BYTES(NT * W + P));
    real_t *ga = a + NT * W + P, *gb = b + NT * W + P;
    RSM_OP(be, attention_backward, ga, ga + 3 * NT * W, w, in, a + NT * W, n, T, W, H);
    RSM_T(attention_backward)(gb, gb + 3 * NT * W, w, in, b + NT * W, n, T, W, H);
    RSM_T(bc_compare)(c, "attention_backward", ga, gb, RSM_BC_BYTES(3 * NT * W + P));
    /* patches: 2 images of 2 channels, 4 x 4, patch 2 */
    RSM_OP(be, patchify_forward, a, in, 2, 2, 4, 2);
    RSM_T(patchify_forward)(b, in, 2, 2, 4, 2);
    RSM_T(bc_compare)(c, "patchify_forward", a, b, RSM_BC_BYTES(64));
    RSM_OP(be, patchify_backward, a, in, 2, 2, 4, 2);
    RSM_T(patchify_backward)(b, in, 2, 2, 4, 2);
    RSM_T(bc_compare)(c, "patchify_backward", a, b, RSM_BC_BYTES(64));
}

/* random numbers, the sampler step, the objective, reductions, AdamW */
static void
RSM_T(bc_steps)(RSM_T(backend_checker) *c, real_t *in, real_t *a, real_t *b, real_t *w)
{
    const rsm_backend *be = c->be;
    /* dim read at run time too (as the sampler's): a constant 5 lets the compiler unroll and
     * contract the reference's sum differently from the op's loop on FMA machines */
    const int64_t e = 40, rows = 8, dim = c->temb_dim / 2;
    RSM_OP(be, fill_normal, 11, 22, 3, e, a);
    RSM_T(fill_normal)(11, 22, 3, e, b);
    RSM_T(bc_compare)(c, "fill_normal", a, b, RSM_BC_BYTES(e));
    RSM_OP(be, fill_uniform, 11, 22, 5, e, a);
    RSM_T(fill_uniform)(11, 22, 5, e, b);
    RSM_T(bc_compare)(c, "fill_uniform", a, b, RSM_BC_BYTES(e));
    /* the step: a stochastic and a deterministic coefficient set */
    for (int stochastic = 0; stochastic < 2; stochastic++) {
        rsm_step_coef s = {0};
        s.A = 0.93, s.K = -0.041, s.std = stochastic ? c->std : 0.0, s.stochastic = stochastic;
        real_t *za = a + 3 * e, *zb = b + 3 * e;
        memcpy(za, w, RSM_BC_BYTES(e));
        memcpy(zb, w, RSM_BC_BYTES(e));
        RSM_OP(be, sampler_step, &s, e, in, in + e, za, a, a + e);
        for (int64_t q = 0; q < e; q++) {
            b[q] = RSM_T(step_mean)(s.A, s.K, in[q], in[e + q]);
            b[e + q] = stochastic ? RSM_T(step_next)(b[q], s.std, zb[q]) : b[q];
            if (!stochastic) zb[q] = 0;
        }
        RSM_T(bc_compare)(c, "sampler_step", a, b, RSM_BC_BYTES(2 * e));
        RSM_T(bc_compare)(c, "sampler_step", za, zb, RSM_BC_BYTES(e));
        /* log-probs of 8 rows of 5, each written 3 times */
        RSM_OP(be, step_log_prob, &s, rows, dim, a + e, in, a + 2 * e, 3);
        for (int64_t r = 0; r < rows; r++) {
            double value = stochastic ? RSM_T(gaussian_log_prob)(b + e + r * dim, in + r * dim,
                                                                 s.std, dim)
                                      : 0.0;
            for (int64_t q = 0; q < 3; q++) b[2 * e + r * 3 + q] = (real_t)value;
        }
        RSM_T(bc_compare)(c, "step_log_prob", a + 2 * e, b + 2 * e, RSM_BC_BYTES(rows * 3));
    }
    rsm_step_coef h = {0};
    h.dt = 0.1, h.v_x = -1.0, h.v_u = 0.9, h.v_x_next = -1.1, h.v_u_next = 0.8, h.heun = 1;
    RSM_OP(be, heun_predict, &h, e, in, in + e, a);
    for (int64_t q = 0; q < e; q++) b[q] = RSM_T(heun_predict)(h.dt, h.v_x, h.v_u, in[q], in[e + q]);
    RSM_T(bc_compare)(c, "heun_predict", a, b, RSM_BC_BYTES(e));
    RSM_OP(be, heun_step, &h, e, in, in + e, w, w + e, a, a + e, a + 2 * e);
    for (int64_t q = 0; q < e; q++) {
        b[e + q] = RSM_T(heun_mean)(h.dt, h.v_x, h.v_u, h.v_x_next, h.v_u_next, in[q], in[e + q],
                                    w[q], w[e + q]);
        b[2 * e + q] = b[e + q];
        b[q] = 0;
    }
    RSM_T(bc_compare)(c, "heun_step", a, b, RSM_BC_BYTES(3 * e));
    /* the objective: score matching with a KL anchor, and PPO */
    rsm_objective_row coef[8];
    for (int64_t r = 0; r < rows; r++) {
        rsm_objective_row row = {0};
        row.conv = 0.8, row.space = 1.2, row.c1 = 0.5, row.gamma = 0.3, row.c2 = 0.1;
        row.adv = (double)in[r], row.w = 0.7, row.ratio_scale = 1, row.term_scale = 1;
        row.post = 1, row.clip_eps = 0.2, row.kl = 0.04, row.w_kl = 0.7;
        row.weight = r == 3 ? 0.0 : 1.0 + 0.1 * (double)r;
        coef[r] = row;
    }
    const rsm_objective_form forms[2] = {RSM_FORM_SCORE_MATCHING, RSM_FORM_PPO};
    for (int f = 0; f < 2; f++) {
        rsm_objective_config cfg = {forms[f], 0, 0, 1, 7.0};
        rsm_objective_stats sa = {0}, sb = {0};
        double la[8], lb[8];
        uint8_t aa[8], ab[8];
        const real_t *u = in, *u_old = in + e, *u_ref = w, *psi = w + e, *noise = w + 2 * e;
        rsm_status st_a = RSM_OP(be, objective, &cfg, rows, dim, coef, u, u_old, u_ref, psi, noise,
                                 a, la, aa, &sa);
        rsm_status st_b = RSM_T(objective)(&cfg, rows, dim, coef, u, u_old, u_ref, psi, noise, b,
                                           lb, ab, &sb);
        RSM_T(bc_compare)(c, "objective", &st_a, &st_b, sizeof(st_a));
        RSM_T(bc_compare)(c, "objective", a, b, RSM_BC_BYTES(rows * dim));
        RSM_T(bc_compare)(c, "objective", la, lb, sizeof(la));
        RSM_T(bc_compare)(c, "objective", aa, ab, sizeof(aa));
        RSM_T(bc_compare)(c, "objective", &sa, &sb, sizeof(sa));
    }
    /* reductions */
    double ra = RSM_OP(be, sum_sq_diff, e, in, w), rb = 0.0;
    for (int64_t q = 0; q < e; q++) rb += ((double)in[q] - (double)w[q]) * ((double)in[q] - (double)w[q]);
    RSM_T(bc_compare)(c, "sum_sq_diff", &ra, &rb, sizeof(ra));
    ra = RSM_OP(be, sum_sq_diff, e, in, NULL), rb = 0.0;
    for (int64_t q = 0; q < e; q++) rb += (double)in[q] * (double)in[q];
    RSM_T(bc_compare)(c, "sum_sq_diff", &ra, &rb, sizeof(ra));
    memcpy(a, in, RSM_BC_BYTES(e));
    memcpy(b, in, RSM_BC_BYTES(e));
    ra = RSM_OP(be, mse_seed, e, a, w, (real_t)0.3), rb = 0.0;
    for (int64_t q = 0; q < e; q++) {
        real_t diff = b[q] - w[q];
        rb += (double)diff * (double)diff;
        b[q] = (real_t)0.3 * diff;
    }
    RSM_T(bc_compare)(c, "mse_seed", &ra, &rb, sizeof(ra));
    RSM_T(bc_compare)(c, "mse_seed", a, b, RSM_BC_BYTES(e));
    /* AdamW: two optimizers from the same state, three steps each */
    rsm_adamw_config ac = {1e-2, 0.9, 0.999, 1e-8, 0.01, 0.5, 0.9};
    rsm_adamw oa, ob;
    if (rsm_adamw_init(&oa, ac, RSM_REAL_DTYPE, e, in) != RSM_OK) return;
    if (rsm_adamw_init(&ob, ac, RSM_REAL_DTYPE, e, in) != RSM_OK) {
        rsm_adamw_free(&oa);
        return;
    }
    memcpy(a, in, RSM_BC_BYTES(e));
    memcpy(b, in, RSM_BC_BYTES(e));
    real_t *ga = a + e, *gb = b + e; /* the step overwrites the gradient with the clipped one */
    for (int step = 0; step < 3; step++) {
        double na = 0.0, nb = 0.0;
        memcpy(ga, w + 100 * step, RSM_BC_BYTES(e));
        memcpy(gb, w + 100 * step, RSM_BC_BYTES(e));
        rsm_status st_a = RSM_OP(be, adamw_step, &oa, a, ga, 1e-2, &na);
        rsm_status st_b = RSM_T(adamw_step)(&ob, b, gb, 1e-2, &nb);
        RSM_T(bc_compare)(c, "adamw_step", ga, gb, RSM_BC_BYTES(e));
        RSM_T(bc_compare)(c, "adamw_step", &st_a, &st_b, sizeof(st_a));
        RSM_T(bc_compare)(c, "adamw_step", &na, &nb, sizeof(na));
    }
    RSM_T(bc_compare)(c, "adamw_step", a, b, RSM_BC_BYTES(e));
    RSM_T(bc_compare)(c, "adamw_step", oa.m, ob.m, RSM_BC_BYTES(e));
    RSM_T(bc_compare)(c, "adamw_step", oa.v, ob.v, RSM_BC_BYTES(e));
    RSM_T(bc_compare)(c, "adamw_step", oa.ema, ob.ema, RSM_BC_BYTES(e));
    rsm_adamw_free(&oa);
    rsm_adamw_free(&ob);
}

int64_t
RSM_T(backend_check)(const struct rsm_backend *be, char *checked, size_t checked_len, char *msg,
                     size_t msg_len)
{
    /* host arrays: the hook compares backends whose memory the host can read (the CPU) */
    const int64_t cap = 1024;
    real_t *in = (real_t *)malloc(4 * (size_t)cap * sizeof(real_t));
    if (!in) return -1;
    real_t *a = in + cap, *b = a + cap, *w = b + cap;
    RSM_T(bc_normals)(in, cap, 1, 1.0);
    RSM_T(bc_normals)(w, cap, 2, 0.5);
    /* the class and gather ids index rows 0..3 of w; positive scale keeps sqrt/log valid */
    checked[0] = msg[0] = '\0';
    static volatile double step_std = 0.17;
    static volatile int64_t temb_dim = 10;
    RSM_T(backend_checker) c = {be, 0, checked, checked_len, msg, msg_len, step_std, temb_dim};
    RSM_T(bc_layers)(&c, in, a, b, w);
    RSM_T(bc_dit)(&c, in, a, b, w);
    RSM_T(bc_steps)(&c, in, a, b, w);
    free(in);
    return c.mismatches;
}
#undef RSM_BC_BYTES
