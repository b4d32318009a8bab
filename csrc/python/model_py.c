/* model_py.c: the one model-type machinery of the binding, over the core's model vtable
 * (csrc/nn/model.h). Every model core (MLPCore, DiTCore, GuidedCore, GaussianMixtureCore) is an
 * rsm_py_model followed by its core struct, with ops that give its vtable and free its state;
 * init bookkeeping, the lock, dealloc / traverse / clear, the forward / vjp / backward methods and
 * the model argument of every entry point are written once, here.
 *
 * The lock guards a model's activation buffers while the GIL is released, so that two Python
 * threads cannot run the same model's forward at once; forward(keep=True) returns a token naming
 * the saved activations, which any later forward invalidates.
 */
#include "binding.h"

#include "../backend.h"

/* ---- init, lock, dealloc ------------------------------------------------------------------- */

int
rsm_py_model_init_begin(rsm_py_model *self, const rsm_py_model_ops *ops)
{
    if (self->initialised && !ops->reinit) {
        PyErr_Format(PyExc_RuntimeError, "%s(): already initialised", ops->name);
        return -1;
    }
    self->ops = ops;
    return 0;
}

int
rsm_py_model_init_end(rsm_py_model *self, int with_lock)
{
    self->initialised = 1;
    if (with_lock && !self->lock) {
        self->lock = PyThread_allocate_lock();
        if (!self->lock) {
            self->ops->release(self);
            self->initialised = 0;
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

void
rsm_py_model_dealloc(PyObject *obj)
{
    rsm_py_model *self = (rsm_py_model *)obj;
    PyTypeObject *type = Py_TYPE(obj);
    PyObject_GC_UnTrack(obj);
    if (self->ops) self->ops->release(self);
    self->initialised = 0;
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free(obj);
    Py_DECREF(type);
}

int
rsm_py_model_traverse(PyObject *obj, visitproc visit, void *arg)
{
    rsm_py_model *self = (rsm_py_model *)obj;
    Py_VISIT(Py_TYPE(obj));
    if (self->ops && self->ops->traverse) return self->ops->traverse(self, visit, arg);
    return 0;
}

int
rsm_py_model_clear(PyObject *obj)
{
    rsm_py_model *self = (rsm_py_model *)obj;
    if (self->ops && self->ops->clear) return self->ops->clear(self);
    return 0;
}

int
rsm_py_model_ready(rsm_py_model *self, const char *func)
{
    if (!self->initialised || !self->ops) {
        rsm_py_raisef(PyExc_RuntimeError, func, "the model is not initialised");
        return -1;
    }
    return 0;
}

/* An initialised model core -> its vtable and lock. */
static int
rsm_py_model_resolve(PyObject *module, rsm_py_model *self, const char *func, rsm_model *model,
                     PyThread_type_lock *lock)
{
    if (rsm_py_model_ready(self, func) < 0) return -1;
    *lock = self->lock;
    return self->ops->as_model(module, self, func, model, lock);
}

int
rsm_py_model_arg(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                 PyThread_type_lock *lock)
{
    rsm_module_state *state = rsm_state(module);
    PyTypeObject *types[] = {state->mlp_type, state->dit_type, state->gmm_type, state->guided_type,
                             state->external_type};
    *lock = NULL;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (types[i] && PyObject_TypeCheck(obj, types[i]))
            return rsm_py_model_resolve(module, (rsm_py_model *)obj, func, model, lock);
    rsm_py_raisef(PyExc_TypeError, func,
                  "model must be an rsm model (MLP, DiT, Guided, GaussianMixture or an external model such as rsm.TorchModel), got %s",
                  Py_TYPE(obj)->tp_name);
    return -1;
}

/* ---- the inputs of a model ----------------------------------------------------------------- */

int
rsm_py_cond_arg_on(PyObject *module, const rsm_backend *be, const char *func, rsm_dtype dtype,
                   int64_t cond_dim, int64_t rows, PyObject *cond_obj, rsm_py_tensor **cond)
{
    *cond = NULL;
    if (cond_obj == NULL || cond_obj == Py_None) return 0; /* a conditional model: the core says */
    if (cond_dim == 0) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "cond was given but the model is unconditional (cond_dim=0)");
        return -1;
    }
    *cond = rsm_py_matrix_arg_on(module, be, cond_obj, func, "cond", dtype, rows, cond_dim);
    if (!*cond || rsm_py_check_on(module, be, *cond, dtype, func, "cond", 0) < 0) return -1;
    return 0;
}

int
rsm_py_cond_arg(PyObject *module, const char *func, rsm_dtype dtype, int64_t cond_dim, int64_t rows,
                PyObject *cond_obj, rsm_py_tensor **cond)
{
    return rsm_py_cond_arg_on(module, NULL, func, dtype, cond_dim, rows, cond_obj, cond);
}

/* x, t and cond on the model's device (model->backend: NULL or the CPU is the CPU path). */
int
rsm_py_model_inputs(PyObject *module, const char *func, const rsm_model *model, PyObject *x_obj,
                    PyObject *t_obj, PyObject *cond_obj, rsm_py_tensor **x, rsm_py_tensor **t,
                    rsm_py_tensor **cond)
{
    const rsm_dtype dtype = model->dtype;
    const rsm_backend *be = model->backend;
    *x = rsm_py_matrix_arg_on(module, be, x_obj, func, "x", dtype, -1, model->dim);
    if (!*x) return -1;
    int64_t n = (*x)->t.shape[0];
    if (rsm_py_check_on(module, be, *x, dtype, func, "x", 0) < 0) return -1;
    *t = rsm_py_vector_arg_on(module, be, t_obj, func, "t", dtype, n);
    if (!*t || rsm_py_check_on(module, be, *t, dtype, func, "t", 1) < 0) return -1;
    return rsm_py_cond_arg_on(module, be, func, dtype, model->cond_dim, n, cond_obj, cond);
}

/* ---- forward / vjp / backward through the vtable, under the lock ---------------------------- */

/* forward(x, t, cond=None, keep=False) -> Tensor[n, dim], or (Tensor, token) with keep=True:
 * the token names the activations this forward saved, for backward(cotangent, token). */
static PyObject *
rsm_model_forward(PyObject *module, const rsm_model *model, PyThread_type_lock lock, PyObject *args,
                  PyObject *kwargs)
{
    static char *kwlist[] = {"x", "t", "cond", "keep", NULL};
    PyObject *x_obj, *t_obj, *cond_obj = Py_None;
    int keep = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Op", kwlist, &x_obj, &t_obj, &cond_obj,
                                     &keep))
        return NULL;
    if (keep && !model->generation)
        return rsm_py_raisef(PyExc_TypeError, "forward",
                             "keep=True needs a trainable model (MLP, DiT)");
    rsm_py_tensor *x = NULL, *t = NULL, *cond = NULL, *out = NULL;
    PyObject *result = NULL;
    if (rsm_py_model_inputs(module, "forward", model, x_obj, t_obj, cond_obj, &x, &t, &cond) < 0)
        goto done;
    out = rsm_py_tensor_new_on(module, model->backend, model->dtype, 2, x->t.shape, 0);
    if (!out) goto done;
    rsm_status status;
    uint64_t token = 0;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    status = model->forward(model->self, NULL, x->t.shape[0], rsm_py_tensor_data(x),
                            rsm_py_tensor_data(t), cond ? rsm_py_tensor_data(cond) : NULL,
                            rsm_py_tensor_data(out));
    if (model->generation) token = *model->generation;
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, "forward");
        goto done;
    }
    if (keep) {
        result = Py_BuildValue("(OK)", out, (unsigned long long)token);
    } else {
        result = (PyObject *)out;
        out = NULL;
    }
