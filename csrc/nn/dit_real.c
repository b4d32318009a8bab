/* dit_real.c: forward and backward of the DiT backbone (template, see real.h and dit.h).
 *
 * Shapes: n images, T tokens each, NT = n T rows of width W; Pd = C p^2; F = temb_dim; r = LoRA
 * rank; Hh = heads. Saved activations (one contiguous block per tensor):
 *   global:    ycls [n] (class ids)  tok [NT, Pd]  temb [n, F]  tpre, tact, c, sc [n, W]  xs [L + 1][NT, W]
 *              mods [L][n, 6W]  fmod [n, 2W]  rstdf [NT]  xhatf, mf [NT, W]
 *   per block (L sets, or 1 reused set with checkpointing):
 *              xhat1, m1 [NT, W]  rstd1 [NT]  qkv [NT, 3W]  probs [n, Hh, T, T]  o, a [NT, W]
 *              xhat2, m2 [NT, W]  rstd2 [NT]  f1, g [NT, 4W]  f2 [NT, W]  xa [4][NT, r] (LoRA)
 *   backward scratch: dres, dm, dtmp [NT, W]  dbig [NT, 4W]  dqkv [NT, 3W]  dprobs [n, Hh, T, T]
 *              dtok [NT, Pd]  dxa [NT, r]  dmod [n, 6W]  dsc, dc, dtn [n, W]
 * Accumulation: parameter gradients +=, activation gradients = unless stated.
 */
#include "real.h"
#include "dit.h"
#include "../backend.h"
#include "../checked.h"
#include "../rng.h"

#include <stdlib.h>
#include <string.h>

/* The forward and backward run their ops through the DiT's backend (backend.h; NULL: the CPU,
 * whose ops are the loops of linear_real.c, gelu_real.c, layernorm_real.c, attention_real.c);
 * dit_op below calls those CPU loops directly (the test hook of one op). */

typedef struct {
    real_t *xhat1, *rstd1, *m1, *qkv, *probs, *o, *a, *xhat2, *rstd2, *m2, *f1, *g, *f2, *xa;
} RSM_T(dit_block_acts);

typedef struct {
    real_t *ycls, *tok, *temb, *tpre, *tact, *c, *sc, *xs, *mods, *fmod, *rstdf, *xhatf, *mf, *blocks;
    int64_t block_stride; /* elements between consecutive block sets (0 with checkpointing) */
} RSM_T(dit_acts);

typedef struct {
    real_t *dres, *dm, *dtmp, *dbig, *dqkv, *dprobs, *dtok, *dxa, *dmod, *dsc, *dc, *dtn;
} RSM_T(dit_scratch);

/* The sizes below are overflow-checked (csrc/checked.h): RSM_SIZE_INVALID when a count overflows,
 * so dit_reserve refuses the rows instead of allocating a wrapped-around buffer. The pointer
 * arithmetic of dit_point_* runs only on buffers reserve sized, so it stays plain. */
#define M(a, b) rsm_size_mul((a), (b), ok)
#define A(a, b) rsm_size_add((a), (b), ok)

static int64_t
RSM_T(dit_block_set_size)(const rsm_dit *dit, int64_t n, int *ok)
{
    const rsm_dit_config *c = &dit->config;
    int64_t T = dit->layout.tokens, W = c->width, NT = M(n, T);
    return A(A(M(NT, A(M(W, 18), 2)), M(M(n, c->heads), M(T, T))),
             M(RSM_DIT_LINEARS, M(NT, dit->lora.rank)));
}

static int64_t
RSM_T(dit_global_size)(const rsm_dit *dit, int64_t n, int *ok)
{
    const rsm_dit_config *c = &dit->config;
    int64_t T = dit->layout.tokens, W = c->width, L = c->depth, NT = M(n, T);
    /* tok, temb, tpre/tact/c/sc, xs, mods, fmod, rstdf, xhatf/mf, ycls */
    int64_t total = M(NT, dit->layout.patch_dim);
    total = A(total, M(n, c->temb_dim));
    total = A(total, M(4, M(n, W)));
    total = A(total, M(A(L, 1), M(NT, W)));
    total = A(total, M(L, M(n, M(6, W))));
    total = A(total, M(n, M(2, W)));
    total = A(total, NT);
    total = A(total, M(2, M(NT, W)));
    return A(total, n);
}

static int64_t
RSM_T(dit_activation_elems_checked)(const rsm_dit *dit, int64_t n, int *ok)
{
    int64_t sets = dit->config.checkpoint ? 1 : dit->config.depth;
    return A(RSM_T(dit_global_size)(dit, n, ok), M(sets, RSM_T(dit_block_set_size)(dit, n, ok)));
}

