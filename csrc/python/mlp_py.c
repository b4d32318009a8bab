/* mlp_py.c: the binding of the MLP backbone (csrc/nn/mlp.h): rsm._C.MLPCore, a model core of
 * model_py.c (forward / vjp / backward, lock and lifetime there) with its constructor, parameter
 * view, configuration and layout. */
#include "binding.h"

#include "../backend.h"
#include "../nn/mlp.h"

typedef struct {
    rsm_py_model model;
    rsm_mlp mlp;
    PyObject *backend_obj; /* the capsule of mlp.backend (rsm.cuda.backend_table), or NULL */
} rsm_py_mlp;

/* A model on a device: the core initialises its parameters on the host (the Philox stream of
 * rsm_mlp_init, so the same seed gives the same parameters on every device), then the binding
 * moves them into a block of `be` and sets mlp.backend, through which the core allocates the
 * activations and runs every op. The core frees params with rsm_free (host memory), so the
 * binding frees a device block itself first (rsm_mlp_device_release). */
static int
rsm_mlp_to_device(rsm_mlp *mlp, const rsm_backend *be, const void *host_params)
{
    size_t bytes = (size_t)mlp->layout.num_params * rsm_dtype_size(mlp->config.dtype);
    void *block = rsm_py_device_copy_in(be, host_params, bytes, "MLP");
    if (block == NULL) return -1;
    if (mlp->backend == NULL) rsm_free(mlp->params); /* the host block of rsm_mlp_init */
    else mlp->backend->free(mlp->backend, mlp->params);
    mlp->params = block;
    mlp->backend = be;
    return 0;
}

static void
rsm_mlp_device_release(rsm_mlp *mlp)
{
    if (!rsm_py_on_device(mlp->backend)) return;
    mlp->backend->free(mlp->backend, mlp->params);
    mlp->params = NULL; /* rsm_mlp_free's rsm_free(NULL) is a no-op; acts go through backend */
}

static int
rsm_mlp_as_model_op(PyObject *module, rsm_py_model *self, const char *func, rsm_model *model,
                    PyThread_type_lock *lock)
{
    (void)module, (void)func, (void)lock;
    *model = rsm_mlp_as_model(&((rsm_py_mlp *)self)->mlp);
    return 0;
}

static void
rsm_mlp_release(rsm_py_model *self)
{
    rsm_py_mlp *m = (rsm_py_mlp *)self;
    if (self->initialised) {
        rsm_mlp_device_release(&m->mlp);
        rsm_mlp_free(&m->mlp);
    }
    Py_CLEAR(m->backend_obj);
}

static const rsm_py_model_ops rsm_mlp_ops = {"MLP",           0,    rsm_mlp_as_model_op,
                                             rsm_mlp_release, NULL, NULL};

static int
rsm_mlp_py_init(rsm_py_mlp *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dim",      "hidden", "depth", "cond_dim",
                             "temb_dim", "dtype",  "seed",  "backend", NULL};
    long long dim, hidden = 256, depth = 3, cond_dim = 0, temb_dim = 64;
    unsigned long long seed = 0;
    PyObject *dtype_obj = NULL, *backend_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "L|LLLLOKO", kwlist, &dim, &hidden, &depth,
                                     &cond_dim, &temb_dim, &dtype_obj, &seed, &backend_obj))
        return -1;
    rsm_dtype dtype;
    if (rsm_py_parse_real_dtype(dtype_obj, "MLP", &dtype) < 0) return -1;
    const rsm_backend *be = rsm_py_backend_arg(backend_obj, "MLP");
    if (be == NULL && PyErr_Occurred()) return -1;
    if (rsm_py_model_init_begin(&self->model, &rsm_mlp_ops) < 0) return -1;
    rsm_mlp_config config = {dim, hidden, depth, cond_dim, temb_dim, dtype};
    rsm_status status = rsm_mlp_init(&self->mlp, config, (uint64_t)seed);
    if (status != RSM_OK) {
        rsm_py_raise(status, "MLP");
        return -1;
    }
    if (rsm_py_on_device(be)) {
        if (rsm_mlp_to_device(&self->mlp, be, self->mlp.params) < 0) {
            rsm_mlp_free(&self->mlp);
            return -1;
        }
        self->backend_obj = Py_NewRef(backend_obj);
    }
    return rsm_py_model_init_end(&self->model, 1);
}

