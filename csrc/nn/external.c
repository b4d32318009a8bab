/* external.c: the model vtable (model.h) over two callbacks (external.h). Bookkeeping only: the
 * flat parameter buffer, the generation counter, and a copy of the last forward's inputs, so the
 * backward is that forward's VJP whatever the caller did with its buffers since. */
#include "external.h"

#include <string.h>

#include "../checked.h"

rsm_status
rsm_external_init(rsm_external *ext, rsm_external_config config, rsm_external_ops ops, void *user)
{
    memset(ext, 0, sizeof(*ext));
    RSM_CHECK(config.dtype == RSM_F32 || config.dtype == RSM_F64, RSM_ERR_TYPE,
              "external model: dtype must be float32 or float64");
    RSM_TRY(rsm_check_size_arg("dim", config.dim, 1));
    RSM_TRY(rsm_check_size_arg("cond_dim", config.cond_dim, 0));
    RSM_TRY(rsm_check_size_arg("num_params", config.num_params, 0));
    RSM_CHECK(ops.forward != NULL, RSM_ERR_VALUE, "external model: a forward callback is required");
    RSM_CHECK(config.num_params == 0 || ops.backward != NULL, RSM_ERR_VALUE,
              "external model: num_params=%lld needs a backward callback",
              (long long)config.num_params);
    ext->config = config;
    ext->ops = ops;
    ext->user = user;
    if (config.num_params > 0) {
        ext->params = rsm_calloc((size_t)config.num_params * rsm_dtype_size(config.dtype));
        RSM_CHECK(ext->params != NULL, RSM_ERR_MEMORY, "cannot allocate %lld parameters",
                  (long long)config.num_params);
    }
    return RSM_OK;
}

void
rsm_external_free(rsm_external *ext)
{
    rsm_free(ext->params);
    rsm_free(ext->saved_x);
    rsm_free(ext->saved_t);
    rsm_free(ext->saved_cond);
    memset(ext, 0, sizeof(*ext));
}

/* Room for the inputs of an n-row forward (grown, never shrunk: batches repeat their sizes). */
static rsm_status
rsm_external_reserve(rsm_external *ext, int64_t n)
{
    if (n <= ext->saved_capacity) return RSM_OK;
    const rsm_external_config *c = &ext->config;
    const size_t es = rsm_dtype_size(c->dtype);
    int ok = 1;
    int64_t xs = rsm_size_mul(n, c->dim, &ok), cs = rsm_size_mul(n, c->cond_dim, &ok);
    RSM_CHECK(rsm_size_within(xs, ok) && rsm_size_within(cs, ok), RSM_ERR_VALUE,
              "external model: %lld rows are too many (see csrc/checked.h)", (long long)n);
    void *x = rsm_malloc((size_t)xs * es), *t = rsm_malloc((size_t)n * es);
    void *cond = cs > 0 ? rsm_malloc((size_t)cs * es) : NULL;
    if (!x || !t || (cs > 0 && !cond)) {
        rsm_free(x), rsm_free(t), rsm_free(cond);
        return rsm_fail(RSM_ERR_MEMORY, "external model: cannot keep the inputs of %lld rows",
                        (long long)n);
    }
    rsm_free(ext->saved_x), rsm_free(ext->saved_t), rsm_free(ext->saved_cond);
    ext->saved_x = x, ext->saved_t = t, ext->saved_cond = cond;
    ext->saved_capacity = n;
    return RSM_OK;
}

static rsm_status
rsm_external_forward(void *self, const rsm_path *path, int64_t n, const void *x, const void *t,
                     const void *cond, void *out)
{
    (void)path; /* the external network's output is already in the path's native parameterization */
    rsm_external *ext = (rsm_external *)self;
    const rsm_external_config *c = &ext->config;
    RSM_CHECK(n >= 0, RSM_ERR_VALUE, "external model: n=%lld rows", (long long)n);
    RSM_CHECK(cond != NULL || c->cond_dim == 0 || c->cond_optional, RSM_ERR_VALUE,
              "the model is conditional (cond_dim=%lld): cond is required", (long long)c->cond_dim);
    ext->generation++; /* whatever happens next, the previous forward's inputs are gone */
    ext->saved_rows = 0;
    if (n == 0) return RSM_OK;
    const size_t es = rsm_dtype_size(c->dtype);
    if (ext->ops.backward) { /* differentiable: keep the inputs for the backward */
        RSM_TRY(rsm_external_reserve(ext, n));
        memcpy(ext->saved_x, x, (size_t)n * (size_t)c->dim * es);
        memcpy(ext->saved_t, t, (size_t)n * es);
        if (cond && c->cond_dim > 0)
            memcpy(ext->saved_cond, cond, (size_t)n * (size_t)c->cond_dim * es);
        ext->saved_has_cond = cond != NULL && c->cond_dim > 0;
    }
    RSM_TRY(ext->ops.forward(ext->user, n, x, t, c->cond_dim > 0 ? cond : NULL, out));
    ext->saved_rows = n;
    return RSM_OK;
}

static rsm_status
rsm_external_backward(void *self, int64_t n, const void *dout, void *dparams, void *dx)
{
    rsm_external *ext = (rsm_external *)self;
    RSM_CHECK(ext->ops.backward != NULL, RSM_ERR_TYPE,
              "external model: no backward callback to differentiate with");
    RSM_CHECK(ext->saved_rows == n && n > 0, RSM_ERR_VALUE,
              "external model: backward of %lld rows, but the last forward had %lld",
              (long long)n, (long long)ext->saved_rows);
    return ext->ops.backward(ext->user, n, ext->saved_x, ext->saved_t,
                             ext->saved_has_cond ? ext->saved_cond : NULL, dout, dparams, dx);
}

rsm_model
rsm_external_as_model(rsm_external *ext)
{
    /* a frozen model with a backward (a reference) still gives input VJPs (the lean adjoint) */
    const int differentiable = ext->ops.backward != NULL;
    rsm_model model = {
        .forward = rsm_external_forward,
        .self = ext,
        .dtype = ext->config.dtype,
        .dim = ext->config.dim,
        .cond_dim = ext->config.cond_dim,
        .backward = differentiable ? rsm_external_backward : NULL,
        .params = ext->params,
        .num_params = ext->config.num_params,
        .cond_optional = ext->config.cond_optional,
        .generation = differentiable ? &ext->generation : NULL,
        .saved_rows = differentiable ? &ext->saved_rows : NULL,
    };
    return model;
}
