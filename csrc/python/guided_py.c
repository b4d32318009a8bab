/* guided_py.c: the binding of classifier-free guidance (csrc/nn/guided.h).
 *
 *   GuidedCore(inner, scale, null_cond)   a model core (model_py.c) usable wherever a model core
 *                                         is (sample, transition_log_prob): the C sampler calls
 *                                         its guided forward, so guided sampling is the ordinary
 *                                         sampler; it runs under its inner model's lock
 *   guidance_combine(u2, scale)           [2n, D] -> [n, D]  (the forward combination)
 *   guidance_split(dout, scale)           [n, D] -> [2n, D]  (its backward)
 *
 * The Python wrapper rsm.Guided runs the inner model's forward_keep/backward/vjp on the stacked
 * rows itself and uses the two functions above, so its training forward is bitwise the
 * sampler's (same stacked batch, same combination code).
 */
#include "binding.h"

#include <math.h>

#include "../nn/guided.h"

typedef struct {
    rsm_py_model model;
    PyObject *inner;          /* the inner model core (MLPCore, ...) */
    rsm_py_tensor *null_cond; /* [cond_dim] of the inner dtype */
    double scale;
    rsm_guided guided; /* refreshed from `inner` before every use */
} rsm_py_guided;

/* The guided model's vtable, its inner model resolved now; the lock is the inner model's. */
static int
rsm_guided_as_model_op(PyObject *module, rsm_py_model *obj, const char *func, rsm_model *model,
                       PyThread_type_lock *lock)
{
    rsm_py_guided *self = (rsm_py_guided *)obj;
    if (rsm_py_model_arg(module, self->inner, func, &self->guided.inner, lock) < 0) return -1;
    self->guided.scale = self->scale;
    self->guided.null_cond = rsm_py_tensor_data(self->null_cond);
    *model = rsm_guided_as_model(&self->guided);
    return 0;
}

static int
rsm_guided_clear(rsm_py_model *obj)
{
    rsm_py_guided *self = (rsm_py_guided *)obj;
    Py_CLEAR(self->inner);
    Py_CLEAR(self->null_cond);
    obj->initialised = 0;
    return 0;
}

static void
rsm_guided_release(rsm_py_model *obj)
{
    rsm_guided_clear(obj);
}

static int
rsm_guided_traverse(rsm_py_model *obj, visitproc visit, void *arg)
{
    rsm_py_guided *self = (rsm_py_guided *)obj;
    Py_VISIT(self->inner);
    Py_VISIT((PyObject *)self->null_cond);
    return 0;
}

static const rsm_py_model_ops rsm_guided_ops = {
    "Guided", 0, rsm_guided_as_model_op, rsm_guided_release, rsm_guided_traverse, rsm_guided_clear};

static int
rsm_guided_py_init(rsm_py_guided *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"inner", "scale", "null_cond", NULL};
    PyObject *inner, *null_obj;
    double scale;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OdO", kwlist, &inner, &scale, &null_obj))
        return -1;
    if (rsm_py_model_init_begin(&self->model, &rsm_guided_ops) < 0) return -1;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    if (PyObject_TypeCheck(inner, rsm_state(module)->guided_type)) {
        rsm_py_raisef(PyExc_TypeError, "Guided", "model is already guided");
        return -1;
    }
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_py_model_arg(module, inner, "Guided", &model, &lock) < 0) return -1;
    if (model.cond_dim < 1) {
        rsm_py_raisef(PyExc_ValueError, "Guided",
                      "classifier-free guidance needs a conditional model, got cond_dim=0");
        return -1;
    }
    if (!isfinite(scale)) {
        rsm_py_raisef(PyExc_ValueError, "Guided", "scale=%g must be finite", scale);
        return -1;
    }
    rsm_py_tensor *null_cond =
        rsm_py_vector_arg(module, null_obj, "Guided", "null_cond", model.dtype, model.cond_dim);
    if (!null_cond) return -1;
    if (rsm_py_check_finite(null_cond, model.dtype, "Guided", "null_cond") < 0) {
        Py_DECREF(null_cond);
        return -1;
    }
    Py_INCREF(inner);
    self->inner = inner;
    self->null_cond = null_cond;
    self->scale = scale;
    return rsm_py_model_init_end(&self->model, 0);
}

static PyObject *
rsm_guided_py_get_scale(rsm_py_guided *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->scale);
}

