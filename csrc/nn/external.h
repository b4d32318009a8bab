/* external.h: a network that lives outside rsm (a PyTorch module, a numpy function, ...) as an
 * instance of the model vtable (model.h), so that the samplers, rollouts, estimators and the update
 * (train/update.h) run on it unchanged: one path through the engine for every backbone.
 *
 * The network is reached through two callbacks, each called once per batch:
 *     forward(user, n, x[n, dim], t[n], cond[n, cond_dim] or NULL, out[n, dim])
 *     backward(user, n, x, t, cond, dout[n, dim], dparams[num_params] or NULL, dx[n, dim] or NULL)
 * backward receives the inputs of the last forward (kept here, so the caller need not keep them
 * alive) and must ADD d<dout, out>/d params into dparams (the vtable's accumulate contract) and
 * WRITE the input VJP into dx. How a callback computes these (autograd, recomputation) is its
 * business; a failing callback returns a status with its message (rsm_fail), never aborts.
 *
 * The trainable parameters are one flat buffer owned here (`params`), so rsm's optimizer (optim.h)
 * updates them in place and a failed update restores them (update.h); an external framework views
 * this buffer (zero-copy) as its parameters. Frozen weights stay outside, untouched by rsm.
 */
#ifndef RSM_EXTERNAL_H
#define RSM_EXTERNAL_H

#include <stdint.h>

#include "model.h"

typedef struct rsm_external_ops {
    rsm_status (*forward)(void *user, int64_t n, const void *x, const void *t, const void *cond,
                          void *out);
    /* NULL for a model that is never differentiated (with num_params == 0) */
    rsm_status (*backward)(void *user, int64_t n, const void *x, const void *t, const void *cond,
                           const void *dout, void *dparams, void *dx);
} rsm_external_ops;

typedef struct rsm_external_config {
    rsm_dtype dtype;    /* RSM_F32 or RSM_F64 */
    int64_t dim;        /* data dimension D */
    int64_t cond_dim;   /* 0: unconditional */
    int cond_optional;  /* 1: cond may be NULL though cond_dim > 0 */
    int64_t num_params; /* trainable parameters (the flat buffer); 0 for a frozen model */
} rsm_external_config;

typedef struct rsm_external {
    rsm_external_config config;
    rsm_external_ops ops;
    void *user;           /* passed to the callbacks as is */
    void *params;         /* [num_params] zero-initialised, owned (rsm_malloc), or NULL */
    uint64_t generation;  /* bumped by every forward: names the inputs kept for the backward */
    int64_t saved_rows;   /* rows of the last forward (0: none) */
    int saved_has_cond;   /* the last forward had a condition */
    int64_t saved_capacity; /* rows the buffers below hold */
    void *saved_x, *saved_t, *saved_cond; /* the last forward's inputs, copied */
} rsm_external;

rsm_status rsm_external_init(rsm_external *ext, rsm_external_config config, rsm_external_ops ops,
                             void *user);
void rsm_external_free(rsm_external *ext);
rsm_model rsm_external_as_model(rsm_external *ext);

#endif /* RSM_EXTERNAL_H */