static int64_t
RSM_T(dit_scratch_size)(const rsm_dit *dit, int64_t n, int *ok)
{
    const rsm_dit_config *c = &dit->config;
    int64_t T = dit->layout.tokens, W = c->width, NT = M(n, T);
    return A(A(M(NT, A(M(10, W), A(dit->layout.patch_dim, dit->lora.rank))),
               M(M(n, c->heads), M(T, T))),
             M(n, M(9, W)));
}

#undef M
#undef A

int64_t
RSM_T(dit_activation_elems)(const rsm_dit *dit, int64_t n)
{
    int ok = 1;
    int64_t elems = RSM_T(dit_activation_elems_checked)(dit, n, &ok);
    return rsm_size_within(elems, ok) ? elems : -1;
}

static RSM_T(dit_acts)
RSM_T(dit_point_acts)(const rsm_dit *dit, int64_t n)
{
    const rsm_dit_config *c = &dit->config;
    int64_t T = dit->layout.tokens, W = c->width, L = c->depth, NT = n * T;
    RSM_T(dit_acts) a;
    a.ycls = (real_t *)dit->acts;
    a.tok = a.ycls + n;
    a.temb = a.tok + NT * dit->layout.patch_dim;
    a.tpre = a.temb + n * c->temb_dim;
    a.tact = a.tpre + n * W;
    a.c = a.tact + n * W;
    a.sc = a.c + n * W;
    a.xs = a.sc + n * W;
    a.mods = a.xs + (L + 1) * NT * W;
    a.fmod = a.mods + L * n * 6 * W;
    a.rstdf = a.fmod + n * 2 * W;
    a.xhatf = a.rstdf + NT;
    a.mf = a.xhatf + NT * W;
    a.blocks = a.mf + NT * W;
    int ok = 1; /* n <= acts_rows: the sizes were checked by dit_reserve */
    a.block_stride = c->checkpoint ? 0 : RSM_T(dit_block_set_size)(dit, n, &ok);
    return a;
}

static RSM_T(dit_block_acts)
RSM_T(dit_point_block)(const rsm_dit *dit, const RSM_T(dit_acts) *acts, int64_t n, int64_t l)
{
    int64_t T = dit->layout.tokens, W = dit->config.width, NT = n * T;
    RSM_T(dit_block_acts) b;
    b.xhat1 = acts->blocks + l * acts->block_stride;
    b.rstd1 = b.xhat1 + NT * W;
    b.m1 = b.rstd1 + NT;
    b.qkv = b.m1 + NT * W;
    b.probs = b.qkv + NT * 3 * W;
    b.o = b.probs + n * dit->config.heads * T * T;
    b.a = b.o + NT * W;
    b.xhat2 = b.a + NT * W;
    b.rstd2 = b.xhat2 + NT * W;
    b.m2 = b.rstd2 + NT;
    b.f1 = b.m2 + NT * W;
    b.g = b.f1 + NT * 4 * W;
    b.f2 = b.g + NT * 4 * W;
    b.xa = b.f2 + NT * W; /* [4][NT, r] */
    return b;
}

static RSM_T(dit_scratch)
RSM_T(dit_point_scratch)(const rsm_dit *dit, int64_t n)
{
    const rsm_dit_config *c = &dit->config;
    int64_t T = dit->layout.tokens, W = c->width, NT = n * T;
    RSM_T(dit_scratch) s;
    s.dres = (real_t *)dit->scratch;
    s.dm = s.dres + NT * W;
    s.dtmp = s.dm + NT * W;
    s.dbig = s.dtmp + NT * W;
    s.dqkv = s.dbig + NT * 4 * W;
    s.dtok = s.dqkv + NT * 3 * W;
    s.dxa = s.dtok + NT * dit->layout.patch_dim;
    s.dprobs = s.dxa + NT * dit->lora.rank;
    s.dmod = s.dprobs + n * c->heads * T * T;
    s.dsc = s.dmod + n * 6 * W;
    s.dc = s.dsc + n * W;
    s.dtn = s.dc + n * W;
    return s;
}

static rsm_status
RSM_T(dit_reserve)(rsm_dit *dit, int64_t rows)
{
    if (rows <= dit->acts_rows && dit->acts_checkpoint == dit->config.checkpoint) return RSM_OK;
    if (rows < dit->acts_rows) rows = dit->acts_rows;
    int ok = 1;
    size_t acts, scratch;
    RSM_TRY(rsm_size_bytes(RSM_T(dit_activation_elems_checked)(dit, rows, &ok), ok, 1,
                           "the DiT's activations for these rows", &acts));
    RSM_TRY(rsm_size_bytes(RSM_T(dit_scratch_size)(dit, rows, &ok), ok, 1,
                           "the DiT's backward scratch for these rows", &scratch));
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    real_t *new_acts = (real_t *)rsm_backend_alloc(be, acts, sizeof(real_t));
    real_t *new_scratch = (real_t *)rsm_backend_alloc(be, scratch, sizeof(real_t));
    if (!new_acts || !new_scratch) {
        rsm_backend_free(be, new_acts);
        rsm_backend_free(be, new_scratch);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate DiT activations for %lld rows",
                        (long long)rows);
    }
    rsm_backend_free(be, dit->acts);
    rsm_backend_free(be, dit->scratch);
    dit->acts = new_acts;
    dit->scratch = new_scratch;
    dit->acts_rows = rows;
    dit->acts_checkpoint = dit->config.checkpoint;
    return RSM_OK;
}

