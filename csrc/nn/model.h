/* model.h: what samplers and trainers need from a denoising network: a forward pass giving the
 * output in the path's native parameterization (velocity for flow, eps for VP).
 *
 * A model is a small vtable so that samplers run the same code on a trained MLP and on an
 * analytic model whose exact output is known (Gaussian mixtures, used as ground truth in tests).
 */
#ifndef RSM_MODEL_H
#define RSM_MODEL_H

#include <stdint.h>

#include "../path.h"
#include "../status.h"
#include "../tensor.h"

struct rsm_backend; /* backend.h */

typedef struct rsm_model {
    /* out[n, dim] = network(x[n, dim], t[n], cond[n, cond_dim] or NULL); arrays of `dtype`. */
    rsm_status (*forward)(void *self, const rsm_path *path, int64_t n, const void *x,
                          const void *t, const void *cond, void *out);
    void *self;
    rsm_dtype dtype;   /* RSM_F32 or RSM_F64 */
    int64_t dim;       /* data dimension D */
    int64_t cond_dim;  /* 0 for an unconditional model */
    /* Trainable models (MLP, DiT; NULL for analytic ones): the backward of the last forward,
     * dparams[num_params] += d<dout, out>/d params (may be NULL), dx = the input VJP (may be NULL),
     * and the parameters an optimizer updates. */
    rsm_status (*backward)(void *self, int64_t n, const void *dout, void *dparams, void *dx);
    void *params;
    int64_t num_params;
    int cond_optional; /* 1: cond may be NULL though cond_dim > 0 (DiT: every row the null class) */
    /* Trainable models: the counter every forward bumps (it names the saved activations, so a
     * backward can refuse a cotangent meant for another forward) and the rows of that forward. */
    const uint64_t *generation;
    const int64_t *saved_rows;
    /* The device the model's parameters, activations and forward/backward arrays live on; the
     * loops (sampler, update, pretraining) run their ops through this table (backend.h). NULL:
     * the CPU backend, so instances that predate the table (or leave it out) stay valid. */
    const struct rsm_backend *backend;
} rsm_model;

#endif /* RSM_MODEL_H */
