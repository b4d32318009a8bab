/* guided.c: the guided model (see guided.h): dtype dispatch and the stacked inner forward. */
#include "guided.h"

#include "../backend.h"
#include "../real_api.h"
#include "../tensor.h"

/* rsm_guided_combine/split/stack/sum_halves_f32/_f64, defined in guided_real.c */
RSM_DECLARE_REAL_API(RSM_API_GUIDED)

void
rsm_guided_combine(rsm_dtype dtype, int64_t m, double scale, const void *u2, void *out)
{
    RSM_REAL_CALL(dtype, guided_combine, m, scale, u2, out);
}

void
rsm_guided_split(rsm_dtype dtype, int64_t m, double scale, const void *dout, void *du2)
{
    RSM_REAL_CALL(dtype, guided_split, m, scale, dout, du2);
}

void
rsm_guided_stack(const rsm_guided *g, int64_t n, const void *x, const void *t, const void *cond,
                 void *x2, void *t2, void *cond2)
{
    const int64_t D = g->inner.dim, C = g->inner.cond_dim;
    RSM_REAL_CALL(g->inner.dtype, guided_stack, n, D, C, g->null_cond, x, t, cond, x2, t2, cond2);
}

rsm_status
rsm_guided_forward(rsm_guided *g, const rsm_path *path, int64_t n, const void *x, const void *t,
                   const void *cond, void *out)
{
    rsm_status status = RSM_OK;
    const int64_t D = g->inner.dim, C = g->inner.cond_dim;
    const size_t item = rsm_dtype_size(g->inner.dtype);
    void *x2 = NULL, *t2 = NULL, *cond2 = NULL, *u2 = NULL;
    RSM_CHECK(C >= 1 && g->null_cond != NULL, RSM_ERR_VALUE,
              "classifier-free guidance needs a conditional model (cond_dim=%lld) and a null "
              "condition", (long long)C);
    RSM_CHECK(cond != NULL, RSM_ERR_VALUE,
              "a guided model needs a condition for every row (cond of shape [n, %lld])",
              (long long)C);
    RSM_CHECK(n >= 0, RSM_ERR_VALUE, "n=%lld must be >= 0", (long long)n);
    if (n == 0) return RSM_OK;
    /* buffers and ops on the inner model's device (backend.h) */
    const rsm_backend *be = rsm_backend_or_cpu(g->inner.backend);
    const rsm_dtype dtype = g->inner.dtype;
    x2 = rsm_backend_alloc(be, (size_t)(2 * n * D), item);
    t2 = rsm_backend_alloc(be, (size_t)(2 * n), item);
    cond2 = rsm_backend_alloc(be, (size_t)(2 * n * C), item);
    u2 = rsm_backend_alloc(be, (size_t)(2 * n * D), item);
    RSM_CHECK_GOTO(x2 && t2 && cond2 && u2, RSM_ERR_MEMORY,
                   "cannot allocate the stacked batch of %lld rows", (long long)(2 * n));
    RSM_BACKEND_CALL(be, dtype, guided_stack, n, D, C, g->null_cond, x, t, cond, x2, t2, cond2);
    /* one inner forward over [cond; null]: both passes share the GEMMs of one batch */
    RSM_TRY_GOTO(g->inner.forward(g->inner.self, path, 2 * n, x2, t2, cond2, u2));
    RSM_BACKEND_CALL(be, dtype, guided_combine, n * D, g->scale, u2, out);
    status = be->check(be);
fail:
    rsm_backend_free(be, x2);
    rsm_backend_free(be, t2);
    rsm_backend_free(be, cond2);
    rsm_backend_free(be, u2);
    return status;
}

static rsm_status
rsm_guided_model_forward(void *self, const rsm_path *path, int64_t n, const void *x,
                         const void *t, const void *cond, void *out)
{
    return rsm_guided_forward((rsm_guided *)self, path, n, x, t, cond, out);
}

/* The backward of the last forward: the combination's cotangent split over the stacked rows
 * (rsm_guided_split), the inner model's backward over all 2n of them (its parameter gradients of
 * both passes summed), and dx = dx_cond + dx_uncond. */
static rsm_status
rsm_guided_model_backward(void *self, int64_t n, const void *dout, void *dparams, void *dx)
{
    rsm_guided *g = (rsm_guided *)self;
    rsm_status status = RSM_OK;
    const int64_t D = g->inner.dim;
    const size_t item = rsm_dtype_size(g->inner.dtype);
    RSM_CHECK(g->inner.backward != NULL, RSM_ERR_VALUE, "the guided model's inner model is not trainable");
    RSM_CHECK(n >= 0, RSM_ERR_VALUE, "n=%lld must be >= 0", (long long)n);
    if (n == 0) return RSM_OK;
    const rsm_backend *be = rsm_backend_or_cpu(g->inner.backend);
    const rsm_dtype dtype = g->inner.dtype;
    void *du2 = rsm_backend_alloc(be, (size_t)(2 * n * D), item);
    void *dx2 = dx ? rsm_backend_alloc(be, (size_t)(2 * n * D), item) : NULL;
    RSM_CHECK_GOTO(du2 && (!dx || dx2), RSM_ERR_MEMORY,
                   "cannot allocate the stacked cotangent of %lld rows", (long long)(2 * n));
    RSM_BACKEND_CALL(be, dtype, guided_split, n * D, g->scale, dout, du2);
    RSM_TRY_GOTO(g->inner.backward(g->inner.self, 2 * n, du2, dparams, dx2));
    if (dx) RSM_BACKEND_CALL(be, dtype, guided_sum_halves, n * D, dx2, dx);
    status = be->check(be);
fail:
    rsm_backend_free(be, du2);
    rsm_backend_free(be, dx2);
    return status;
}

rsm_model
rsm_guided_as_model(rsm_guided *g)
{
    rsm_model model = {rsm_guided_model_forward, g, g->inner.dtype, g->inner.dim,
                       g->inner.cond_dim};
    if (g->inner.backward) {
        /* trainable through its inner model (the fine-tuning update, csrc/train/update.h); no
         * forward token of its own: the Python wrapper keeps the inner model's */
        model.backward = rsm_guided_model_backward;
        model.params = g->inner.params;
        model.num_params = g->inner.num_params;
    }
    model.backend = g->inner.backend;
    return model;
}