/* ---- initialisation ------------------------------------------------------------------------ */

/* Fixed 2D sin-cos positions (MAE / DiT): the first half of the W channels encodes the token's
 * row, the second half its column; within a half of length m, channel k has frequency
 * 10000^(-2 floor(k/2) / m), sin at even k and cos at odd k. */
void
RSM_T(dit_init_pos)(const rsm_dit *dit)
{
    real_t *pos = (real_t *)dit->pos;
    int64_t W = dit->config.width, G = dit->config.image_size / dit->config.patch;
    int64_t half = W / 2;
    for (int64_t gi = 0; gi < G; gi++)
        for (int64_t gj = 0; gj < G; gj++) {
            real_t *row = pos + (gi * G + gj) * W;
            for (int64_t d = 0; d < W; d++) {
                int64_t m = d < half ? half : W - half, k = d < half ? d : d - half;
                double coord = d < half ? (double)gi : (double)gj;
                double omega = pow(10000.0, -2.0 * (double)(k / 2) / (double)m);
                row[d] = (real_t)(k % 2 == 0 ? sin(coord * omega) : cos(coord * omega));
            }
        }
}

static void
RSM_T(dit_xavier)(real_t *w, const double *u, int64_t out, int64_t in)
{
    double bound = sqrt(6.0 / (double)(in + out));
    for (int64_t k = 0; k < out * in; k++) w[k] = (real_t)((2.0 * u[k] - 1.0) * bound);
}

rsm_status
RSM_T(dit_init_params)(const rsm_dit *dit, uint64_t seed)
{
    const rsm_dit_config *c = &dit->config;
    const rsm_dit_layout *l = &dit->layout;
    real_t *p = (real_t *)dit->params;
    int64_t W = c->width, Pd = l->patch_dim, F = c->temb_dim;
    /* uniforms and normals indexed by flat position, so each tensor's draw does not depend on the
     * sizes of the others' init rules */
    double *u = (double *)malloc((size_t)l->num_params * sizeof(double));
    double *z = (double *)malloc((size_t)l->num_params * sizeof(double));
    if (!u || !z) { /* refused before anything is written */
        free(u);
        free(z);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate the initialisation draws of %lld parameters",
                        (long long)l->num_params);
    }
    rsm_fill_uniform_f64(seed, rsm_stream_id(RSM_STREAM_INIT, 0, 0), 0, l->num_params, u);
    rsm_fill_normal_f64(seed, rsm_stream_id(RSM_STREAM_INIT, 1, 0), 0, l->num_params, z);
    memset(p, 0, (size_t)l->num_params * sizeof(real_t)); /* biases, adaLN, output: zero */
    RSM_T(dit_xavier)(p + l->patch_w, u + l->patch_w, W, Pd);
    for (int64_t k = l->temb_w1; k < l->temb_w1 + W * F; k++) p[k] = (real_t)(0.02 * z[k]);
    for (int64_t k = l->temb_w2; k < l->temb_w2 + W * W; k++) p[k] = (real_t)(0.02 * z[k]);
    for (int64_t k = l->class_emb; k < l->class_emb + (c->num_classes + 1) * W; k++)
        p[k] = (real_t)(0.02 * z[k]);
    for (int64_t b = 0; b < c->depth; b++) {
        int64_t o = l->block0 + b * l->block_size;
        RSM_T(dit_xavier)(p + o + l->qkv_w, u + o + l->qkv_w, 3 * W, W);
        RSM_T(dit_xavier)(p + o + l->proj_w, u + o + l->proj_w, W, W);
        RSM_T(dit_xavier)(p + o + l->fc1_w, u + o + l->fc1_w, 4 * W, W);
        RSM_T(dit_xavier)(p + o + l->fc2_w, u + o + l->fc2_w, W, 4 * W);
    }
    free(u);
    free(z);
    return RSM_OK;
}