done:
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(cond);
    Py_XDECREF(out);
    return result;
}

/* vjp(x, t, cotangent, cond=None) -> (out, dx, dparams): out = forward(x, t, cond),
 * dx = (d out / dx)^T cotangent, dparams = (d out / d params)^T cotangent (flat). */
static PyObject *
rsm_model_vjp(PyObject *module, const rsm_model *model, PyThread_type_lock lock, PyObject *args,
              PyObject *kwargs)
{
    static char *kwlist[] = {"x", "t", "cotangent", "cond", NULL};
    PyObject *x_obj, *t_obj, *cot_obj, *cond_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O", kwlist, &x_obj, &t_obj, &cot_obj,
                                     &cond_obj))
        return NULL;
    if (!model->backward)
        return rsm_py_raisef(PyExc_TypeError, "vjp",
                             "the model has no parameters to differentiate");
    rsm_py_tensor *x = NULL, *t = NULL, *cond = NULL, *cot = NULL, *out = NULL, *dx = NULL,
                  *dparams = NULL;
    PyObject *result = NULL;
    const rsm_dtype dtype = model->dtype;
    if (rsm_py_model_inputs(module, "vjp", model, x_obj, t_obj, cond_obj, &x, &t, &cond) < 0)
        goto done;
    int64_t n = x->t.shape[0], num_params = model->num_params;
    const rsm_backend *be = model->backend;
    cot = rsm_py_matrix_arg_on(module, be, cot_obj, "vjp", "cotangent", dtype, n, model->dim);
    if (!cot || rsm_py_check_on(module, be, cot, dtype, "vjp", "cotangent", 0) < 0) goto done;
    out = rsm_py_tensor_new_on(module, be, dtype, 2, x->t.shape, 0);
    dx = rsm_py_tensor_new_on(module, be, dtype, 2, x->t.shape, 0);
    dparams = rsm_py_tensor_new_on(module, be, dtype, 1, &num_params, 1);
    if (!out || !dx || !dparams) goto done;
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    status = model->forward(model->self, NULL, n, rsm_py_tensor_data(x), rsm_py_tensor_data(t),
                            cond ? rsm_py_tensor_data(cond) : NULL, rsm_py_tensor_data(out));
    if (status == RSM_OK)
        status = model->backward(model->self, n, rsm_py_tensor_data(cot),
                                 rsm_py_tensor_data(dparams), rsm_py_tensor_data(dx));
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, "vjp");
        goto done;
    }
    result = Py_BuildValue("(OOO)", out, dx, dparams);
