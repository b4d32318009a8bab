/* optim_py.c: the binding of the AdamW optimizer (csrc/optim.h): rsm._C.AdamWCore, its step and
 * zero-copy views of its state. */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "../backend.h"
#include "../optim.h"

typedef struct {
    PyObject_HEAD rsm_adamw opt;
    int initialised;
    const rsm_backend *backend; /* a device optimizer: m, v, ema are blocks of it; NULL: host */
    PyObject *backend_obj;      /* the capsule keeping it named (rsm.cuda.backend_table) */
} rsm_py_adamw;

/* The state of an optimizer on a device (the optimizer of a device model, read and written by
 * the backend's adamw_step op in the C loops): the core's rsm_adamw_init on the device's memory.
 * m = v = 0, ema = a copy of the (device) parameters; the config checked by the core. */
static rsm_status
rsm_adamw_init_on(rsm_adamw *opt, const rsm_backend *be, rsm_adamw_config config, rsm_dtype dtype,
                  int64_t num_params, const void *params)
{
    memset(opt, 0, sizeof(*opt));
    RSM_TRY(rsm_adamw_check_config(&config));
    size_t bytes = (size_t)num_params * rsm_dtype_size(dtype);
    opt->config = config;
    opt->dtype = dtype;
    opt->num_params = num_params;
    opt->m = be->alloc(be, bytes ? bytes : 1);
    opt->v = be->alloc(be, bytes ? bytes : 1);
    if (config.ema_decay > 0) opt->ema = be->alloc(be, bytes ? bytes : 1);
    if (!opt->m || !opt->v || (config.ema_decay > 0 && !opt->ema)) {
        rsm_backend_free(be, opt->m);
        rsm_backend_free(be, opt->v);
        rsm_backend_free(be, opt->ema);
        memset(opt, 0, sizeof(*opt));
        return rsm_fail(RSM_ERR_MEMORY, "cannot allocate AdamW state for %lld parameters on %s",
                        (long long)num_params, be->name);
    }
    be->memset_zero(be, opt->m, bytes);
    be->memset_zero(be, opt->v, bytes);
    if (opt->ema) be->copy(be, opt->ema, params, bytes, RSM_COPY_D2D);
    return be->check(be);
}

static void
rsm_adamw_py_release(rsm_py_adamw *self)
{
    if (!self->initialised) return;
    if (self->backend) {
        rsm_backend_free(self->backend, self->opt.m);
        rsm_backend_free(self->backend, self->opt.v);
        rsm_backend_free(self->backend, self->opt.ema);
        memset(&self->opt, 0, sizeof(self->opt));
    } else {
        rsm_adamw_free(&self->opt);
    }
    self->initialised = 0;
    self->backend = NULL;
    Py_CLEAR(self->backend_obj);
}

const struct rsm_backend *
rsm_py_adamw_backend(PyObject *obj)
{
    return ((rsm_py_adamw *)obj)->backend;
}

