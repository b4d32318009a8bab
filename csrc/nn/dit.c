/* dit.c: layout, allocation, LoRA set-up and dtype dispatch of the DiT backbone (math in
 * dit_real.c, see dit.h). */
#include "dit.h"

#include "../backend.h"
#include "../checked.h"

#include <stdlib.h>
#include <string.h>

/* The layout with every size overflow-checked (csrc/checked.h): M(a, b) = a * b, A(a, b) = a + b. */
#define M(a, b) rsm_size_mul((a), (b), &ok)
#define A(a, b) rsm_size_add((a), (b), &ok)

rsm_status
rsm_dit_layout_of(rsm_dit_config c, rsm_dit_layout *out)
{
    rsm_dit_layout l;
    int ok = 1;
    RSM_TRY(rsm_check_size_arg("image_size", c.image_size, 1));
    RSM_TRY(rsm_check_size_arg("channels", c.channels, 1));
    RSM_TRY(rsm_check_size_arg("patch", c.patch, 1));
    RSM_TRY(rsm_check_size_arg("width", c.width, 2));
    RSM_TRY(rsm_check_size_arg("depth", c.depth, 0));
    RSM_TRY(rsm_check_size_arg("heads", c.heads, 1));
    RSM_TRY(rsm_check_size_arg("num_classes", c.num_classes, 0));
    RSM_TRY(rsm_check_size_arg("temb_dim", c.temb_dim, 2));
    const int64_t W = c.width, G = c.image_size / c.patch;
    l.tokens = M(G, G);
    l.patch_dim = M(c.channels, M(c.patch, c.patch));
    l.dim = M(c.channels, M(c.image_size, c.image_size));
    RSM_CHECK(rsm_size_within(l.dim, ok), RSM_ERR_VALUE,
              "DiT(image_size=%lld, channels=%lld) has more than 2^%d values per image: "
              "image_size or channels is too large (see csrc/checked.h)",
              (long long)c.image_size, (long long)c.channels, RSM_MAX_ELEMS_LOG2);
    l.patch_w = 0;
    l.patch_b = A(l.patch_w, M(W, l.patch_dim));
    l.temb_w1 = A(l.patch_b, W);
    l.temb_b1 = A(l.temb_w1, M(W, c.temb_dim));
    l.temb_w2 = A(l.temb_b1, W);
    l.temb_b2 = A(l.temb_w2, M(W, W));
    l.class_emb = A(l.temb_b2, W);
    l.block0 = A(l.class_emb, M(A(c.num_classes, 1), W));
    /* block-relative */
    l.ada_w = 0;
    l.ada_b = A(l.ada_w, M(6, M(W, W)));
    l.qkv_w = A(l.ada_b, M(6, W));
    l.qkv_b = A(l.qkv_w, M(3, M(W, W)));
    l.proj_w = A(l.qkv_b, M(3, W));
    l.proj_b = A(l.proj_w, M(W, W));
    l.fc1_w = A(l.proj_b, W);
    l.fc1_b = A(l.fc1_w, M(4, M(W, W)));
    l.fc2_w = A(l.fc1_b, M(4, W));
    l.fc2_b = A(l.fc2_w, M(4, M(W, W)));
    l.block_size = A(l.fc2_b, W);
    l.final_ada_w = A(l.block0, M(c.depth, l.block_size));
    l.final_ada_b = A(l.final_ada_w, M(2, M(W, W)));
    l.out_w = A(l.final_ada_b, M(2, W));
    l.out_b = A(l.out_w, M(l.patch_dim, W));
    l.num_params = A(l.out_b, l.patch_dim);
    /* the positional table [T, W] is allocated too */
    int64_t pos = M(l.tokens, W);
    RSM_CHECK(rsm_size_within(l.num_params, ok) && rsm_size_within(pos, ok), RSM_ERR_VALUE,
              "DiT(image_size=%lld, channels=%lld, patch=%lld, width=%lld, depth=%lld, "
              "num_classes=%lld, temb_dim=%lld) would have more than 2^%d parameters: width, "
              "depth, num_classes, temb_dim or the image is too large (see csrc/checked.h)",
              (long long)c.image_size, (long long)c.channels, (long long)c.patch,
              (long long)c.width, (long long)c.depth, (long long)c.num_classes,
              (long long)c.temb_dim, RSM_MAX_ELEMS_LOG2);
    *out = l;
    return RSM_OK;
}

#undef M
#undef A