/* A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 */
rsm_status
RSM_T(dit_init_lora)(const rsm_dit *dit, uint64_t seed)
{
    const rsm_dit_lora *lo = &dit->lora;
    real_t *p = (real_t *)dit->lora_params;
    int64_t W = dit->config.width;
    const int64_t in[RSM_DIT_LINEARS] = {W, W, W, 4 * W};
    double *u = (double *)malloc((size_t)(lo->num_params > 0 ? lo->num_params : 1) * sizeof(double));
    RSM_CHECK(u != NULL, RSM_ERR_MEMORY, "cannot allocate the initialisation draws of %lld adapters",
              (long long)lo->num_params);
    rsm_fill_uniform_f64(seed, rsm_stream_id(RSM_STREAM_INIT, 2, 0), 0, lo->num_params, u);
    memset(p, 0, (size_t)lo->num_params * sizeof(real_t));
    for (int64_t b = 0; b < dit->config.depth; b++)
        for (int k = 0; k < RSM_DIT_LINEARS; k++) {
            if (lo->a[k] < 0) continue;
            int64_t o = b * lo->block_size + lo->a[k];
            double bound = 1.0 / sqrt((double)in[k]);
            for (int64_t e = 0; e < lo->rank * in[k]; e++)
                p[o + e] = (real_t)((2.0 * u[o + e] - 1.0) * bound);
        }
    free(u);
    return RSM_OK;
}

/* ---- linear layers with optional LoRA adapters ----------------------------------------------- */

typedef struct {
    const real_t *A, *B; /* [r, in], [out, r]; A NULL: no adapter */
    real_t *dA, *dB;     /* gradients (NULL: skip) */
    real_t scale;
    int64_t rank;
} RSM_T(dit_adapter);

/* y[rows, out] = x W^T + b (+ scale (x A^T) B^T, with xa = x A^T [rows, r] saved) */
static void
RSM_T(dit_linear_forward)(const rsm_backend *be, real_t *y, real_t *xa, const real_t *x, const real_t *w,
                          const real_t *bias, const RSM_T(dit_adapter) *ad, int64_t rows,
                          int64_t in, int64_t out)
{
    RSM_T(linear_forward)(be, y, x, w, bias, rows, in, out);
    if (ad->A) {
        RSM_OP(be, gemm, 0, 1, rows, ad->rank, in, 1, x, in, ad->A, in, 0, xa, ad->rank);
        RSM_OP(be, gemm, 0, 1, rows, out, ad->rank, ad->scale, xa, ad->rank, ad->B, ad->rank, 1, y, out);
    }
}

/* dx (=, or += with accumulate) = dy W (+ dxa A), dW, db += (base grads, NULL to skip);
 * with an adapter: dxa = scale dy B, dB += scale dy^T xa, dA += dxa^T x. */
static void
RSM_T(dit_linear_backward)(const rsm_backend *be, real_t *dx, real_t *dw, real_t *db, real_t *dxa, const real_t *dy,
                           const real_t *x, const real_t *xa, const real_t *w,
                           const RSM_T(dit_adapter) *ad, int64_t rows, int64_t in, int64_t out,
                           int accumulate_dx)
{
    RSM_T(linear_backward)(be, dx, dw, db, dy, x, w, rows, in, out, accumulate_dx);
    if (ad->A) {
        const int64_t r = ad->rank;
        RSM_OP(be, gemm, 0, 0, rows, r, out, ad->scale, dy, out, ad->B, r, 0, dxa, r);
        if (ad->dB) RSM_OP(be, gemm, 1, 0, out, r, rows, ad->scale, dy, out, xa, r, 1, ad->dB, r);
        if (ad->dA) RSM_OP(be, gemm, 1, 0, r, in, rows, 1, dxa, r, x, in, 1, ad->dA, in);
        if (dx) RSM_OP(be, gemm, 0, 0, rows, in, r, 1, dxa, r, ad->A, in, 1, dx, in);
    }
}

static void
RSM_T(dit_adapters)(const rsm_dit *dit, int64_t l, real_t *dlora,
                    RSM_T(dit_adapter) ad[RSM_DIT_LINEARS])
{
    const rsm_dit_lora *lo = &dit->lora;
    for (int k = 0; k < RSM_DIT_LINEARS; k++) {
        memset(&ad[k], 0, sizeof(ad[k]));
        if (lo->rank == 0 || lo->a[k] < 0) continue;
        const real_t *pl = (const real_t *)dit->lora_params + l * lo->block_size;
        ad[k].A = pl + lo->a[k];
        ad[k].B = pl + lo->b[k];
        ad[k].scale = (real_t)lo->scale;
        ad[k].rank = lo->rank;
        if (dlora) {
            ad[k].dA = dlora + l * lo->block_size + lo->a[k];
            ad[k].dB = dlora + l * lo->block_size + lo->b[k];
        }
    }
}

/* ---- one block ------------------------------------------------------------------------------ */