static int
rsm_adamw_py_init(rsm_py_adamw *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params",        "lr",        "beta1",   "beta2", "eps", "weight_decay",
                             "max_grad_norm", "ema_decay", "backend", NULL};
    PyObject *params_obj, *backend_obj = Py_None;
    rsm_adamw_config c = {1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|dddddddO", kwlist, &params_obj, &c.lr,
                                     &c.beta1, &c.beta2, &c.eps, &c.weight_decay, &c.max_grad_norm,
                                     &c.ema_decay, &backend_obj))
        return -1;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    const rsm_backend *be = rsm_py_backend_arg(backend_obj, "AdamW");
    if (be == NULL && PyErr_Occurred()) return -1;
    if (rsm_py_on_device(be)) {
        /* the parameters of a device model (its .params): a flat device array of its dtype */
        rsm_py_tensor *dev = rsm_py_tensor_on(module, params_obj, "AdamW", "params", kDLCUDA);
        if (!dev) return -1;
        rsm_dtype dtype = rsm_tensor_dtype(&dev->t);
        rsm_status status = RSM_OK;
        if (dev->t.device.device_id != be->device || !rsm_tensor_is_contiguous(&dev->t) ||
            (dtype != RSM_F32 && dtype != RSM_F64)) {
            rsm_py_raisef(PyExc_ValueError, "AdamW",
                          "params must be a contiguous float32/float64 array on %s (the model's "
                          ".params)", be->name);
            Py_DECREF(dev);
            return -1;
        }
        rsm_adamw_py_release(self);
        status = rsm_adamw_init_on(&self->opt, be, c, dtype, rsm_tensor_numel(&dev->t),
                                   rsm_py_tensor_data(dev));
        Py_DECREF(dev);
        if (status != RSM_OK) {
            rsm_py_raise(status, "AdamW");
            return -1;
        }
        self->backend = be;
        self->backend_obj = Py_NewRef(backend_obj);
        self->initialised = 1;
        return 0;
    }
    rsm_py_tensor *params = NULL;
    /* accept float32 or float64 parameter buffers */
    if (PyObject_TypeCheck(params_obj, rsm_state(module)->tensor_type)) {
        params = (rsm_py_tensor *)Py_NewRef(params_obj);
    } else {
        params = rsm_py_tensor_arg(module, params_obj, "AdamW", "params", RSM_F32);
    }
    if (!params) return -1;
    rsm_dtype dtype = rsm_tensor_dtype(&params->t);
    rsm_adamw_py_release(self);
    rsm_status status = rsm_adamw_init(&self->opt, c, dtype, rsm_tensor_numel(&params->t),
                                       rsm_py_tensor_data(params));
    Py_DECREF(params);
    if (status != RSM_OK) {
        rsm_py_raise(status, "AdamW");
        return -1;
    }
    self->initialised = 1;
    return 0;
}

static void
rsm_adamw_py_dealloc(rsm_py_adamw *self)
{
    PyTypeObject *type = Py_TYPE(self);
    rsm_adamw_py_release(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* step(params, grads, lr=None) -> grad_norm */
static PyObject *
rsm_adamw_py_step(rsm_py_adamw *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "grads", "lr", NULL};
    PyObject *params_obj, *grads_obj;
    double lr = NAN;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|d", kwlist, &params_obj, &grads_obj, &lr))
        return NULL;
    if (isnan(lr)) lr = self->opt.config.lr;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    const rsm_backend *be = self->backend;
    /* a device optimizer steps device arrays (the backend's adamw_step, the op the loops call) */
    rsm_py_tensor *params =
        be ? rsm_py_vector_arg_on(module, be, params_obj, "step", "params", self->opt.dtype, -1)
           : rsm_py_tensor_out_arg(module, params_obj, "step", "params", self->opt.dtype);
    if (!params) return NULL;
    rsm_py_tensor *grads =
        be ? rsm_py_vector_arg_on(module, be, grads_obj, "step", "grads", self->opt.dtype, -1)
           : rsm_py_tensor_out_arg(module, grads_obj, "step", "grads", self->opt.dtype);
    if (!grads) {
        Py_DECREF(params);
        return NULL;
    }
    PyObject *result = NULL;
    if (params->t.ndim != 1 || rsm_tensor_numel(&params->t) != self->opt.num_params) {
        rsm_py_raisef(PyExc_ValueError, "step",
                      "params must have shape [%lld], got %d dimensions "
                      "and %lld elements",
                      (long long)self->opt.num_params, (int)params->t.ndim,
                      (long long)rsm_tensor_numel(&params->t));
    } else if (grads->t.ndim != 1 || rsm_tensor_numel(&grads->t) != self->opt.num_params) {
        rsm_py_raisef(PyExc_ValueError, "step",
                      "grads must have shape [%lld], got %d dimensions "
                      "and %lld elements",
                      (long long)self->opt.num_params, (int)grads->t.ndim,
                      (long long)rsm_tensor_numel(&grads->t));
    } else {
        double norm = 0.0;
        rsm_status status;
        Py_BEGIN_ALLOW_THREADS
        if (be)
            status = RSM_BACKEND_CALL(be, self->opt.dtype, adamw_step, &self->opt,
                                      rsm_py_tensor_data(params), rsm_py_tensor_data(grads), lr,
                                      &norm);
        else
            status = rsm_adamw_step(&self->opt, rsm_py_tensor_data(params),
                                    rsm_py_tensor_data(grads), lr, &norm);
        Py_END_ALLOW_THREADS
        if (status != RSM_OK)
            rsm_py_raise(status, "step");
        else
            result = PyFloat_FromDouble(norm);
    }
    Py_DECREF(params);
    Py_DECREF(grads);
    return result;
}

static PyObject *
rsm_adamw_state_view(rsm_py_adamw *self, void *data)
{
    if (!data) Py_RETURN_NONE;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    return (PyObject *)rsm_py_tensor_view_on(module, self->backend, (PyObject *)self, data,
                                             self->opt.dtype, 1, &self->opt.num_params, 0);
}

static PyObject *
rsm_adamw_py_get_m(rsm_py_adamw *self, void *closure)
{
    return rsm_adamw_state_view(self, self->opt.m);
}

static PyObject *
rsm_adamw_py_get_v(rsm_py_adamw *self, void *closure)
{
    return rsm_adamw_state_view(self, self->opt.v);
}

static PyObject *
rsm_adamw_py_get_ema(rsm_py_adamw *self, void *closure)
{
    return rsm_adamw_state_view(self, self->opt.ema);
}

static PyObject *
rsm_adamw_py_get_step(rsm_py_adamw *self, void *closure)
{
    return PyLong_FromLongLong(self->opt.step);
}

static int
rsm_adamw_py_set_step(rsm_py_adamw *self, PyObject *value, void *closure)
{
    long long step = value ? PyLong_AsLongLong(value) : -1;
    if (step == -1 && PyErr_Occurred()) return -1;
    if (step < 0) {
        PyErr_SetString(PyExc_ValueError, "step must be a non-negative int");
        return -1;
    }
    self->opt.step = step;
    return 0;
}

static PyObject *
rsm_adamw_py_get_config(rsm_py_adamw *self, void *closure)
{
    const rsm_adamw_config *c = &self->opt.config;
    return Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:d,s:d}", "lr", c->lr, "beta1", c->beta1, "beta2",
                         c->beta2, "eps", c->eps, "weight_decay", c->weight_decay, "max_grad_norm",
                         c->max_grad_norm, "ema_decay", c->ema_decay);
}

