/* gmm_py.c: the binding of the Gaussian-mixture model (csrc/nn/gmm.h): rsm._C.GaussianMixtureCore,
 * an analytic model core (exact outputs, the ground truth of the sampler tests) of model_py.c,
 * with its own forward(path, x, t) and posterior(path, x, t). It has no activations: no lock. */
#include "binding.h"

#include "../nn/gmm.h"

typedef struct {
    rsm_py_model model;
    rsm_gmm gmm;
} rsm_py_gmm;

static int
rsm_gmm_as_model_op(PyObject *module, rsm_py_model *self, const char *func, rsm_model *model,
                    PyThread_type_lock *lock)
{
    (void)module, (void)func, (void)lock;
    *model = rsm_gmm_as_model(&((rsm_py_gmm *)self)->gmm);
    return 0;
}

static void
rsm_gmm_release(rsm_py_model *self)
{
    if (self->initialised) rsm_gmm_free(&((rsm_py_gmm *)self)->gmm);
}

/* reinit: __init__ may run again (it replaces the mixture) */
static const rsm_py_model_ops rsm_gmm_ops = {"GaussianMixture", 1,    rsm_gmm_as_model_op,
                                             rsm_gmm_release,   NULL, NULL};

static int
rsm_gmm_py_init(rsm_py_gmm *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"means", "stds", "weights", "dtype", NULL};
    PyObject *means_obj, *stds_obj, *weights_obj, *dtype_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O", kwlist, &means_obj, &stds_obj,
                                     &weights_obj, &dtype_obj))
        return -1;
    rsm_dtype dtype;
    if (rsm_py_parse_real_dtype(dtype_obj, "GaussianMixture", &dtype) < 0) return -1;
    if (rsm_py_model_init_begin(&self->model, &rsm_gmm_ops) < 0) return -1;
    const char *func = "GaussianMixture";
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_py_tensor *means = rsm_py_matrix_arg(module, means_obj, func, "means", RSM_F64, -1, -1);
    if (!means) return -1;
    int64_t K = means->t.shape[0];
    rsm_py_tensor *stds = rsm_py_vector_arg(module, stds_obj, func, "stds", RSM_F64, K);
    rsm_py_tensor *weights =
        stds ? rsm_py_vector_arg(module, weights_obj, func, "weights", RSM_F64, K) : NULL;
    int rc = -1;
    if (stds && weights) {
        rsm_gmm_release(&self->model);
        self->model.initialised = 0;
        rsm_status status =
            rsm_gmm_init(&self->gmm, K, means->t.shape[1], rsm_py_tensor_data(means),
                         rsm_py_tensor_data(stds), rsm_py_tensor_data(weights), dtype);
        if (status != RSM_OK)
            rsm_py_raise(status, func);
        else
            rc = rsm_py_model_init_end(&self->model, 0);
    }
    Py_XDECREF(means);
    Py_XDECREF(stds);
    Py_XDECREF(weights);
    return rc;
}

/* forward(path, x, t) -> native output; posterior(path, x, t) -> (x0_hat, eps_hat) */
static PyObject *
rsm_gmm_py_call(rsm_py_gmm *self, PyObject *args, int posterior)
{
    const char *func = posterior ? "posterior" : "forward";
    PyObject *path_obj, *x_obj, *t_obj;
    if (!PyArg_ParseTuple(args, "OOO", &path_obj, &x_obj, &t_obj)) return NULL;
    if (rsm_py_model_ready(&self->model, func) < 0) return NULL;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    const rsm_path *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!path) return NULL;
    rsm_py_tensor *x = NULL, *t = NULL, *cond = NULL, *a = NULL, *b = NULL;
    PyObject *result = NULL;
    rsm_dtype dtype = self->gmm.dtype;
    rsm_model model = rsm_gmm_as_model(&self->gmm);
    if (rsm_py_model_inputs(module, func, &model, x_obj, t_obj, Py_None, &x, &t, &cond) < 0)
        goto done;
    a = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    b = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    if (!a || !b) goto done;
    rsm_status status;
    int64_t n = x->t.shape[0];
    Py_BEGIN_ALLOW_THREADS
    if (posterior) {
        status =
            rsm_gmm_posterior(&self->gmm, path, n, rsm_py_tensor_data(x), rsm_py_tensor_data(t),
                              rsm_py_tensor_data(a), rsm_py_tensor_data(b));
    } else {
        status = model.forward(model.self, path, n, rsm_py_tensor_data(x), rsm_py_tensor_data(t),
                               NULL, rsm_py_tensor_data(a));
    }
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = posterior ? Py_BuildValue("(OO)", a, b) : Py_NewRef((PyObject *)a);
done:
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return result;
}

static PyObject *
rsm_gmm_py_forward(rsm_py_gmm *self, PyObject *args)
{
    return rsm_gmm_py_call(self, args, 0);
}

static PyObject *
rsm_gmm_py_posterior(rsm_py_gmm *self, PyObject *args)
{
    return rsm_gmm_py_call(self, args, 1);
}

static PyObject *
rsm_gmm_py_get_dim(rsm_py_gmm *self, void *closure)
{
    return PyLong_FromLongLong(self->gmm.dim);
}

static PyMethodDef rsm_gmm_methods[] = {
    {"forward", (PyCFunction)rsm_gmm_py_forward, METH_VARARGS,
     "forward(path, x, t) -> native output"},
    {"posterior", (PyCFunction)rsm_gmm_py_posterior, METH_VARARGS,
     "posterior(path, x, t) -> (x0_hat, eps_hat)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_gmm_getset[] = {
    {"dim", (getter)rsm_gmm_py_get_dim, NULL, "data dimension", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_gmm_slots[] = {
    {Py_tp_init, rsm_gmm_py_init},
    RSM_PY_MODEL_SLOTS,
    {Py_tp_methods, rsm_gmm_methods},
    {Py_tp_getset, rsm_gmm_getset},
    {Py_tp_doc, "GaussianMixtureCore(means[K, D], stds[K], weights[K], dtype='float32')"},
    {0, NULL},
};

static PyType_Spec rsm_gmm_spec = {"rsm._C.GaussianMixtureCore", sizeof(rsm_py_gmm), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_gmm_slots};

int
rsm_py_gmm_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_gmm_spec, &rsm_state(module)->gmm_type,
                           "GaussianMixtureCore");
}