/* x_out[NT, W] = block l (x_in[NT, W]) with the modulation mod[n, 6W] (see dit.h). */
static void
RSM_T(dit_block_forward)(const rsm_dit *dit, int64_t l, const RSM_T(dit_block_acts) *b,
                         const real_t *x_in, real_t *x_out, const real_t *mod, int64_t n)
{
    const rsm_dit_layout *lay = &dit->layout;
    const int64_t T = lay->tokens, W = dit->config.width, NT = n * T, r = dit->lora.rank;
    const real_t *pb = (const real_t *)dit->params + lay->block0 + l * lay->block_size;
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    RSM_T(dit_adapter) ad[RSM_DIT_LINEARS];
    RSM_T(dit_adapters)(dit, l, NULL, ad);
    RSM_OP(be, layernorm_forward, b->xhat1, b->rstd1, x_in, NT, W);
    RSM_OP(be, modulate_forward, b->m1, b->xhat1, mod, mod + W, 6 * W, n, T, W);
    RSM_T(dit_linear_forward)(be, b->qkv, b->xa + RSM_DIT_QKV * NT * r, b->m1, pb + lay->qkv_w,
                              pb + lay->qkv_b, &ad[RSM_DIT_QKV], NT, W, 3 * W);
    RSM_OP(be, attention_forward, b->o, b->probs, b->qkv, n, T, W, dit->config.heads);
    RSM_T(dit_linear_forward)(be, b->a, b->xa + RSM_DIT_PROJ * NT * r, b->o, pb + lay->proj_w,
                              pb + lay->proj_b, &ad[RSM_DIT_PROJ], NT, W, W);
    be->copy(be, x_out, x_in, (size_t)(NT * W) * sizeof(real_t), RSM_COPY_D2D);
    RSM_OP(be, gated_residual_forward, x_out, b->a, mod + 2 * W, 6 * W, n, T, W);
    RSM_OP(be, layernorm_forward, b->xhat2, b->rstd2, x_out, NT, W);
    RSM_OP(be, modulate_forward, b->m2, b->xhat2, mod + 3 * W, mod + 4 * W, 6 * W, n, T, W);
    RSM_T(dit_linear_forward)(be, b->f1, b->xa + RSM_DIT_FC1 * NT * r, b->m2, pb + lay->fc1_w,
                              pb + lay->fc1_b, &ad[RSM_DIT_FC1], NT, W, 4 * W);
    RSM_OP(be, gelu_forward, b->g, b->f1, NT * 4 * W);
    RSM_T(dit_linear_forward)(be, b->f2, b->xa + RSM_DIT_FC2 * NT * r, b->g, pb + lay->fc2_w,
                              pb + lay->fc2_b, &ad[RSM_DIT_FC2], NT, 4 * W, W);
    RSM_OP(be, gated_residual_forward, x_out, b->f2, mod + 5 * W, 6 * W, n, T, W);
}

/* Backward of block l: s->dres holds d x_out on entry and d x_in on return; dmod[n, 6W] (zeroed
 * by the caller) receives d mod. gb: the block's base gradients (NULL to skip), dlora: the
 * adapters' (NULL to skip). */
static void
RSM_T(dit_block_backward)(const rsm_dit *dit, int64_t l, const RSM_T(dit_block_acts) *b,
                          const RSM_T(dit_scratch) *s, const real_t *mod, real_t *gb,
                          real_t *dlora, int64_t n)
{
    const rsm_dit_layout *lay = &dit->layout;
    const int64_t T = lay->tokens, W = dit->config.width, NT = n * T, r = dit->lora.rank;
    const real_t *pb = (const real_t *)dit->params + lay->block0 + l * lay->block_size;
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    RSM_T(dit_adapter) ad[RSM_DIT_LINEARS];
    RSM_T(dit_adapters)(dit, l, dlora, ad);
#define RSM_DIT_G(off) (gb ? gb + lay->off : NULL)
    /* x_out = x_mid + gate2 * f2 */
    RSM_OP(be, gated_residual_backward, s->dtmp, s->dmod + 5 * W, s->dres, b->f2, mod + 5 * W, 6 * W,
                                   n, T, W);
    RSM_T(dit_linear_backward)(be, s->dbig, RSM_DIT_G(fc2_w), RSM_DIT_G(fc2_b), s->dxa, s->dtmp, b->g,
                               b->xa + RSM_DIT_FC2 * NT * r, pb + lay->fc2_w, &ad[RSM_DIT_FC2],
                               NT, 4 * W, W, 0);
    RSM_OP(be, gelu_backward, s->dbig, s->dbig, b->f1, NT * 4 * W);
    RSM_T(dit_linear_backward)(be, s->dm, RSM_DIT_G(fc1_w), RSM_DIT_G(fc1_b), s->dxa, s->dbig, b->m2,
                               b->xa + RSM_DIT_FC1 * NT * r, pb + lay->fc1_w, &ad[RSM_DIT_FC1],
                               NT, W, 4 * W, 0);
    RSM_OP(be, modulate_backward, s->dtmp, s->dmod + 3 * W, s->dmod + 4 * W, s->dm, b->xhat2,
                             mod + 4 * W, 6 * W, n, T, W);
    RSM_OP(be, layernorm_backward, s->dres, s->dtmp, b->xhat2, b->rstd2, NT, W, 1); /* d x_mid */
    /* x_mid = x_in + gate1 * a */
    RSM_OP(be, gated_residual_backward, s->dtmp, s->dmod + 2 * W, s->dres, b->a, mod + 2 * W, 6 * W, n,
                                   T, W);
    RSM_T(dit_linear_backward)(be, s->dm, RSM_DIT_G(proj_w), RSM_DIT_G(proj_b), s->dxa, s->dtmp, b->o,
                               b->xa + RSM_DIT_PROJ * NT * r, pb + lay->proj_w, &ad[RSM_DIT_PROJ],
                               NT, W, W, 0);
    RSM_OP(be, attention_backward, s->dqkv, s->dprobs, s->dm, b->qkv, b->probs, n, T, W,
                              dit->config.heads);
    RSM_T(dit_linear_backward)(be, s->dm, RSM_DIT_G(qkv_w), RSM_DIT_G(qkv_b), s->dxa, s->dqkv, b->m1,
                               b->xa + RSM_DIT_QKV * NT * r, pb + lay->qkv_w, &ad[RSM_DIT_QKV],
                               NT, W, 3 * W, 0);
    RSM_OP(be, modulate_backward, s->dtmp, s->dmod, s->dmod + W, s->dm, b->xhat1, mod + W, 6 * W, n, T,
                             W);
    RSM_OP(be, layernorm_backward, s->dres, s->dtmp, b->xhat1, b->rstd1, NT, W, 1); /* d x_in */
#undef RSM_DIT_G
}