static rsm_status
rsm_dit_check_config(const rsm_dit_config *c)
{
    RSM_CHECK(c->image_size >= 1, RSM_ERR_VALUE, "image_size=%lld must be >= 1",
              (long long)c->image_size);
    RSM_CHECK(c->channels >= 1, RSM_ERR_VALUE, "channels=%lld must be >= 1", (long long)c->channels);
    RSM_CHECK(c->patch >= 1, RSM_ERR_VALUE, "patch=%lld must be >= 1", (long long)c->patch);
    RSM_CHECK(c->image_size % c->patch == 0, RSM_ERR_VALUE,
              "image_size=%lld is not divisible by patch=%lld", (long long)c->image_size,
              (long long)c->patch);
    RSM_CHECK(c->width >= 2, RSM_ERR_VALUE, "width=%lld must be >= 2", (long long)c->width);
    RSM_CHECK(c->depth >= 0, RSM_ERR_VALUE, "depth=%lld must be >= 0", (long long)c->depth);
    RSM_CHECK(c->heads >= 1, RSM_ERR_VALUE, "heads=%lld must be >= 1", (long long)c->heads);
    RSM_CHECK(c->width % c->heads == 0, RSM_ERR_VALUE, "heads=%lld does not divide width=%lld",
              (long long)c->heads, (long long)c->width);
    RSM_CHECK(c->num_classes >= 0, RSM_ERR_VALUE, "num_classes=%lld must be >= 0",
              (long long)c->num_classes);
    RSM_CHECK(c->temb_dim >= 2 && c->temb_dim % 2 == 0, RSM_ERR_VALUE,
              "temb_dim=%lld must be even and >= 2", (long long)c->temb_dim);
    RSM_CHECK(c->dtype == RSM_F32 || c->dtype == RSM_F64, RSM_ERR_TYPE,
              "dtype must be float32 or float64");
    return RSM_OK;
}

rsm_status
rsm_dit_init(rsm_dit *dit, rsm_dit_config config, uint64_t seed)
{
    memset(dit, 0, sizeof(*dit));
    RSM_TRY(rsm_dit_check_config(&config));
    RSM_TRY(rsm_dit_layout_of(config, &dit->layout));
    dit->config = config;
    size_t es = rsm_dtype_size(config.dtype);
    const int64_t num_params = dit->layout.num_params;
    dit->params = rsm_calloc((size_t)dit->layout.num_params * es);
    dit->pos = rsm_calloc((size_t)(dit->layout.tokens * config.width) * es);
    if (!dit->params || !dit->pos) {
        rsm_dit_free(dit);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate a DiT of %lld parameters",
                        (long long)num_params);
    }
    dit->owns_params = 1;
    RSM_REAL_CALL(config.dtype, dit_init_pos, dit);
    rsm_status status = rsm_dit_reset_parameters(dit, seed);
    if (status != RSM_OK) rsm_dit_free(dit);
    return status;
}

rsm_status
rsm_dit_init_lora(rsm_dit *dit, const rsm_dit *base, int64_t rank, double alpha, int targets,
                  uint64_t seed)
{
    memset(dit, 0, sizeof(*dit));
    RSM_CHECK(base->lora.rank == 0, RSM_ERR_VALUE, "ref is already a LoRA model: merge() it first");
    RSM_TRY(rsm_check_size_arg("rank", rank, 1));
    RSM_CHECK(targets > 0 && (targets & ~(RSM_DIT_LORA_ATTN | RSM_DIT_LORA_MLP)) == 0,
              RSM_ERR_VALUE, "targets must name 'attn' and/or 'mlp'");
    dit->config = base->config;
    dit->config.checkpoint = base->config.checkpoint;
    dit->layout = base->layout;
    dit->params = base->params; /* borrowed */
    dit->owns_params = 0;
    size_t es = rsm_dtype_size(base->config.dtype);
    const int64_t W = base->config.width;
    dit->pos = rsm_malloc((size_t)(base->layout.tokens * W) * es);
    RSM_CHECK(dit->pos != NULL, RSM_ERR_MEMORY, "cannot allocate positions");
    memcpy(dit->pos, base->pos, (size_t)(base->layout.tokens * W) * es);
    rsm_dit_lora *lo = &dit->lora;
    lo->rank = rank;
    lo->scale = alpha / (double)rank;
    lo->targets = targets;
    const int64_t in[RSM_DIT_LINEARS] = {W, W, W, 4 * W};
    const int64_t out[RSM_DIT_LINEARS] = {3 * W, W, 4 * W, W};
    const int wanted[RSM_DIT_LINEARS] = {targets & RSM_DIT_LORA_ATTN, targets & RSM_DIT_LORA_ATTN,
                                         targets & RSM_DIT_LORA_MLP, targets & RSM_DIT_LORA_MLP};
    int64_t off = 0;
    int ok = 1;
    for (int k = 0; k < RSM_DIT_LINEARS; k++) {
        lo->a[k] = lo->b[k] = -1;
        if (!wanted[k]) continue;
        lo->a[k] = off;
        off = rsm_size_add(off, rsm_size_mul(rank, in[k], &ok), &ok);
        lo->b[k] = off;
        off = rsm_size_add(off, rsm_size_mul(out[k], rank, &ok), &ok);
    }
    lo->block_size = off;
    lo->num_params = rsm_size_mul(off, base->config.depth, &ok);
    if (!rsm_size_within(lo->num_params, ok)) {
        rsm_dit_free(dit);
        return rsm_fail(RSM_ERR_VALUE,
                        "lora(rank=%lld) on a DiT of width=%lld, depth=%lld would have more than "
                        "2^%d adapter parameters: rank is too large (see csrc/checked.h)",
                        (long long)rank, (long long)W, (long long)base->config.depth,
                        RSM_MAX_ELEMS_LOG2);
    }
    dit->lora_params = rsm_calloc((size_t)(lo->num_params > 0 ? lo->num_params : 1) * es);
    if (!dit->lora_params) {
        rsm_dit_free(dit);
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate LoRA adapters");
    }
    rsm_status status = RSM_REAL_CALL(base->config.dtype, dit_init_lora, dit, seed);
    if (status != RSM_OK) rsm_dit_free(dit);
    return status;
}