static PyMethodDef rsm_adamw_methods[] = {
    {"step", (PyCFunction)(void (*)(void))rsm_adamw_py_step, METH_VARARGS | METH_KEYWORDS,
     "step(params, grads, lr=None) -> grad norm"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_adamw_getset[] = {
    {"m", (getter)rsm_adamw_py_get_m, NULL, "first moments (view)", NULL},
    {"v", (getter)rsm_adamw_py_get_v, NULL, "second moments (view)", NULL},
    {"ema", (getter)rsm_adamw_py_get_ema, NULL, "EMA parameters (view) or None", NULL},
    {"step_count", (getter)rsm_adamw_py_get_step, (setter)rsm_adamw_py_set_step, "completed steps",
     NULL},
    {"config", (getter)rsm_adamw_py_get_config, NULL, "hyper-parameters", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_adamw_slots[] = {
    {Py_tp_init, rsm_adamw_py_init},
    {Py_tp_dealloc, rsm_adamw_py_dealloc},
    {Py_tp_methods, rsm_adamw_methods},
    {Py_tp_getset, rsm_adamw_getset},
    {Py_tp_doc, "AdamWCore(params, lr, beta1, beta2, eps, weight_decay, max_grad_norm, ema_decay, "
                "backend=None)"},
    {0, NULL},
};

static PyType_Spec rsm_adamw_spec = {"rsm._C.AdamWCore", sizeof(rsm_py_adamw), 0,
                                     Py_TPFLAGS_DEFAULT, rsm_adamw_slots};

rsm_adamw *
rsm_py_adamw_arg(PyObject *module, PyObject *obj, const char *func, const char *argname)
{
    if (!PyObject_TypeCheck(obj, rsm_state(module)->adamw_type) ||
        !((rsm_py_adamw *)obj)->initialised) {
        rsm_py_raisef(PyExc_TypeError, func, "%s must be an rsm AdamW optimizer core, got %s",
                      argname, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return &((rsm_py_adamw *)obj)->opt;
}

int
rsm_py_optim_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_adamw_spec, &rsm_state(module)->adamw_type, "AdamWCore");
}