/* ---- the whole model ------------------------------------------------------------------------ */

/* Every class id cond[i] an integer in 0..K (K: the null class); read on the host (a device
 * backend's ids are copied over first). */
static rsm_status
RSM_T(dit_check_classes)(const rsm_backend *be, const real_t *cond, int64_t n, int64_t K)
{
    const real_t *ids = cond;
    real_t *host = NULL;
    if (be->kind != RSM_DEVICE_CPU && n > 0) {
        host = (real_t *)malloc((size_t)n * sizeof(real_t));
        RSM_CHECK(host != NULL, RSM_ERR_MEMORY, "cannot allocate %lld class ids", (long long)n);
        be->copy(be, host, cond, (size_t)n * sizeof(real_t), RSM_COPY_D2H);
        ids = host;
    }
    rsm_status status = RSM_OK;
    for (int64_t i = 0; i < n; i++) {
        real_t y = ids[i];
        RSM_CHECK_GOTO(y == floor(y) && y >= 0 && y <= (real_t)K, RSM_ERR_VALUE,
                       "cond[%lld] = %g is not a class id: expected an integer in 0..%lld (%lld is "
                       "the null class)", (long long)i, (double)y, (long long)K, (long long)K);
    }
fail:
    free(host);
    return status;
}

rsm_status
RSM_T(dit_forward)(rsm_dit *dit, int64_t n, const real_t *x, const real_t *t, const real_t *cond,
                   real_t *out)
{
    const rsm_dit_config *c = &dit->config;
    const rsm_dit_layout *lay = &dit->layout;
    const int64_t K = c->num_classes;
    if (cond) RSM_TRY(RSM_T(dit_check_classes)(rsm_backend_or_cpu(dit->backend), cond, n, K));
    RSM_TRY(RSM_T(dit_reserve)(dit, n > 0 ? n : 1));
    const real_t *p = (const real_t *)dit->params;
    const int64_t T = lay->tokens, W = c->width, L = c->depth, NT = n * T, F = c->temb_dim;
    const int64_t Pd = lay->patch_dim;
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    RSM_T(dit_acts) a = RSM_T(dit_point_acts)(dit, n);
    RSM_T(dit_scratch) s = RSM_T(dit_point_scratch)(dit, n);

    /* tokens: h_0 = patchify(x) W_patch^T + b_patch + pos */
    RSM_OP(be, patchify_forward, a.tok, x, n, c->channels, c->image_size, c->patch);
    RSM_T(linear_forward)(be, a.xs, a.tok, p + lay->patch_w, p + lay->patch_b, NT, Pd, W);
    RSM_OP(be, add_row, a.xs, (const real_t *)dit->pos, n, T * W);

    /* conditioning: c = MLP_t(temb(t)) + E_class[y], sc = SiLU(c) */
    RSM_OP(be, time_embedding, a.temb, F, t, n, F);
    RSM_T(linear_forward)(be, a.tpre, a.temb, p + lay->temb_w1, p + lay->temb_b1, n, F, W);
    RSM_OP(be, silu_forward, a.tact, a.tpre, n * W);
    RSM_T(linear_forward)(be, a.c, a.tact, p + lay->temb_w2, p + lay->temb_b2, n, W, W);
    /* the class ids (checked above to be integers in 0..K; K without cond: the null class) */
    if (cond)
        be->copy(be, a.ycls, cond, (size_t)n * sizeof(real_t), RSM_COPY_D2D);
    else
        RSM_OP(be, fill, a.ycls, n, (double)K);
    RSM_OP(be, gather_add, a.c, p + lay->class_emb, a.ycls, n, W);
    RSM_OP(be, silu_forward, a.sc, a.c, n * W);

    for (int64_t l = 0; l < L; l++) {
        const real_t *pb = p + lay->block0 + l * lay->block_size;
        real_t *mod = a.mods + l * n * 6 * W;
        RSM_T(linear_forward)(be, mod, a.sc, pb + lay->ada_w, pb + lay->ada_b, n, W, 6 * W);
        RSM_T(dit_block_acts) b = RSM_T(dit_point_block)(dit, &a, n, l);
        RSM_T(dit_block_forward)(dit, l, &b, a.xs + l * NT * W, a.xs + (l + 1) * NT * W, mod, n);
    }

    /* final layer: out_tok = modulate(LN(h_L)) W_out^T + b_out, then unpatchify */
    RSM_T(linear_forward)(be, a.fmod, a.sc, p + lay->final_ada_w, p + lay->final_ada_b, n, W, 2 * W);
    RSM_OP(be, layernorm_forward, a.xhatf, a.rstdf, a.xs + L * NT * W, NT, W);
    RSM_OP(be, modulate_forward, a.mf, a.xhatf, a.fmod, a.fmod + W, 2 * W, n, T, W);
    RSM_T(linear_forward)(be, s.dtok, a.mf, p + lay->out_w, p + lay->out_b, NT, W, Pd);
    RSM_OP(be, patchify_backward, out, s.dtok, n, c->channels, c->image_size, c->patch);
    return be->check(be);
}