done:
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(cond);
    Py_XDECREF(cot);
    Py_XDECREF(out);
    Py_XDECREF(dx);
    Py_XDECREF(dparams);
    return result;
}

/* backward(cotangent, token) -> (dx, dparams): the VJP of the forward that returned `token`,
 * from its saved activations (no recomputation). Any later forward of this model (another call,
 * a sampler, another thread) invalidates the token: RuntimeError instead of a wrong gradient. */
static PyObject *
rsm_model_backward(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                   PyObject *args)
{
    PyObject *cot_obj;
    unsigned long long token;
    if (!PyArg_ParseTuple(args, "OK", &cot_obj, &token)) return NULL;
    if (!model->backward || !model->generation)
        return rsm_py_raisef(PyExc_TypeError, "backward",
                             "the model has no parameters to differentiate");
    const rsm_dtype dtype = model->dtype;
    const rsm_backend *be = model->backend;
    rsm_py_tensor *cot = rsm_py_matrix_arg_on(module, be, cot_obj, "backward", "cotangent", dtype,
                                              -1, model->dim);
    if (!cot) return NULL;
    if (rsm_py_check_on(module, be, cot, dtype, "backward", "cotangent", 0) < 0) {
        Py_DECREF(cot);
        return NULL;
    }
    int64_t n = cot->t.shape[0], num_params = model->num_params;
    int64_t shape[2] = {n, model->dim};
    rsm_py_tensor *dx = rsm_py_tensor_new_on(module, be, dtype, 2, shape, 0);
    rsm_py_tensor *dparams = rsm_py_tensor_new_on(module, be, dtype, 1, &num_params, 1);
    PyObject *result = NULL;
    if (dx && dparams) {
        rsm_status status = RSM_OK;
        int stale = 0;
        int64_t saved_rows = 0;
        Py_BEGIN_ALLOW_THREADS
        if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
        saved_rows = *model->saved_rows;
        if (*model->generation != token || saved_rows != n)
            stale = 1;
        else
            status = model->backward(model->self, n, rsm_py_tensor_data(cot),
                                     rsm_py_tensor_data(dparams), rsm_py_tensor_data(dx));
        if (lock) PyThread_release_lock(lock);
        Py_END_ALLOW_THREADS
        if (stale)
            rsm_py_raisef(PyExc_RuntimeError, "backward",
                          "the activations of forward %llu are gone (the model ran another forward "
                          "since, or cotangent has %lld rows instead of %lld); call "
                          "forward(..., keep=True) again",
                          token, (long long)n, (long long)saved_rows);
        else if (status != RSM_OK)
            rsm_py_raise(status, "backward");
        else
            result = Py_BuildValue("(OO)", dx, dparams);
    }
    Py_DECREF(cot);
    Py_XDECREF(dx);
    Py_XDECREF(dparams);
    return result;
}

/* The methods as listed in a model type's method table. */
PyObject *
rsm_py_model_forward_method(PyObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_resolve(module, (rsm_py_model *)self, "forward", &model, &lock) < 0)
        return NULL;
    return rsm_model_forward(module, &model, lock, args, kwargs);
}

PyObject *
rsm_py_model_vjp_method(PyObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_resolve(module, (rsm_py_model *)self, "vjp", &model, &lock) < 0) return NULL;
    return rsm_model_vjp(module, &model, lock, args, kwargs);
}

PyObject *
rsm_py_model_backward_method(PyObject *self, PyObject *args)
{
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_resolve(module, (rsm_py_model *)self, "backward", &model, &lock) < 0)
        return NULL;
    return rsm_model_backward(module, &model, lock, args);
}
