/* mlp.c: layout, allocation and dtype dispatch of the MLP backbone (math in mlp_real.c). */
#include "mlp.h"

#include "../backend.h"
#include "../checked.h"

#include <stdlib.h>
#include <string.h>

#include "../real_api.h"

/* rsm_mlp_init_params/forward/backward_f32/_f64, defined in mlp_real.c (list: real_api.h) */
RSM_DECLARE_REAL_API(RSM_API_MLP)

rsm_status
rsm_mlp_layout_of(rsm_mlp_config c, rsm_mlp_layout *out)
{
    rsm_mlp_layout l;
    int ok = 1;
    RSM_TRY(rsm_check_size_arg("dim", c.dim, 1));
    RSM_TRY(rsm_check_size_arg("hidden", c.hidden, 1));
    RSM_TRY(rsm_check_size_arg("depth", c.depth, 0));
    RSM_TRY(rsm_check_size_arg("cond_dim", c.cond_dim, 0));
    RSM_TRY(rsm_check_size_arg("temb_dim", c.temb_dim, 2));
    l.in_dim = rsm_size_add(rsm_size_add(c.dim, c.temb_dim, &ok), c.cond_dim, &ok);
    l.in_w = 0;
    l.in_b = rsm_size_add(l.in_w, rsm_size_mul(c.hidden, l.in_dim, &ok), &ok);
    l.block0 = rsm_size_add(l.in_b, c.hidden, &ok);
    l.block_size = rsm_size_mul(2, rsm_size_add(rsm_size_mul(c.hidden, c.hidden, &ok), c.hidden, &ok),
                                &ok);
    l.out_w = rsm_size_add(l.block0, rsm_size_mul(c.depth, l.block_size, &ok), &ok);
    l.out_b = rsm_size_add(l.out_w, rsm_size_mul(c.dim, c.hidden, &ok), &ok);
    l.num_params = rsm_size_add(l.out_b, c.dim, &ok);
    RSM_CHECK(rsm_size_within(l.num_params, ok), RSM_ERR_VALUE,
              "MLP(dim=%lld, hidden=%lld, depth=%lld, cond_dim=%lld, temb_dim=%lld) would have more "
              "than 2^%d parameters: hidden or depth is too large (see csrc/checked.h)",
              (long long)c.dim, (long long)c.hidden, (long long)c.depth, (long long)c.cond_dim,
              (long long)c.temb_dim, RSM_MAX_ELEMS_LOG2);
    *out = l;
    return RSM_OK;
}

rsm_status
rsm_mlp_init(rsm_mlp *mlp, rsm_mlp_config config, uint64_t seed)
{
    memset(mlp, 0, sizeof(*mlp));
    RSM_CHECK(config.dim >= 1, RSM_ERR_VALUE, "dim=%lld must be >= 1", (long long)config.dim);
    RSM_CHECK(config.hidden >= 1, RSM_ERR_VALUE, "hidden=%lld must be >= 1",
              (long long)config.hidden);
    RSM_CHECK(config.depth >= 0, RSM_ERR_VALUE, "depth=%lld must be >= 0", (long long)config.depth);
    RSM_CHECK(config.cond_dim >= 0, RSM_ERR_VALUE, "cond_dim=%lld must be >= 0",
              (long long)config.cond_dim);
    RSM_CHECK(config.temb_dim >= 2 && config.temb_dim % 2 == 0, RSM_ERR_VALUE,
              "temb_dim=%lld must be even and >= 2", (long long)config.temb_dim);
    RSM_CHECK(config.dtype == RSM_F32 || config.dtype == RSM_F64, RSM_ERR_TYPE,
              "dtype must be float32 or float64");
    RSM_TRY(rsm_mlp_layout_of(config, &mlp->layout));
    mlp->config = config;
    mlp->params = rsm_calloc((size_t)mlp->layout.num_params * rsm_dtype_size(config.dtype));
    RSM_CHECK(mlp->params != NULL, RSM_ERR_MEMORY, "cannot allocate %lld parameters",
              (long long)mlp->layout.num_params);
    rsm_status status = rsm_mlp_reset_parameters(mlp, seed);
    if (status != RSM_OK) rsm_mlp_free(mlp);
    return status;
}

rsm_status
rsm_mlp_reset_parameters(rsm_mlp *mlp, uint64_t seed)
{
    return RSM_REAL_CALL(mlp->config.dtype, mlp_init_params, mlp, seed);
}

void
rsm_mlp_free(rsm_mlp *mlp)
{
    const rsm_backend *be = rsm_backend_or_cpu(mlp->backend);
    rsm_free(mlp->params);
    rsm_backend_free(be, mlp->acts);
    rsm_backend_free(be, mlp->scratch);
    memset(mlp, 0, sizeof(*mlp));
}

rsm_status
rsm_mlp_forward(rsm_mlp *mlp, int64_t n, const void *x, const void *t, const void *cond,
                void *out)
{
    RSM_CHECK(n >= 0, RSM_ERR_VALUE, "batch size n=%lld must be >= 0", (long long)n);
    RSM_CHECK(mlp->config.cond_dim == 0 || cond != NULL, RSM_ERR_VALUE,
              "this model is conditional (cond_dim=%lld) and needs cond",
              (long long)mlp->config.cond_dim);
    mlp->generation += 1;
    mlp->saved_rows = n;
    return RSM_REAL_CALL(mlp->config.dtype, mlp_forward, mlp, n, x, t, cond, out);
}

rsm_status
rsm_mlp_backward(rsm_mlp *mlp, int64_t n, const void *dout, void *dparams, void *dx)
{
    return RSM_REAL_CALL(mlp->config.dtype, mlp_backward, mlp, n, dout, dparams, dx);
}

static rsm_status
rsm_mlp_model_backward(void *self, int64_t n, const void *dout, void *dparams, void *dx)
{
    return rsm_mlp_backward((rsm_mlp *)self, n, dout, dparams, dx);
}

static rsm_status
rsm_mlp_model_forward(void *self, const rsm_path *path, int64_t n, const void *x, const void *t,
                      const void *cond, void *out)
{
    (void)path; /* the MLP's output is the path's native parameterization by training */
    return rsm_mlp_forward((rsm_mlp *)self, n, x, t, cond, out);
}

rsm_model
rsm_mlp_as_model(rsm_mlp *mlp)
{
    rsm_model model = {rsm_mlp_model_forward, mlp, mlp->config.dtype, mlp->config.dim,
                       mlp->config.cond_dim, rsm_mlp_model_backward, mlp->params,
                       mlp->layout.num_params, 0, &mlp->generation, &mlp->saved_rows,
                       mlp->backend};
    return model;
}
