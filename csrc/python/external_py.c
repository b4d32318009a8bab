/* external_py.c: rsm._C.ExternalCore, a network outside rsm (a torch module, a numpy function)
 * as a model core of model_py.c over csrc/nn/external.h: the samplers, rollouts, estimators and
 * the update call it through the same vtable as the MLP and the DiT.
 *
 * The C loops run with the interpreter lock released; each callback takes it for the one Python
 * call it makes per batch and gives it back. Inputs and outputs cross as zero-copy rsm.Tensor
 * views (DLPack producers: torch.from_dlpack / np.from_dlpack read them without a copy), valid
 * only during the call:
 *     forward(x[n, dim], t[n], cond[n, cond_dim] or None) -> out [n, dim] (any DLPack array of
 *         the model's dtype on the CPU; checked, then copied into the caller's buffer)
 *     backward(x, t, cond, cotangent[n, dim], dparams[num_params] or None, dx[n, dim] or None)
 *         adds the parameter VJP into dparams and writes the input VJP into dx, in place
 * x, t, cond and cotangent are read-only. A callback that raises, or a forward that returns the
 * wrong shape, dtype or device, becomes RSM_ERR_CALLBACK carrying the message; the Python
 * exception stays set, so the entry point that ran the C loop raises it (rsm_py_raise). */
#include "binding.h"

#include <string.h>

#include "../nn/external.h"

typedef struct {
    rsm_py_model model;
    rsm_external ext;
    PyObject *forward_fn;  /* forward(x, t, cond) -> out */
    PyObject *backward_fn; /* backward(x, t, cond, cotangent, dparams, dx), or None */
    PyObject *name;        /* str: how messages name the model ("TorchModel(Net)") */
} rsm_py_external;

static int
rsm_external_as_model_op(PyObject *module, rsm_py_model *self, const char *func, rsm_model *model,
                         PyThread_type_lock *lock)
{
    (void)module, (void)func, (void)lock;
    *model = rsm_external_as_model(&((rsm_py_external *)self)->ext);
    return 0;
}

static void
rsm_external_release(rsm_py_model *base)
{
    rsm_py_external *self = (rsm_py_external *)base;
    if (base->initialised) rsm_external_free(&self->ext);
    Py_CLEAR(self->forward_fn);
    Py_CLEAR(self->backward_fn);
    Py_CLEAR(self->name);
}

static int
rsm_external_traverse(rsm_py_model *base, visitproc visit, void *arg)
{
    rsm_py_external *self = (rsm_py_external *)base;
    Py_VISIT(self->forward_fn);
    Py_VISIT(self->backward_fn);
    return 0;
}

static int
rsm_external_clear(rsm_py_model *base)
{
    rsm_py_external *self = (rsm_py_external *)base;
    Py_CLEAR(self->forward_fn);
    Py_CLEAR(self->backward_fn);
    return 0;
}

static const rsm_py_model_ops rsm_external_py_ops = {"ExternalModel",      0,
                                                  rsm_external_as_model_op, rsm_external_release,
                                                  rsm_external_traverse,    rsm_external_clear};

/* ---- the callbacks (called from the C loops without the interpreter lock) ------------------ */

/* One argument of a callback: `data` as a view of [rows] (cols 0) or [rows, cols], read-only
 * unless `writable`; NULL data is None. */
typedef struct {
    const void *data;
    int64_t rows, cols;
    int writable;
} rsm_external_arg;

/* Call `fn` with the views of args[count]; a new reference, or NULL with an exception set. */
static PyObject *
rsm_external_call(PyObject *module, rsm_py_external *self, PyObject *fn, const rsm_external_arg *args,
                  int count)
{
    PyObject *views = PyTuple_New(count);
    for (int i = 0; views && i < count; i++) {
        const rsm_external_arg *a = &args[i];
        int64_t shape[2] = {a->rows, a->cols};
        PyObject *v = a->data ? (PyObject *)rsm_py_tensor_view(
                                    module, (PyObject *)self, (void *)a->data,
                                    self->ext.config.dtype, a->cols > 0 ? 2 : 1, shape, !a->writable)
                              : Py_NewRef(Py_None);
        if (!v) Py_CLEAR(views);
        else PyTuple_SET_ITEM(views, i, v);
    }
    PyObject *result = views ? PyObject_Call(fn, views, NULL) : NULL;
    Py_XDECREF(views);
    return result;
}

