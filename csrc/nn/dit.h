/* dit.h: a class-conditional Diffusion Transformer (DiT, Peebles & Xie 2023) for small images.
 *
 *   tok   = patchify(x)                          [n, T, Pd]    T = (S/p)^2, Pd = C p^2
 *   h_0   = tok W_patch^T + b_patch + pos        [n, T, W]     pos: fixed 2D sin-cos (not trained)
 *   c     = MLP_t(temb(t)) + E_class[y]          [n, W]        temb: sinusoidal (as the MLP's),
 *                                                               MLP_t = Linear-SiLU-Linear
 *   block l (adaLN-Zero), sc = SiLU(c):
 *     shift1, scale1, gate1, shift2, scale2, gate2 = sc W_ada^T + b_ada           [n, 6W]
 *     h += gate1 * Attn(LN(h) (1 + scale1) + shift1)      multi-head self-attention, heads | W
 *     h += gate2 * MLP(LN(h) (1 + scale2) + shift2)       Linear(W, 4W) - GELU(tanh) - Linear(4W, W)
 *   final: shift, scale = sc W_fada^T + b_fada; out_tok = (LN(h) (1 + scale) + shift) W_out^T + b_out
 *   out   = unpatchify(out_tok)                  [n, C, S, S] = [n, dim]
 *
 * LN has no affine parameters (the modulation replaces them). Class ids 0..K-1 are the classes and
 * K the null class of classifier-free guidance (E_class has K + 1 rows); in the model vtable the id
 * travels as a real in cond[n, 1] (cond NULL: every row null).
 *
 * Initialisation (DiT §3.2 "adaLN-Zero"): linear weights Xavier-uniform with zero biases, E_class
 * and MLP_t weights N(0, 0.02^2), and the adaLN and output layers zero, so each block starts as the
 * identity and an untrained model outputs 0 whatever its input (like the MLP's zero output layer).
 *
 * LoRA (Hu et al. 2021): a DiT made by rsm_dit_init_lora shares (borrows) the base parameters of
 * another DiT and owns only adapters A [r, in], B [out, r] on the targeted linears (attention: qkv
 * and proj; MLP: fc1 and fc2): y = x W^T + b + (alpha / r) (x A^T) B^T. Its trainable parameters
 * (rsm_dit_trainable) are the adapters; the backward gives their gradients, never the base's.
 *
 * Gradient checkpointing: with config.checkpoint the forward keeps only each block's input and
 * modulation; the backward recomputes a block's activations (same code, same order, so the same
 * bits) right before differentiating it.
 */
#ifndef RSM_DIT_H
#define RSM_DIT_H

#include <stdint.h>

#include "../real_api.h"
#include "../status.h"
#include "../tensor.h"
#include "model.h"

typedef struct rsm_dit_config {
    int64_t image_size;  /* S: images are S x S */
    int64_t channels;    /* C */
    int64_t patch;       /* p, divides S */
    int64_t width;       /* W, the token width */
    int64_t depth;       /* L, number of blocks */
    int64_t heads;       /* divides W */
    int64_t num_classes; /* K; class id K is the null class */
    int64_t temb_dim;    /* length of the sinusoidal time embedding (even) */
    int checkpoint;      /* recompute block activations in backward */
    rsm_dtype dtype;     /* RSM_F32 or RSM_F64 */
} rsm_dit_config;

/* Offsets (in elements) inside the flat parameter buffer; a block's tensors are at
 * block0 + l * block_size + the block-relative offsets. */
typedef struct rsm_dit_layout {
    int64_t tokens, patch_dim, dim;
    int64_t patch_w, patch_b;          /* [W, Pd], [W] */
    int64_t temb_w1, temb_b1;          /* [W, F], [W] */
    int64_t temb_w2, temb_b2;          /* [W, W], [W] */
    int64_t class_emb;                 /* [K + 1, W] */
    int64_t block0, block_size;
    int64_t ada_w, ada_b;              /* [6W, W], [6W]     (block-relative) */
    int64_t qkv_w, qkv_b;              /* [3W, W], [3W] */
    int64_t proj_w, proj_b;            /* [W, W], [W] */
    int64_t fc1_w, fc1_b;              /* [4W, W], [4W] */
    int64_t fc2_w, fc2_b;              /* [W, 4W], [W] */
    int64_t final_ada_w, final_ada_b;  /* [2W, W], [2W] */
    int64_t out_w, out_b;              /* [Pd, W], [Pd] */
    int64_t num_params;
} rsm_dit_layout;