static PyObject *
rsm_mlp_py_get_params(rsm_py_mlp *self, void *closure)
{
    if (rsm_py_model_ready(&self->model, "params") < 0) return NULL;
    int64_t n = self->mlp.layout.num_params;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    return (PyObject *)rsm_py_tensor_view_on(module, self->mlp.backend, (PyObject *)self,
                                             self->mlp.params, self->mlp.config.dtype, 1, &n, 0);
}

static PyObject *
rsm_mlp_py_get_device(rsm_py_mlp *self, void *closure)
{
    return PyUnicode_FromString(rsm_py_on_device(self->mlp.backend) ? self->mlp.backend->name
                                                                    : "cpu");
}

static PyObject *
rsm_mlp_py_get_config(rsm_py_mlp *self, void *closure)
{
    const rsm_mlp_config *c = &self->mlp.config;
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:s}", "dim", (long long)c->dim, "hidden",
                         (long long)c->hidden, "depth", (long long)c->depth, "cond_dim",
                         (long long)c->cond_dim, "temb_dim", (long long)c->temb_dim, "dtype",
                         rsm_dtype_name(c->dtype));
}

static PyObject *
rsm_mlp_py_get_layout(rsm_py_mlp *self, void *closure)
{
    const rsm_mlp_layout *l = &self->mlp.layout;
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "in_dim", (long long)l->in_dim,
                         "in_w", (long long)l->in_w, "in_b", (long long)l->in_b, "block0",
                         (long long)l->block0, "block_size", (long long)l->block_size, "out_w",
                         (long long)l->out_w, "out_b", (long long)l->out_b, "num_params",
                         (long long)l->num_params);
}

static PyObject *
rsm_mlp_py_reset_parameters(rsm_py_mlp *self, PyObject *arg)
{
    unsigned long long seed = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (rsm_py_model_ready(&self->model, "reset_parameters") < 0) return NULL;
    rsm_mlp *mlp = &self->mlp;
    if (!rsm_py_on_device(mlp->backend)) {
        rsm_status status = rsm_mlp_reset_parameters(mlp, (uint64_t)seed);
        if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
        Py_RETURN_NONE;
    }
    /* on a device: the draws on a host copy of the model (the core's rule), then moved over */
    rsm_mlp host;
    rsm_status status = rsm_mlp_init(&host, mlp->config, (uint64_t)seed);
    if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
    int rc = rsm_mlp_to_device(mlp, mlp->backend, host.params);
    rsm_mlp_free(&host);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* set_params(src): device_py.c's rsm_py_set_params on the flat parameter block */
static PyObject *
rsm_mlp_py_set_params(rsm_py_mlp *self, PyObject *arg)
{
    if (rsm_py_model_ready(&self->model, "set_params") < 0) return NULL;
    rsm_mlp *mlp = &self->mlp;
    return rsm_py_set_params(rsm_module_of_type(Py_TYPE(self)), mlp->backend, self->model.lock,
                             mlp->params, mlp->config.dtype, mlp->layout.num_params, arg);
}

static PyMethodDef rsm_mlp_methods[] = {
    RSM_PY_MODEL_METHODS,
    {"reset_parameters", (PyCFunction)rsm_mlp_py_reset_parameters, METH_O,
     "reset_parameters(seed)"},
    {"set_params", (PyCFunction)rsm_mlp_py_set_params, METH_O,
     "set_params(src): copy flat parameters in (host array, or a device array on the model's "
     "device)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_mlp_getset[] = {
    {"params", (getter)rsm_mlp_py_get_params, NULL, "flat parameters (writable zero-copy view)",
     NULL},
    {"config", (getter)rsm_mlp_py_get_config, NULL, "configuration", NULL},
    {"device", (getter)rsm_mlp_py_get_device, NULL, "'cpu' or 'cuda:N' (the backend's name)",
     NULL},
    {"layout", (getter)rsm_mlp_py_get_layout, NULL, "offsets in the flat parameter buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_mlp_slots[] = {
    {Py_tp_init, rsm_mlp_py_init},
    RSM_PY_MODEL_SLOTS,
    {Py_tp_methods, rsm_mlp_methods},
    {Py_tp_getset, rsm_mlp_getset},
    {Py_tp_doc,
     "MLPCore(dim, hidden=256, depth=3, cond_dim=0, temb_dim=64, dtype='float32', seed=0, "
     "backend=None)"},
    {0, NULL},
};

static PyType_Spec rsm_mlp_spec = {"rsm._C.MLPCore", sizeof(rsm_py_mlp), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_mlp_slots};

int
rsm_py_mlp_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_mlp_spec, &rsm_state(module)->mlp_type, "MLPCore");
}
