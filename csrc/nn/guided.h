/* guided.h: classifier-free guidance as a model (Ho & Salimans 2022; THEORY.md §9, §12.1 B).
 *
 * A guided model wraps a conditional model `inner` and a null condition (the "unconditional"
 * input the inner model was trained with by condition dropout: a null class id for the DiT, a
 * zero vector for an MLP). Its forward evaluates the inner model once on 2n stacked rows
 *
 *   [x; x], [t; t], [cond; null]   ->   [u_cond; u_uncond]
 *
 * and returns u = u_uncond + w (u_cond - u_uncond) (ops/guidance.h). Samplers and the objective
 * see an ordinary model, so guided sampling and guided evaluation inside the fine-tuning losses
 * use the same code as unguided ones. The backward of the combination (du_cond = w du,
 * du_uncond = (1 - w) du) is rsm_guided_split; the inner model's backward over the stacked rows
 * then sums both passes' parameter gradients, and the input gradient is dx_cond + dx_uncond.
 */
#ifndef RSM_GUIDED_H
#define RSM_GUIDED_H

#include <stdint.h>

#include "../status.h"
#include "model.h"

typedef struct rsm_guided {
    rsm_model inner;       /* the conditional model (cond_dim >= 1) */
    double scale;          /* guidance scale w (0: unconditional, 1: conditional) */
    const void *null_cond; /* [cond_dim] of inner.dtype: the null condition, not owned */
} rsm_guided;

/* The model vtable of a guided model (dim, cond_dim and dtype of the inner model). */
rsm_model rsm_guided_as_model(rsm_guided *guided);

/* out[n, dim] = guided output of x[n, dim], t[n], cond[n, cond_dim] (arrays of inner.dtype). */
rsm_status rsm_guided_forward(rsm_guided *guided, const rsm_path *path, int64_t n, const void *x,
                              const void *t, const void *cond, void *out);

/* Stack the inner model's inputs: x2[2n, dim] = [x; x], t2[2n] = [t; t],
 * cond2[2n, cond_dim] = [cond; null repeated]. */
void rsm_guided_stack(const rsm_guided *guided, int64_t n, const void *x, const void *t,
                      const void *cond, void *x2, void *t2, void *cond2);

/* Forward combination: out[m] = combine(u2[:m], u2[m:], scale), m = n * dim. */
void rsm_guided_combine(rsm_dtype dtype, int64_t m, double scale, const void *u2, void *out);

/* Backward of the combination: dout[m] -> du2[2m] = [scale dout; (1 - scale) dout]. */
void rsm_guided_split(rsm_dtype dtype, int64_t m, double scale, const void *dout, void *du2);

#endif /* RSM_GUIDED_H */