/* With the interpreter lock and a Python exception set: the status that carries its message
 * (the exception itself stays set for the entry point to raise). */
static rsm_status
rsm_external_failed(rsm_py_external *self, const char *what)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
    if (!msg) PyErr_Clear();
    const char *name = self->name ? PyUnicode_AsUTF8(self->name) : NULL;
    if (!name) PyErr_Clear();
    rsm_status status = rsm_fail(RSM_ERR_CALLBACK, "%s: %s raised %s: %s", name ? name : "model",
                                 what, type ? ((PyTypeObject *)type)->tp_name : "an exception",
                                 msg ? msg : "");
    Py_XDECREF(text);
    PyErr_Restore(type, value, tb);
    return status;
}

static rsm_status
rsm_external_forward_cb(void *user, int64_t n, const void *x, const void *t, const void *cond,
                        void *out)
{
    rsm_py_external *self = (rsm_py_external *)user;
    const rsm_external_config *c = &self->ext.config;
    rsm_status status = RSM_OK;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    const rsm_external_arg args[3] = {{x, n, c->dim, 0}, {t, n, 0, 0}, {cond, n, c->cond_dim, 0}};
    PyObject *result = rsm_external_call(module, self, self->forward_fn, args, 3);
    rsm_py_tensor *arr = NULL;
    if (result) {
        const char *name = PyUnicode_AsUTF8(self->name);
        arr = name ? rsm_py_tensor_arg(module, result, name, "the forward's output", c->dtype)
                   : NULL;
        if (arr && (arr->t.ndim != 2 || arr->t.shape[0] != n || arr->t.shape[1] != c->dim)) {
            PyObject *shape = PyTuple_New(arr->t.ndim);
            for (int32_t i = 0; shape && i < arr->t.ndim; i++)
                PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong((long long)arr->t.shape[i]));
            if (shape)
                PyErr_Format(PyExc_ValueError,
                             "%U: the forward returned an output of shape %R, expected (%lld, "
                             "%lld) (rows of x, the model's dim)",
                             self->name, shape, (long long)n, (long long)c->dim);
            Py_XDECREF(shape);
            Py_CLEAR(arr);
        }
    }
    if (arr)
        memcpy(out, rsm_py_tensor_data(arr), (size_t)n * (size_t)c->dim * rsm_dtype_size(c->dtype));
    else
        status = rsm_external_failed(self, "forward");
    Py_XDECREF(arr);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return status;
}

static rsm_status
rsm_external_backward_cb(void *user, int64_t n, const void *x, const void *t, const void *cond,
                         const void *dout, void *dparams, void *dx)
{
    rsm_py_external *self = (rsm_py_external *)user;
    const rsm_external_config *c = &self->ext.config;
    rsm_status status = RSM_OK;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    const rsm_external_arg args[6] = {{x, n, c->dim, 0},    {t, n, 0, 0},
                                      {cond, n, c->cond_dim, 0}, {dout, n, c->dim, 0},
                                      {dparams, c->num_params, 0, 1}, {dx, n, c->dim, 1}};
    PyObject *result = rsm_external_call(module, self, self->backward_fn, args, 6);
    if (!result) status = rsm_external_failed(self, "backward");
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return status;
}

/* ---- the type ------------------------------------------------------------------------------ */