rsm_status
RSM_T(dit_backward)(rsm_dit *dit, int64_t n, const real_t *dout, real_t *dparams, real_t *dx)
{
    RSM_CHECK(n <= dit->acts_rows && dit->acts_checkpoint == dit->config.checkpoint,
              RSM_ERR_INTERNAL, "backward of %lld rows without a matching forward", (long long)n);
    const rsm_dit_config *c = &dit->config;
    const rsm_dit_layout *lay = &dit->layout;
    const real_t *p = (const real_t *)dit->params;
    const int64_t T = lay->tokens, W = c->width, L = c->depth, NT = n * T, F = c->temb_dim;
    const int64_t Pd = lay->patch_dim;
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    RSM_T(dit_acts) a = RSM_T(dit_point_acts)(dit, n);
    RSM_T(dit_scratch) s = RSM_T(dit_point_scratch)(dit, n);
    /* base gradients (NULL for a LoRA DiT, whose trainable parameters are its adapters) */
    real_t *g = dit->lora.rank > 0 ? NULL : dparams;
    real_t *dlora = dit->lora.rank > 0 ? dparams : NULL;
#define RSM_DIT_G(off) (g ? g + lay->off : NULL)

    /* final layer */
    RSM_OP(be, patchify_forward, s.dtok, dout, n, c->channels, c->image_size, c->patch);
    be->memset_zero(be, s.dsc, (size_t)(n * W) * sizeof(real_t));
    be->memset_zero(be, s.dmod, (size_t)(n * 2 * W) * sizeof(real_t));
    RSM_T(linear_backward)(be, s.dm, RSM_DIT_G(out_w), RSM_DIT_G(out_b), s.dtok, a.mf, p + lay->out_w,
                           NT, W, Pd, 0);
    RSM_OP(be, modulate_backward, s.dtmp, s.dmod, s.dmod + W, s.dm, a.xhatf, a.fmod + W, 2 * W, n, T, W);
    RSM_OP(be, layernorm_backward, s.dres, s.dtmp, a.xhatf, a.rstdf, NT, W, 0);
    RSM_T(linear_backward)(be, s.dsc, RSM_DIT_G(final_ada_w), RSM_DIT_G(final_ada_b), s.dmod, a.sc,
                           p + lay->final_ada_w, n, W, 2 * W, 1);

    for (int64_t l = L - 1; l >= 0; l--) {
        const real_t *pb = p + lay->block0 + l * lay->block_size;
        real_t *gb = g ? g + lay->block0 + l * lay->block_size : NULL;
        const real_t *mod = a.mods + l * n * 6 * W;
        RSM_T(dit_block_acts) b = RSM_T(dit_point_block)(dit, &a, n, l);
        /* checkpointing: rebuild this block's activations from its saved input (rewrites
         * xs[l + 1] with the same bits) */
        if (c->checkpoint)
            RSM_T(dit_block_forward)(dit, l, &b, a.xs + l * NT * W, a.xs + (l + 1) * NT * W, mod, n);
        be->memset_zero(be, s.dmod, (size_t)(n * 6 * W) * sizeof(real_t));
        RSM_T(dit_block_backward)(dit, l, &b, &s, mod, gb, dlora, n);
        /* mod = sc W_ada^T + b_ada */
        RSM_T(linear_backward)(be, s.dsc, gb ? gb + lay->ada_w : NULL, gb ? gb + lay->ada_b : NULL,
                               s.dmod, a.sc, pb + lay->ada_w, n, W, 6 * W, 1);
    }

    /* h_0 = tok W_patch^T + b_patch + pos; x = unpatchify(tok) */
    RSM_T(linear_backward)(be, dx ? s.dtok : NULL, RSM_DIT_G(patch_w), RSM_DIT_G(patch_b), s.dres,
                           a.tok, p + lay->patch_w, NT, Pd, W, 0);
    if (dx) RSM_OP(be, patchify_backward, dx, s.dtok, n, c->channels, c->image_size, c->patch);

    /* conditioning (t and the class id get no gradient) */
    if (g) {
        RSM_OP(be, silu_backward, s.dc, s.dsc, a.c, n * W);
        /* c += E_class[y_i]: rows in a fixed order */
        RSM_OP(be, scatter_add, g + lay->class_emb, s.dc, a.ycls, n, W);
        RSM_T(linear_backward)(be, s.dtn, g + lay->temb_w2, g + lay->temb_b2, s.dc, a.tact,
                               p + lay->temb_w2, n, W, W, 0);
        RSM_OP(be, silu_backward, s.dtn, s.dtn, a.tpre, n * W);
        RSM_T(linear_backward)(be, NULL, g + lay->temb_w1, g + lay->temb_b1, s.dtn, a.temb,
                               p + lay->temb_w1, n, F, W, 0);
    }
#undef RSM_DIT_G
    return be->check(be);
}

