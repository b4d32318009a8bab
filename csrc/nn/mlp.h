/* mlp.h: the MLP backbone for low-dimensional data (2D toys).
 *
 *   input   = [x (dim), temb(t) (temb_dim), cond (cond_dim)]        sinusoidal time embedding
 *   h_0     = Linear_in(input)                                       [B, hidden]
 *   h_{l+1} = h_l + Linear2_l(SiLU(Linear1_l(h_l)))                  depth residual blocks
 *   out     = Linear_out(SiLU(h_depth))                              [B, dim], native parameterization
 *
 * Linear layers follow torch.nn.Linear: y = x W^T + b, W stored [out_features, in_features],
 * initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the Philox stream (seed, RSM_STREAM_INIT).
 * The output layer is zero-initialised, so an untrained model predicts 0 whatever its input:
 * training starts from a well-defined point and the first gradient steps are not dominated by a
 * random output head (the hidden layers still get gradients through W_out after the first step).
 *
 * All parameters live in one flat buffer (model.params in Python); the sizes below give the
 * offsets of the named views (llm.c's ParameterTensors pattern).
 */
#ifndef RSM_MLP_H
#define RSM_MLP_H

#include <stdint.h>

#include "../status.h"
#include "../tensor.h"
#include "model.h"

typedef struct rsm_mlp_config {
    int64_t dim;      /* data dimension */
    int64_t hidden;   /* width of the residual stream */
    int64_t depth;    /* number of residual blocks */
    int64_t cond_dim; /* length of the condition vector, 0 if unconditional */
    int64_t temb_dim; /* length of the sinusoidal time embedding (even) */
    rsm_dtype dtype;  /* RSM_F32 or RSM_F64 */
} rsm_mlp_config;

/* Offsets (in elements) of each parameter tensor inside the flat buffer. */
typedef struct rsm_mlp_layout {
    int64_t in_dim;            /* dim + temb_dim + cond_dim */
    int64_t in_w, in_b;        /* [hidden, in_dim], [hidden] */
    int64_t block0;            /* first block; block l starts at block0 + l * block_size */
    int64_t block_size;        /* w1 [hidden, hidden], b1 [hidden], w2 [hidden, hidden], b2 [hidden] */
    int64_t out_w, out_b;      /* [dim, hidden], [dim] */
    int64_t num_params;
} rsm_mlp_layout;

typedef struct rsm_mlp {
    rsm_mlp_config config;
    rsm_mlp_layout layout;
    void *params;        /* [num_params] flat, owned */
    void *acts;          /* saved activations for `acts_rows` rows, owned */
    int64_t acts_rows;
    void *scratch;       /* backward scratch for `acts_rows` rows, owned */
    uint64_t generation; /* incremented by every forward: names the saved activations */
    int64_t saved_rows;  /* rows of the last forward */
    /* where acts/scratch live and the forward/backward ops run (backend.h); NULL: the CPU */
    const struct rsm_backend *backend;
} rsm_mlp;

rsm_status rsm_mlp_init(rsm_mlp *mlp, rsm_mlp_config config, uint64_t seed);
void rsm_mlp_free(rsm_mlp *mlp);
/* The offsets of `config`, every size overflow-checked: RSM_ERR_VALUE naming the argument for a size
 * above RSM_MAX_ELEMS (csrc/checked.h) or a parameter count above it. */
rsm_status rsm_mlp_layout_of(rsm_mlp_config config, rsm_mlp_layout *out);
/* Re-draw the parameters from `seed` (same rule as rsm_mlp_init); RSM_ERR_MEMORY, with the
 * parameters unchanged, when the draws cannot be allocated. */
rsm_status rsm_mlp_reset_parameters(rsm_mlp *mlp, uint64_t seed);
/* The model vtable of this MLP (forward only; backward is called directly). */
rsm_model rsm_mlp_as_model(rsm_mlp *mlp);

/* Forward: out[n, dim]. Keeps the activations of these n rows for a following backward. */
rsm_status rsm_mlp_forward(rsm_mlp *mlp, int64_t n, const void *x, const void *t,
                           const void *cond, void *out);
/* Backward of the last forward: given dout[n, dim], dparams += d<dout, out>/d params (flat, may be
 * NULL to skip) and dx = d<dout, out>/dx [n, dim] (may be NULL to skip). */
rsm_status rsm_mlp_backward(rsm_mlp *mlp, int64_t n, const void *dout, void *dparams, void *dx);

#endif /* RSM_MLP_H */