static int
rsm_external_py_init(rsm_py_external *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"forward",  "backward", "dim",           "cond_dim", "num_params",
                             "dtype",    "name",     "cond_optional", NULL};
    PyObject *forward_fn, *backward_fn, *dtype_obj = NULL, *name = NULL;
    long long dim, cond_dim = 0, num_params = 0;
    int cond_optional = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOL|LLOUp", kwlist, &forward_fn, &backward_fn,
                                     &dim, &cond_dim, &num_params, &dtype_obj, &name,
                                     &cond_optional))
        return -1;
    const char *func = "ExternalModel";
    if (!PyCallable_Check(forward_fn)) {
        rsm_py_raisef(PyExc_TypeError, func, "forward must be callable, got %s",
                      Py_TYPE(forward_fn)->tp_name);
        return -1;
    }
    if (backward_fn != Py_None && !PyCallable_Check(backward_fn)) {
        rsm_py_raisef(PyExc_TypeError, func, "backward must be callable or None, got %s",
                      Py_TYPE(backward_fn)->tp_name);
        return -1;
    }
    if (num_params > 0 && backward_fn == Py_None) {
        rsm_py_raisef(PyExc_ValueError, func, "num_params=%lld needs a backward callable",
                      num_params);
        return -1;
    }
    rsm_dtype dtype;
    if (rsm_py_parse_real_dtype(dtype_obj, func, &dtype) < 0) return -1;
    if (rsm_py_model_init_begin(&self->model, &rsm_external_py_ops) < 0) return -1;
    rsm_external_config config = {dtype, dim, cond_dim, cond_optional, num_params};
    rsm_external_ops ops = {rsm_external_forward_cb,
                            backward_fn == Py_None ? NULL : rsm_external_backward_cb};
    rsm_status status = rsm_external_init(&self->ext, config, ops, self);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        return -1;
    }
    self->forward_fn = Py_NewRef(forward_fn);
    self->backward_fn = Py_NewRef(backward_fn);
    self->name = name ? Py_NewRef(name) : PyUnicode_FromString("external model");
    if (!self->name) return -1;
    return rsm_py_model_init_end(&self->model, 1);
}

static PyObject *
rsm_external_py_get_params(rsm_py_external *self, void *closure)
{
    (void)closure;
    if (rsm_py_model_ready(&self->model, "params") < 0) return NULL;
    int64_t n = self->ext.config.num_params;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    if (n == 0) return (PyObject *)rsm_py_tensor_new(module, self->ext.config.dtype, 1, &n, 1);
    return (PyObject *)rsm_py_tensor_view(module, (PyObject *)self, self->ext.params,
                                          self->ext.config.dtype, 1, &n, 0);
}

static PyObject *
rsm_external_py_get_config(rsm_py_external *self, void *closure)
{
    (void)closure;
    if (rsm_py_model_ready(&self->model, "config") < 0) return NULL;
    const rsm_external_config *c = &self->ext.config;
    return Py_BuildValue("{s:L,s:L,s:L,s:s,s:O,s:O}", "dim", (long long)c->dim, "cond_dim",
                         (long long)c->cond_dim, "num_params", (long long)c->num_params, "dtype",
                         rsm_dtype_name(c->dtype), "name", self->name, "cond_optional",
                         c->cond_optional ? Py_True : Py_False);
}

static PyMethodDef rsm_external_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))rsm_py_model_forward_method,
     METH_VARARGS | METH_KEYWORDS, "forward(x, t, cond=None, keep=False)"},
    {"vjp", (PyCFunction)(void (*)(void))rsm_py_model_vjp_method, METH_VARARGS | METH_KEYWORDS,
     "vjp(x, t, cotangent, cond=None) -> (out, dx, dparams)"},
    {"backward", (PyCFunction)rsm_py_model_backward_method, METH_VARARGS,
     "backward(cotangent, token) -> (dx, dparams)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_external_getset[] = {
    {"params", (getter)rsm_external_py_get_params, NULL,
     "flat trainable parameters (writable zero-copy view; owned by this object)", NULL},
    {"config", (getter)rsm_external_py_get_config, NULL, "configuration", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_external_slots[] = {
    {Py_tp_init, rsm_external_py_init},
    {Py_tp_dealloc, rsm_py_model_dealloc},
    {Py_tp_traverse, rsm_py_model_traverse},
    {Py_tp_clear, rsm_py_model_clear},
    {Py_tp_methods, rsm_external_methods},
    {Py_tp_getset, rsm_external_getset},
    {Py_tp_doc, "ExternalCore(forward, backward, dim, cond_dim=0, num_params=0, dtype='float32', "
                "name='external model', cond_optional=False)"},
    {0, NULL},
};

static PyType_Spec rsm_external_spec = {"rsm._C.ExternalCore", sizeof(rsm_py_external), 0,
                                        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
                                        rsm_external_slots};

int
rsm_py_external_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_external_spec, &rsm_state(module)->external_type,
                           "ExternalCore");
}