/* The four adaptable linears of a block, in this order. */
enum { RSM_DIT_QKV = 0, RSM_DIT_PROJ = 1, RSM_DIT_FC1 = 2, RSM_DIT_FC2 = 3, RSM_DIT_LINEARS = 4 };
#define RSM_DIT_LORA_ATTN 1 /* targets bit: qkv and proj */
#define RSM_DIT_LORA_MLP 2  /* targets bit: fc1 and fc2 */

typedef struct rsm_dit_lora {
    int64_t rank;        /* 0: no adapters */
    double scale;        /* alpha / rank */
    int targets;         /* RSM_DIT_LORA_* bits */
    int64_t a[RSM_DIT_LINEARS], b[RSM_DIT_LINEARS]; /* block-relative offsets, -1 if not adapted */
    int64_t block_size, num_params;
} rsm_dit_lora;

typedef struct rsm_dit {
    rsm_dit_config config;
    rsm_dit_layout layout;
    void *params;       /* [num_params] base parameters: owned, or borrowed (LoRA) */
    int owns_params;
    void *pos;          /* [T, W] fixed positional embedding, owned */
    rsm_dit_lora lora;
    void *lora_params;  /* [lora.num_params] adapters, owned (NULL without LoRA) */
    void *acts;         /* saved activations for `acts_rows` rows, owned */
    void *scratch;      /* backward scratch, owned */
    int64_t acts_rows;
    int acts_checkpoint; /* the mode the buffers were laid out for */
    uint64_t generation;
    int64_t saved_rows;
    /* where acts/scratch live and the forward/backward ops run (backend.h); NULL: the CPU */
    const struct rsm_backend *backend;
} rsm_dit;

/* The offsets of `config`, every size overflow-checked (csrc/checked.h): RSM_ERR_VALUE naming the
 * argument for a size or a parameter count above RSM_MAX_ELEMS. */
rsm_status rsm_dit_layout_of(rsm_dit_config config, rsm_dit_layout *out);
rsm_status rsm_dit_init(rsm_dit *dit, rsm_dit_config config, uint64_t seed);
/* A LoRA DiT over base's parameters (borrowed: base must outlive it). A ~ U(-1/sqrt(in),
 * 1/sqrt(in)) from (seed), B = 0, so it starts equal to base. */
rsm_status rsm_dit_init_lora(rsm_dit *dit, const rsm_dit *base, int64_t rank, double alpha,
                             int targets, uint64_t seed);
void rsm_dit_free(rsm_dit *dit);
/* RSM_ERR_MEMORY, with the parameters unchanged, when the draws cannot be allocated. */
rsm_status rsm_dit_reset_parameters(rsm_dit *dit, uint64_t seed);

/* The parameters a backward differentiates: the adapters of a LoRA DiT, else the base. */
void *rsm_dit_trainable(const rsm_dit *dit);
int64_t rsm_dit_num_trainable(const rsm_dit *dit);
/* Bytes of activations a forward of n rows keeps for the backward (in the current mode); -1 when
 * that count overflows or exceeds RSM_MAX_ELEMS elements (csrc/checked.h). */
int64_t rsm_dit_activation_bytes(const rsm_dit *dit, int64_t n);

/* out[n, dim] = DiT(x[n, dim], t[n], cond[n, 1] class ids as reals or NULL). Keeps activations. */
rsm_status rsm_dit_forward(rsm_dit *dit, int64_t n, const void *x, const void *t,
                           const void *cond, void *out);
/* Backward of the last forward: dparams += d<dout, out>/d trainable (may be NULL), dx = input VJP
 * (may be NULL). */
rsm_status rsm_dit_backward(rsm_dit *dit, int64_t n, const void *dout, void *dparams, void *dx);
rsm_model rsm_dit_as_model(rsm_dit *dit);

/* dit_real.c's entry points in both precisions (list: real_api.h), among them the test hook
 * rsm_dit_op_f64: forward and backward of one op (name: "layernorm", "modulate",
 * "gated_residual", "attention", "gelu", "patchify"), argument packing in dit_real.c. */
RSM_DECLARE_REAL_API(RSM_API_DIT)

#endif /* RSM_DIT_H */