rsm_status
rsm_dit_reset_parameters(rsm_dit *dit, uint64_t seed)
{
    if (dit->lora.rank > 0) return RSM_REAL_CALL(dit->config.dtype, dit_init_lora, dit, seed);
    return RSM_REAL_CALL(dit->config.dtype, dit_init_params, dit, seed);
}

void
rsm_dit_free(rsm_dit *dit)
{
    if (dit->owns_params) rsm_free(dit->params);
    rsm_free(dit->pos);
    rsm_free(dit->lora_params);
    const rsm_backend *be = rsm_backend_or_cpu(dit->backend);
    rsm_backend_free(be, dit->acts);
    rsm_backend_free(be, dit->scratch);
    memset(dit, 0, sizeof(*dit));
}

void *
rsm_dit_trainable(const rsm_dit *dit)
{
    return dit->lora.rank > 0 ? dit->lora_params : dit->params;
}

int64_t
rsm_dit_num_trainable(const rsm_dit *dit)
{
    return dit->lora.rank > 0 ? dit->lora.num_params : dit->layout.num_params;
}

int64_t
rsm_dit_activation_bytes(const rsm_dit *dit, int64_t n)
{
    int64_t elems = RSM_REAL_CALL(dit->config.dtype, dit_activation_elems, dit, n);
    return elems < 0 ? -1 : elems * (int64_t)rsm_dtype_size(dit->config.dtype);
}

rsm_status
rsm_dit_forward(rsm_dit *dit, int64_t n, const void *x, const void *t, const void *cond, void *out)
{
    RSM_CHECK(n >= 0, RSM_ERR_VALUE, "batch size n=%lld must be >= 0", (long long)n);
    dit->generation += 1;
    dit->saved_rows = -1; /* no valid activations until this forward succeeds */
    rsm_status status =
        RSM_REAL_CALL(dit->config.dtype, dit_forward, dit, n, x, t, cond, out);
    if (status == RSM_OK) dit->saved_rows = n;
    return status;
}

rsm_status
rsm_dit_backward(rsm_dit *dit, int64_t n, const void *dout, void *dparams, void *dx)
{
    RSM_CHECK(n == dit->saved_rows, RSM_ERR_INTERNAL,
              "backward of %lld rows without a matching forward", (long long)n);
    return RSM_REAL_CALL(dit->config.dtype, dit_backward, dit, n, dout, dparams, dx);
}

static rsm_status
rsm_dit_model_forward(void *self, const rsm_path *path, int64_t n, const void *x, const void *t,
                      const void *cond, void *out)
{
    (void)path; /* the output is the path's native parameterization by training */
    return rsm_dit_forward((rsm_dit *)self, n, x, t, cond, out);
}

static rsm_status
rsm_dit_model_backward(void *self, int64_t n, const void *dout, void *dparams, void *dx)
{
    return rsm_dit_backward((rsm_dit *)self, n, dout, dparams, dx);
}

rsm_model
rsm_dit_as_model(rsm_dit *dit)
{
    rsm_model model = {rsm_dit_model_forward, dit, dit->config.dtype, dit->layout.dim, 1,
                       rsm_dit_model_backward, rsm_dit_trainable(dit), rsm_dit_num_trainable(dit), 1,
                       &dit->generation, &dit->saved_rows, dit->backend};
    return model;
}