static PyObject *
rsm_guided_py_get_inner(rsm_py_guided *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->inner ? self->inner : Py_None);
}

static PyObject *
rsm_guided_py_get_null_cond(rsm_py_guided *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->null_cond ? (PyObject *)self->null_cond : Py_None);
}

static PyMethodDef rsm_guided_methods[] = {
    RSM_PY_MODEL_FORWARD("forward(x, t, cond) -> guided output"),
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_guided_getset[] = {
    {"scale", (getter)rsm_guided_py_get_scale, NULL, "guidance scale w", NULL},
    {"inner", (getter)rsm_guided_py_get_inner, NULL, "the inner model core", NULL},
    {"null_cond", (getter)rsm_guided_py_get_null_cond, NULL, "the null condition [cond_dim]", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_guided_slots[] = {
    {Py_tp_init, rsm_guided_py_init},
    RSM_PY_MODEL_SLOTS,
    {Py_tp_methods, rsm_guided_methods},
    {Py_tp_getset, rsm_guided_getset},
    {Py_tp_doc, "GuidedCore(inner, scale, null_cond[cond_dim])"},
    {0, NULL},
};

static PyType_Spec rsm_guided_spec = {"rsm._C.GuidedCore", sizeof(rsm_py_guided), 0,
                                      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_guided_slots};

/* A float32 or float64 matrix argument (the dtype of whatever was passed). */
static rsm_py_tensor *
rsm_any_real_matrix(PyObject *module, PyObject *obj, const char *func, const char *name)
{
    rsm_py_tensor *t = rsm_py_real_arg(module, obj, func, name);
    if (t && t->t.ndim != 2) {
        rsm_py_raisef(PyExc_ValueError, func, "%s must be a matrix [rows, dim], got %d dimensions",
                      name, (int)t->t.ndim);
        Py_CLEAR(t);
    }
    return t;
}

/* guidance_combine(u2[2n, D], scale) -> u[n, D] = u2[n:] + scale (u2[:n] - u2[n:]) and its VJP
 * guidance_split(dout[n, D], scale) -> du2[2n, D] = [scale dout; (1 - scale) dout] */
static PyObject *
rsm_guidance_op(PyObject *module, PyObject *args, int combine)
{
    const char *func = combine ? "guidance_combine" : "guidance_split";
    PyObject *in_obj;
    double scale;
    if (!PyArg_ParseTuple(args, "Od", &in_obj, &scale)) return NULL;
    rsm_py_tensor *in = rsm_any_real_matrix(module, in_obj, func, combine ? "u2" : "cotangent");
    if (!in) return NULL;
    rsm_py_tensor *out = NULL;
    const int64_t rows = in->t.shape[0], cols = in->t.shape[1];
    const rsm_dtype dtype = rsm_tensor_dtype(&in->t);
    if (combine && rows % 2 != 0) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "u2 must stack [u_cond; u_uncond] (an even number of rows), got %lld",
                      (long long)rows);
        goto done;
    }
    int64_t shape[2] = {combine ? rows / 2 : 2 * rows, cols};
    out = rsm_py_tensor_new(module, dtype, 2, shape, 0);
    if (out && combine)
        rsm_guided_combine(dtype, shape[0] * cols, scale, rsm_py_tensor_data(in),
                           rsm_py_tensor_data(out));
    else if (out)
        rsm_guided_split(dtype, rows * cols, scale, rsm_py_tensor_data(in),
                         rsm_py_tensor_data(out));
done:
    Py_DECREF(in);
    return (PyObject *)out;
}

static PyObject *
rsm_py_guidance_combine(PyObject *module, PyObject *args)
{
    return rsm_guidance_op(module, args, 1);
}

static PyObject *
rsm_py_guidance_split(PyObject *module, PyObject *args)
{
    return rsm_guidance_op(module, args, 0);
}

static PyMethodDef rsm_guidance_functions[] = {
    {"guidance_combine", rsm_py_guidance_combine, METH_VARARGS,
     "guidance_combine(u2[2n, D], scale) -> u[n, D]"},
    {"guidance_split", rsm_py_guidance_split, METH_VARARGS,
     "guidance_split(cotangent[n, D], scale) -> [2n, D]"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_guided_exec(PyObject *module)
{
    if (rsm_py_add_type(module, &rsm_guided_spec, &rsm_state(module)->guided_type, "GuidedCore") <
        0)
        return -1;
    return PyModule_AddFunctions(module, rsm_guidance_functions);
}