/* ---- test hook: one op's forward and backward (see dit.h) ------------------------------------ */

rsm_status
RSM_T(dit_op)(const char *name, const int64_t *sz, const real_t *const *in, const real_t *dout,
              real_t *out, real_t *const *grads)
{
    if (strcmp(name, "layernorm") == 0) { /* sz {rows, W}; in {x}; grads {dx} */
        real_t *rstd = (real_t *)malloc((size_t)sz[0] * sizeof(real_t));
        RSM_CHECK(rstd != NULL, RSM_ERR_MEMORY, "layernorm: out of memory");
        RSM_T(layernorm_forward)(out, rstd, in[0], sz[0], sz[1]);
        RSM_T(layernorm_backward)(grads[0], dout, out, rstd, sz[0], sz[1], 0);
        free(rstd);
    } else if (strcmp(name, "modulate") == 0) { /* sz {n, T, W}; in {xhat, shift, scale} */
        int64_t n = sz[0], T = sz[1], W = sz[2];
        RSM_T(modulate_forward)(out, in[0], in[1], in[2], W, n, T, W);
        memset(grads[1], 0, (size_t)(n * W) * sizeof(real_t));
        memset(grads[2], 0, (size_t)(n * W) * sizeof(real_t));
        RSM_T(modulate_backward)(grads[0], grads[1], grads[2], dout, in[0], in[2], W, n, T, W);
    } else if (strcmp(name, "gated_residual") == 0) { /* sz {n, T, W}; in {x, a, gate} */
        int64_t n = sz[0], T = sz[1], W = sz[2];
        memcpy(out, in[0], (size_t)(n * T * W) * sizeof(real_t));
        RSM_T(gated_residual_forward)(out, in[1], in[2], W, n, T, W);
        memcpy(grads[0], dout, (size_t)(n * T * W) * sizeof(real_t));
        memset(grads[2], 0, (size_t)(n * W) * sizeof(real_t));
        RSM_T(gated_residual_backward)(grads[1], grads[2], dout, in[1], in[2], W, n, T, W);
    } else if (strcmp(name, "attention") == 0) { /* sz {n, T, W, heads}; in {qkv}; out o */
        int64_t n = sz[0], T = sz[1], W = sz[2], H = sz[3];
        real_t *probs = (real_t *)malloc((size_t)(2 * n * H * T * T) * sizeof(real_t));
        RSM_CHECK(probs != NULL, RSM_ERR_MEMORY, "attention: out of memory");
        RSM_T(attention_forward)(out, probs, in[0], n, T, W, H);
        RSM_T(attention_backward)(grads[0], probs + n * H * T * T, dout, in[0], probs, n, T, W, H);
        free(probs);
    } else if (strcmp(name, "gelu") == 0) { /* sz {n}; in {x} */
        RSM_T(gelu_forward)(out, in[0], sz[0]);
        RSM_T(gelu_backward)(grads[0], dout, in[0], sz[0]);
    } else if (strcmp(name, "patchify") == 0) { /* sz {n, C, S, p}; in {x}; out tok */
        RSM_T(patchify_forward)(out, in[0], sz[0], sz[1], sz[2], sz[3]);
        RSM_T(patchify_backward)(grads[0], dout, sz[0], sz[1], sz[2], sz[3]);
    } else {
        return rsm_fail(RSM_ERR_VALUE, "unknown op '%s'", name);
    }
    return RSM_OK;
}
