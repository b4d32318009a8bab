/* compute_py.c: the binding of models, paths, samplers, optimizers and pretraining.
 *
 * Each entry point: parse arguments -> convert tensors (rsm_py_tensor_arg: any DLPack producer,
 * exact dtype, C-contiguous) -> check shapes with messages naming the argument -> release the GIL
 * and call the core -> wrap outputs as rsm.Tensor. Objects that own core state (MLP, mixture,
 * path, optimizer) are heap types holding the core struct plus a lock, so that two Python threads
 * cannot run the same model's forward at once (its activations buffer is per model).
 */
#include "binding.h"

#include <math.h>
#include <string.h>

#include "../blas.h"
#include "../nn/gmm.h"
#include "../nn/mlp.h"
#include "../optim.h"
#include "../path.h"
#include "../rng.h"
#include "../sampler.h"
#include "../train/pretrain.h"
#include "../train/rollout.h"

/* ---- small helpers ------------------------------------------------------------------------ */

static int
rsm_parse_dtype(PyObject *obj, const char *func, rsm_dtype *out)
{
    const char *name = obj ? PyUnicode_AsUTF8(obj) : "float32";
    if (!name) return -1;
    if (strcmp(name, "float32") == 0) *out = RSM_F32;
    else if (strcmp(name, "float64") == 0) *out = RSM_F64;
    else {
        rsm_py_raisef(PyExc_ValueError, func, "dtype must be 'float32' or 'float64', got '%s'", name);
        return -1;
    }
    return 0;
}

/* A [rows, cols] argument; rows < 0 means any (returned in *rows_out). */
static rsm_py_tensor *
rsm_matrix_arg(PyObject *module, PyObject *obj, const char *func, const char *name,
               rsm_dtype dtype, int64_t rows, int64_t cols)
{
    rsm_py_tensor *t = rsm_py_tensor_arg(module, obj, func, name, dtype);
    if (!t) return NULL;
    if (t->t.ndim != 2 || (cols >= 0 && t->t.shape[1] != cols) ||
        (rows >= 0 && t->t.shape[0] != rows)) {
        char shape[128] = "";
        size_t len = 0;
        for (int32_t i = 0; i < t->t.ndim && len < sizeof(shape) - 24; i++)
            len += (size_t)snprintf(shape + len, sizeof(shape) - len, i ? ", %lld" : "%lld",
                                    (long long)t->t.shape[i]);
        char want_rows[32], want_cols[32];
        snprintf(want_rows, sizeof(want_rows), rows >= 0 ? "%lld" : "n", (long long)rows);
        snprintf(want_cols, sizeof(want_cols), cols >= 0 ? "%lld" : "d", (long long)cols);
        rsm_py_raisef(PyExc_ValueError, func, "%s must have shape [%s, %s], got (%s%s)", name,
                      want_rows, want_cols, shape, t->t.ndim == 1 ? "," : "");
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static rsm_py_tensor *
rsm_vector_arg(PyObject *module, PyObject *obj, const char *func, const char *name,
               rsm_dtype dtype, int64_t len)
{
    rsm_py_tensor *t = rsm_py_tensor_arg(module, obj, func, name, dtype);
    if (!t) return NULL;
    if (t->t.ndim != 1 || (len >= 0 && t->t.shape[0] != len)) {
        rsm_py_raisef(PyExc_ValueError, func, "%s must have shape [%lld], got %d dimensions%s",
                      name, (long long)len, (int)t->t.ndim,
                      t->t.ndim == 1 ? " of another length" : "");
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* Times must be finite and in [0, 1]. */
static int
rsm_check_times(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name)
{
    int64_t n = rsm_tensor_numel(&t->t);
    for (int64_t i = 0; i < n; i++) {
        double v = dtype == RSM_F32 ? (double)((float *)rsm_py_tensor_data(t))[i]
                                    : ((double *)rsm_py_tensor_data(t))[i];
        if (!(v >= 0.0 && v <= 1.0)) {
            rsm_py_raisef(PyExc_ValueError, func,
                          "%s[%lld]=%g: times must be finite and in [0, 1] (t = 1 is noise)",
                          name, (long long)i, v);
            return -1;
        }
    }
    return 0;
}

static int
rsm_check_finite(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name)
{
    int64_t n = rsm_tensor_numel(&t->t);
    for (int64_t i = 0; i < n; i++) {
        double v = dtype == RSM_F32 ? (double)((float *)rsm_py_tensor_data(t))[i]
                                    : ((double *)rsm_py_tensor_data(t))[i];
        if (!isfinite(v)) {
            rsm_py_raisef(PyExc_ValueError, func, "%s[%lld] is %g: values must be finite", name,
                          (long long)(i), v);
            return -1;
        }
    }
    return 0;
}


/* The helpers above, for the other binding files (binding.h). */
int
rsm_py_parse_model_dtype(PyObject *obj, const char *func, rsm_dtype *out)
{
    return rsm_parse_dtype(obj, func, out);
}

/* ---- PathCore ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    rsm_path path;
} rsm_py_path;

static int
rsm_path_py_init(rsm_py_path *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"kind", "schedule", "beta_min", "beta_max", "betas", NULL};
    const char *kind = NULL, *schedule = "linear";
    double beta_min = 0.1, beta_max = 20.0;
    PyObject *betas = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|sddO", kwlist, &kind, &schedule, &beta_min,
                                     &beta_max, &betas))
        return -1;
    rsm_path_free(&self->path);
    rsm_status status;
    if (strcmp(kind, "flow") == 0) {
        status = rsm_path_init_flow(&self->path);
    } else if (strcmp(kind, "vp") == 0) {
        if (strcmp(schedule, "linear") == 0) {
            status = rsm_path_init_vp(&self->path, RSM_VP_LINEAR, beta_min, beta_max);
        } else if (strcmp(schedule, "cosine") == 0) {
            status = rsm_path_init_vp(&self->path, RSM_VP_COSINE, 0, 0);
        } else if (strcmp(schedule, "discrete") == 0) {
            PyObject *module = rsm_module_of_type(Py_TYPE(self));
            rsm_py_tensor *b = module ? rsm_py_tensor_arg(module, betas, "VPPath", "betas", RSM_F64)
                                      : NULL;
            if (!b) return -1;
            status = rsm_path_init_vp_discrete(&self->path, rsm_tensor_numel(&b->t),
                                               (const double *)rsm_py_tensor_data(b));
            Py_DECREF(b);
        } else {
            rsm_py_raisef(PyExc_ValueError, "VPPath",
                          "schedule must be 'linear', 'cosine' or 'discrete', got '%s'", schedule);
            return -1;
        }
    } else {
        rsm_py_raisef(PyExc_ValueError, "Path", "kind must be 'flow' or 'vp', got '%s'", kind);
        return -1;
    }
    if (status != RSM_OK) {
        rsm_py_raise(status, "Path");
        return -1;
    }
    return 0;
}

static void
rsm_path_py_dealloc(rsm_py_path *self)
{
    PyTypeObject *type = Py_TYPE(self);
    rsm_path_free(&self->path);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static PyObject *
rsm_path_py_coef(rsm_py_path *self, PyObject *arg)
{
    double t = PyFloat_AsDouble(arg);
    if (t == -1.0 && PyErr_Occurred()) return NULL;
    rsm_status status = rsm_path_check_time(&self->path, t);
    if (status != RSM_OK) return rsm_py_raise(status, "coef");
    rsm_path_coef c = rsm_path_coef_at(&self->path, t);
    return Py_BuildValue("{s:d,s:d,s:d,s:d,s:d}", "alpha", c.alpha, "sigma", c.sigma, "dalpha",
                         c.dalpha, "dsigma", c.dsigma, "alpha_bar", c.alpha_bar);
}

/* coefs(t) -> float64 Tensor [n, 5]: (alpha, sigma, dalpha, dsigma, alpha_bar) per time, the
 * rsm_path_coef rows the CUDA pretraining batch reads (one definition of the schedules). */
static PyObject *
rsm_path_py_coefs(rsm_py_path *self, PyObject *arg)
{
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    if (module == NULL) return NULL;
    rsm_py_tensor *t = rsm_py_tensor_arg(module, arg, "coefs", "t", RSM_F64);
    if (t == NULL) return NULL;
    int64_t n = rsm_tensor_numel(&t->t);
    const double *tv = (const double *)rsm_py_tensor_data(t);
    for (int64_t i = 0; i < n; i++) {
        rsm_status status = rsm_path_check_time(&self->path, tv[i]);
        if (status != RSM_OK) {
            Py_DECREF(t);
            return rsm_py_raise(status, "coefs");
        }
    }
    int64_t shape[2] = {n, 5};
    _Static_assert(sizeof(rsm_path_coef) == 5 * sizeof(double), "rsm_path_coef: 5 doubles");
    rsm_py_tensor *out = rsm_py_tensor_new(module, RSM_F64, 2, shape, 0);
    if (out == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    rsm_path_coef *o = (rsm_path_coef *)rsm_py_tensor_data(out);
    for (int64_t i = 0; i < n; i++) o[i] = rsm_path_coef_at(&self->path, tv[i]);
    Py_DECREF(t);
    return (PyObject *)out;
}

static PyObject *
rsm_path_py_get_native(rsm_py_path *self, void *closure)
{
    return PyLong_FromLong((long)rsm_path_native_param(&self->path));
}

static int
rsm_parse_param(const char *name, rsm_param *out)
{
    if (strcmp(name, "eps") == 0 || strcmp(name, "epsilon") == 0) *out = RSM_PARAM_EPS;
    else if (strcmp(name, "velocity") == 0 || strcmp(name, "v") == 0) *out = RSM_PARAM_VELOCITY;
    else if (strcmp(name, "x0") == 0) *out = RSM_PARAM_X0;
    else if (strcmp(name, "score") == 0) *out = RSM_PARAM_SCORE;
    else {
        rsm_py_raisef(PyExc_ValueError, "convert",
                      "parameterization must be 'eps', 'velocity', 'x0' or 'score', got '%s'", name);
        return -1;
    }
    return 0;
}

/* The two array operations of a path, on x[n, d], u[n, d], t[n]: a parameterization change
 * (convert: u in `src` -> `dst`) or the forward noising (noise: x_t = alpha x + sigma u). */
static PyObject *
rsm_path_apply(rsm_py_path *self, const char *func, int noising, rsm_param src, rsm_param dst,
               PyObject *x_obj, PyObject *u_obj, PyObject *t_obj, PyObject *dtype_obj)
{
    rsm_dtype dtype;
    if (rsm_parse_dtype(dtype_obj, func, &dtype) < 0) return NULL;
    const char *x_name = noising ? "x0" : "x", *u_name = noising ? "eps" : "u";
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    PyObject *result = NULL;
    rsm_py_tensor *x = NULL, *u = NULL, *t = NULL, *out = NULL;
    x = rsm_matrix_arg(module, x_obj, func, x_name, dtype, -1, -1);
    if (!x) goto done;
    if (rsm_check_finite(x, dtype, func, x_name) < 0) goto done;
    u = rsm_matrix_arg(module, u_obj, func, u_name, dtype, x->t.shape[0], x->t.shape[1]);
    if (!u || rsm_check_finite(u, dtype, func, u_name) < 0) goto done;
    t = rsm_vector_arg(module, t_obj, func, "t", dtype, x->t.shape[0]);
    if (!t || rsm_check_times(t, dtype, func, "t") < 0) goto done;
    out = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    if (!out) goto done;
    rsm_status status;
    int64_t n = x->t.shape[0], d = x->t.shape[1];
    void *xp = rsm_py_tensor_data(x), *up = rsm_py_tensor_data(u), *tp = rsm_py_tensor_data(t);
    void *op = rsm_py_tensor_data(out);
    Py_BEGIN_ALLOW_THREADS
    if (noising)
        status = dtype == RSM_F32 ? rsm_path_noise_f32(&self->path, n, d, tp, xp, up, op)
                                  : rsm_path_noise_f64(&self->path, n, d, tp, xp, up, op);
    else
        status = dtype == RSM_F32
                     ? rsm_path_convert_f32(&self->path, src, dst, n, d, tp, xp, up, op)
                     : rsm_path_convert_f64(&self->path, src, dst, n, d, tp, xp, up, op);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(x);
    Py_XDECREF(u);
    Py_XDECREF(t);
    Py_XDECREF(out);
    return result;
}

/* convert(src, dst, x, u, t, dtype) -> Tensor */
static PyObject *
rsm_path_py_convert(rsm_py_path *self, PyObject *args)
{
    const char *src_name, *dst_name;
    PyObject *x_obj, *u_obj, *t_obj, *dtype_obj;
    if (!PyArg_ParseTuple(args, "ssOOOO", &src_name, &dst_name, &x_obj, &u_obj, &t_obj,
                          &dtype_obj))
        return NULL;
    rsm_param src, dst;
    if (rsm_parse_param(src_name, &src) < 0 || rsm_parse_param(dst_name, &dst) < 0) return NULL;
    return rsm_path_apply(self, "convert", 0, src, dst, x_obj, u_obj, t_obj, dtype_obj);
}

/* noise(x0, eps, t, dtype) -> Tensor: x_t = alpha(t) x0 + sigma(t) eps */
static PyObject *
rsm_path_py_noise(rsm_py_path *self, PyObject *args)
{
    PyObject *x_obj, *u_obj, *t_obj, *dtype_obj;
    if (!PyArg_ParseTuple(args, "OOOO", &x_obj, &u_obj, &t_obj, &dtype_obj)) return NULL;
    return rsm_path_apply(self, "noise", 1, RSM_PARAM_EPS, RSM_PARAM_EPS, x_obj, u_obj, t_obj,
                          dtype_obj);
}

static PyObject *
rsm_path_py_get_kind(rsm_py_path *self, void *closure)
{
    return PyUnicode_FromString(self->path.kind == RSM_PATH_FLOW ? "flow" : "vp");
}

static PyMethodDef rsm_path_methods[] = {
    {"coef", (PyCFunction)rsm_path_py_coef, METH_O, "coef(t) -> dict(alpha, sigma, dalpha, dsigma, alpha_bar)"},
    {"coefs", (PyCFunction)rsm_path_py_coefs, METH_O, "coefs(t float64 [n]) -> float64 [n, 5] (alpha, sigma, dalpha, dsigma, alpha_bar)"},
    {"convert", (PyCFunction)rsm_path_py_convert, METH_VARARGS, "convert(src, dst, x, u, t, dtype)"},
    {"noise", (PyCFunction)rsm_path_py_noise, METH_VARARGS, "noise(x0, eps, t, dtype) -> x_t"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_path_getset[] = {
    {"kind", (getter)rsm_path_py_get_kind, NULL, "'flow' or 'vp'", NULL},
    {"native_param", (getter)rsm_path_py_get_native, NULL, "native output parameterization (rsm_param code: 0 eps, 1 velocity, 2 x0, 3 score)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_path_slots[] = {
    {Py_tp_init, rsm_path_py_init},
    {Py_tp_dealloc, rsm_path_py_dealloc},
    {Py_tp_methods, rsm_path_methods},
    {Py_tp_getset, rsm_path_getset},
    {Py_tp_doc, "PathCore(kind, schedule='linear', beta_min=0.1, beta_max=20, betas=None)"},
    {0, NULL},
};

static PyType_Spec rsm_path_spec = {"rsm._C.PathCore", sizeof(rsm_py_path), 0,
                                    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, rsm_path_slots};

/* ---- MLPCore ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    rsm_mlp mlp;
    PyThread_type_lock lock; /* guards mlp.acts/scratch while the GIL is released */
    int initialised;
} rsm_py_mlp;

static int
rsm_mlp_py_init(rsm_py_mlp *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dim", "hidden", "depth", "cond_dim", "temb_dim", "dtype", "seed", NULL};
    long long dim, hidden = 256, depth = 3, cond_dim = 0, temb_dim = 64;
    unsigned long long seed = 0;
    PyObject *dtype_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "L|LLLLOK", kwlist, &dim, &hidden, &depth,
                                     &cond_dim, &temb_dim, &dtype_obj, &seed))
        return -1;
    rsm_dtype dtype;
    if (rsm_parse_dtype(dtype_obj, "MLP", &dtype) < 0) return -1;
    if (self->initialised) {
        PyErr_SetString(PyExc_RuntimeError, "MLP(): already initialised");
        return -1;
    }
    rsm_mlp_config config = {dim, hidden, depth, cond_dim, temb_dim, dtype};
    rsm_status status = rsm_mlp_init(&self->mlp, config, (uint64_t)seed);
    if (status != RSM_OK) {
        rsm_py_raise(status, "MLP");
        return -1;
    }
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        return -1;
    }
    self->initialised = 1;
    return 0;
}

static void
rsm_mlp_py_dealloc(rsm_py_mlp *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->initialised) rsm_mlp_free(&self->mlp);
    if (self->lock) PyThread_free_lock(self->lock);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
rsm_mlp_py_traverse(rsm_py_mlp *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
rsm_mlp_ready(rsm_py_mlp *self, const char *func)
{
    if (!self->initialised) {
        rsm_py_raisef(PyExc_RuntimeError, func, "the model is not initialised");
        return -1;
    }
    return 0;
}

/* Checked (x, t, cond) of a model with dimension dim and cond_dim; cond may be omitted when
 * cond_optional (the DiT: every row the null class). */
static int
rsm_model_inputs(PyObject *module, const char *func, rsm_dtype dtype, int64_t dim,
                 int64_t cond_dim, int cond_optional, PyObject *x_obj, PyObject *t_obj,
                 PyObject *cond_obj, rsm_py_tensor **x, rsm_py_tensor **t, rsm_py_tensor **cond)
{
    *x = rsm_matrix_arg(module, x_obj, func, "x", dtype, -1, dim);
    if (!*x) return -1;
    int64_t n = (*x)->t.shape[0];
    if (rsm_check_finite(*x, dtype, func, "x") < 0) return -1;
    *t = rsm_vector_arg(module, t_obj, func, "t", dtype, n);
    if (!*t || rsm_check_times(*t, dtype, func, "t") < 0) return -1;
    if (cond_obj != Py_None && cond_obj != NULL) {
        if (cond_dim == 0) {
            rsm_py_raisef(PyExc_ValueError, func,
                          "cond was given but the model is unconditional (cond_dim=0)");
            return -1;
        }
        *cond = rsm_matrix_arg(module, cond_obj, func, "cond", dtype, n, cond_dim);
        if (!*cond || rsm_check_finite(*cond, dtype, func, "cond") < 0) return -1;
    } else if (cond_dim > 0 && !cond_optional) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "the model is conditional (cond_dim=%lld): cond of shape [n, %lld] is required",
                      (long long)cond_dim, (long long)cond_dim);
        return -1;
    }
    return 0;
}

/* ---- the methods every model core shares (MLPCore, DiTCore, GuidedCore) ------------------- *
 * They run through the model's vtable (nn/model.h) under its lock, so each model core only
 * supplies its vtable and lock; binding.h exports them for dit_py.c and guidance_py.c. */

/* forward(x, t, cond=None, keep=False) -> Tensor[n, dim], or (Tensor, token) with keep=True:
 * the token names the activations this forward saved, for backward(cotangent, token). */
PyObject *
rsm_py_model_forward(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                     PyObject *args, PyObject *kwargs)
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
    if (rsm_model_inputs(module, "forward", model->dtype, model->dim, model->cond_dim,
                         model->cond_optional, x_obj, t_obj, cond_obj, &x, &t, &cond) < 0)
        goto done;
    out = rsm_py_tensor_new(module, model->dtype, 2, x->t.shape, 0);
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
PyObject *
rsm_py_model_vjp(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                 PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "t", "cotangent", "cond", NULL};
    PyObject *x_obj, *t_obj, *cot_obj, *cond_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O", kwlist, &x_obj, &t_obj, &cot_obj,
                                     &cond_obj))
        return NULL;
    if (!model->backward)
        return rsm_py_raisef(PyExc_TypeError, "vjp", "the model has no parameters to differentiate");
    rsm_py_tensor *x = NULL, *t = NULL, *cond = NULL, *cot = NULL, *out = NULL, *dx = NULL,
                  *dparams = NULL;
    PyObject *result = NULL;
    const rsm_dtype dtype = model->dtype;
    if (rsm_model_inputs(module, "vjp", dtype, model->dim, model->cond_dim, model->cond_optional,
                         x_obj, t_obj, cond_obj, &x, &t, &cond) < 0)
        goto done;
    int64_t n = x->t.shape[0], num_params = model->num_params;
    cot = rsm_matrix_arg(module, cot_obj, "vjp", "cotangent", dtype, n, model->dim);
    if (!cot || rsm_check_finite(cot, dtype, "vjp", "cotangent") < 0) goto done;
    out = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    dx = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    dparams = rsm_py_tensor_new(module, dtype, 1, &num_params, 1);
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
PyObject *
rsm_py_model_backward(PyObject *module, const rsm_model *model, PyThread_type_lock lock,
                      PyObject *args)
{
    PyObject *cot_obj;
    unsigned long long token;
    if (!PyArg_ParseTuple(args, "OK", &cot_obj, &token)) return NULL;
    if (!model->backward || !model->generation)
        return rsm_py_raisef(PyExc_TypeError, "backward", "the model has no parameters to differentiate");
    const rsm_dtype dtype = model->dtype;
    rsm_py_tensor *cot = rsm_matrix_arg(module, cot_obj, "backward", "cotangent", dtype, -1,
                                        model->dim);
    if (!cot) return NULL;
    if (rsm_check_finite(cot, dtype, "backward", "cotangent") < 0) {
        Py_DECREF(cot);
        return NULL;
    }
    int64_t n = cot->t.shape[0], num_params = model->num_params;
    int64_t shape[2] = {n, model->dim};
    rsm_py_tensor *dx = rsm_py_tensor_new(module, dtype, 2, shape, 0);
    rsm_py_tensor *dparams = rsm_py_tensor_new(module, dtype, 1, &num_params, 1);
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

static PyObject *
rsm_mlp_py_forward(rsm_py_mlp *self, PyObject *args, PyObject *kwargs)
{
    if (rsm_mlp_ready(self, "forward") < 0) return NULL;
    rsm_model model = rsm_mlp_as_model(&self->mlp);
    return rsm_py_model_forward(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args, kwargs);
}

static PyObject *
rsm_mlp_py_vjp(rsm_py_mlp *self, PyObject *args, PyObject *kwargs)
{
    if (rsm_mlp_ready(self, "vjp") < 0) return NULL;
    rsm_model model = rsm_mlp_as_model(&self->mlp);
    return rsm_py_model_vjp(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args, kwargs);
}

static PyObject *
rsm_mlp_py_backward(rsm_py_mlp *self, PyObject *args)
{
    if (rsm_mlp_ready(self, "backward") < 0) return NULL;
    rsm_model model = rsm_mlp_as_model(&self->mlp);
    return rsm_py_model_backward(rsm_module_of_type(Py_TYPE(self)), &model, self->lock, args);
}

static PyObject *
rsm_mlp_py_get_params(rsm_py_mlp *self, void *closure)
{
    if (rsm_mlp_ready(self, "params") < 0) return NULL;
    int64_t n = self->mlp.layout.num_params;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    return (PyObject *)rsm_py_tensor_view(module, (PyObject *)self, self->mlp.params,
                                          self->mlp.config.dtype, 1, &n, 0);
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
    if (rsm_mlp_ready(self, "reset_parameters") < 0) return NULL;
    rsm_status status = rsm_mlp_reset_parameters(&self->mlp, (uint64_t)seed);
    if (status != RSM_OK) return rsm_py_raise(status, "reset_parameters");
    Py_RETURN_NONE;
}

static PyMethodDef rsm_mlp_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))rsm_mlp_py_forward, METH_VARARGS | METH_KEYWORDS, "forward(x, t, cond=None)"},
    {"vjp", (PyCFunction)(void (*)(void))rsm_mlp_py_vjp, METH_VARARGS | METH_KEYWORDS, "vjp(x, t, cotangent, cond=None) -> (out, dx, dparams)"},
    {"backward", (PyCFunction)rsm_mlp_py_backward, METH_VARARGS, "backward(cotangent, token) -> (dx, dparams)"},
    {"reset_parameters", (PyCFunction)rsm_mlp_py_reset_parameters, METH_O, "reset_parameters(seed)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_mlp_getset[] = {
    {"params", (getter)rsm_mlp_py_get_params, NULL, "flat parameters (writable zero-copy view)", NULL},
    {"config", (getter)rsm_mlp_py_get_config, NULL, "configuration", NULL},
    {"layout", (getter)rsm_mlp_py_get_layout, NULL, "offsets in the flat parameter buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_mlp_slots[] = {
    {Py_tp_init, rsm_mlp_py_init},
    {Py_tp_dealloc, rsm_mlp_py_dealloc},
    {Py_tp_traverse, rsm_mlp_py_traverse},
    {Py_tp_methods, rsm_mlp_methods},
    {Py_tp_getset, rsm_mlp_getset},
    {Py_tp_doc, "MLPCore(dim, hidden=256, depth=3, cond_dim=0, temb_dim=64, dtype='float32', seed=0)"},
    {0, NULL},
};

static PyType_Spec rsm_mlp_spec = {"rsm._C.MLPCore", sizeof(rsm_py_mlp), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, rsm_mlp_slots};

/* ---- GaussianMixtureCore ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    rsm_gmm gmm;
    int initialised;
} rsm_py_gmm;

static int
rsm_gmm_py_init(rsm_py_gmm *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"means", "stds", "weights", "dtype", NULL};
    PyObject *means_obj, *stds_obj, *weights_obj, *dtype_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|O", kwlist, &means_obj, &stds_obj,
                                     &weights_obj, &dtype_obj))
        return -1;
    rsm_dtype dtype;
    if (rsm_parse_dtype(dtype_obj, "GaussianMixture", &dtype) < 0) return -1;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_py_tensor *means = rsm_matrix_arg(module, means_obj, "GaussianMixture", "means", RSM_F64, -1, -1);
    if (!means) return -1;
    int64_t K = means->t.shape[0];
    rsm_py_tensor *stds = rsm_vector_arg(module, stds_obj, "GaussianMixture", "stds", RSM_F64, K);
    rsm_py_tensor *weights = stds ? rsm_vector_arg(module, weights_obj, "GaussianMixture", "weights", RSM_F64, K) : NULL;
    int rc = -1;
    if (stds && weights) {
        if (self->initialised) rsm_gmm_free(&self->gmm);
        rsm_status status = rsm_gmm_init(&self->gmm, K, means->t.shape[1], rsm_py_tensor_data(means),
                                         rsm_py_tensor_data(stds), rsm_py_tensor_data(weights), dtype);
        if (status != RSM_OK) {
            rsm_py_raise(status, "GaussianMixture");
        } else {
            self->initialised = 1;
            rc = 0;
        }
    }
    Py_XDECREF(means);
    Py_XDECREF(stds);
    Py_XDECREF(weights);
    return rc;
}

static void
rsm_gmm_py_dealloc(rsm_py_gmm *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (self->initialised) rsm_gmm_free(&self->gmm);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* forward(path, x, t) -> native output; posterior(path, x, t) -> (x0_hat, eps_hat) */
static PyObject *
rsm_gmm_py_call(rsm_py_gmm *self, PyObject *args, int posterior)
{
    const char *func = posterior ? "posterior" : "forward";
    PyObject *path_obj, *x_obj, *t_obj;
    if (!PyArg_ParseTuple(args, "OOO", &path_obj, &x_obj, &t_obj)) return NULL;
    if (!self->initialised) return rsm_py_raisef(PyExc_RuntimeError, func, "not initialised");
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    if (!PyObject_TypeCheck(path_obj, rsm_state(module)->path_type))
        return rsm_py_raisef(PyExc_TypeError, func, "path must be a PathCore");
    const rsm_path *path = &((rsm_py_path *)path_obj)->path;
    rsm_py_tensor *x = NULL, *t = NULL, *cond = NULL, *a = NULL, *b = NULL;
    PyObject *result = NULL;
    rsm_dtype dtype = self->gmm.dtype;
    if (rsm_model_inputs(module, func, dtype, self->gmm.dim, 0, 0, x_obj, t_obj, Py_None, &x, &t,
                         &cond) < 0)
        goto done;
    a = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    b = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    if (!a || !b) goto done;
    rsm_status status;
    int64_t n = x->t.shape[0];
    Py_BEGIN_ALLOW_THREADS
    if (posterior) {
        status = rsm_gmm_posterior(&self->gmm, path, n, rsm_py_tensor_data(x),
                                   rsm_py_tensor_data(t), rsm_py_tensor_data(a),
                                   rsm_py_tensor_data(b));
    } else {
        rsm_model model = rsm_gmm_as_model(&self->gmm);
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
    {"forward", (PyCFunction)rsm_gmm_py_forward, METH_VARARGS, "forward(path, x, t) -> native output"},
    {"posterior", (PyCFunction)rsm_gmm_py_posterior, METH_VARARGS, "posterior(path, x, t) -> (x0_hat, eps_hat)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_gmm_getset[] = {
    {"dim", (getter)rsm_gmm_py_get_dim, NULL, "data dimension", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_gmm_slots[] = {
    {Py_tp_init, rsm_gmm_py_init},
    {Py_tp_dealloc, rsm_gmm_py_dealloc},
    {Py_tp_methods, rsm_gmm_methods},
    {Py_tp_getset, rsm_gmm_getset},
    {Py_tp_doc, "GaussianMixtureCore(means[K, D], stds[K], weights[K], dtype='float32')"},
    {0, NULL},
};

static PyType_Spec rsm_gmm_spec = {"rsm._C.GaussianMixtureCore", sizeof(rsm_py_gmm), 0,
                                   Py_TPFLAGS_DEFAULT, rsm_gmm_slots};

/* A model argument: MLPCore or GaussianMixtureCore -> the core vtable (+ the MLP lock). */
static int
rsm_model_arg(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
              PyThread_type_lock *lock)
{
    rsm_module_state *state = rsm_state(module);
    *lock = NULL;
    if (PyObject_TypeCheck(obj, state->mlp_type)) {
        rsm_py_mlp *m = (rsm_py_mlp *)obj;
        if (rsm_mlp_ready(m, func) < 0) return -1;
        *model = rsm_mlp_as_model(&m->mlp);
        *lock = m->lock;
        return 0;
    }
    int is_dit = rsm_py_dit_model(module, obj, func, model, lock);
    if (is_dit != 0) return is_dit < 0 ? -1 : 0;
    if (PyObject_TypeCheck(obj, state->gmm_type)) {
        rsm_py_gmm *g = (rsm_py_gmm *)obj;
        if (!g->initialised) {
            rsm_py_raisef(PyExc_RuntimeError, func, "mixture not initialised");
            return -1;
        }
        *model = rsm_gmm_as_model(&g->gmm);
        return 0;
    }
    if (state->guided_type && PyObject_TypeCheck(obj, state->guided_type))
        return rsm_py_guided_model(module, obj, func, model, lock);
    rsm_py_raisef(PyExc_TypeError, func,
                  "model must be an rsm model (MLP, DiT, Guided or GaussianMixture), got %s",
                  Py_TYPE(obj)->tp_name);
    return -1;
}

/* Exported for the other files of the binding (binding.h). */
int
rsm_py_model_arg(PyObject *module, PyObject *obj, const char *func, rsm_model *model,
                 PyThread_type_lock *lock)
{
    return rsm_model_arg(module, obj, func, model, lock);
}


/* ---- sampler ------------------------------------------------------------------------------ */

static int
rsm_parse_sampler(const char *name, const char *func, rsm_sampler_kind *kind)
{
    if (strcmp(name, "euler") == 0 || strcmp(name, "ode") == 0) *kind = RSM_SAMPLER_EULER;
    else if (strcmp(name, "heun") == 0) *kind = RSM_SAMPLER_HEUN;
    else if (strcmp(name, "sde") == 0) *kind = RSM_SAMPLER_SDE;
    else if (strcmp(name, "ddim") == 0) *kind = RSM_SAMPLER_DDIM;
    else {
        rsm_py_raisef(PyExc_ValueError, func,
                      "sampler must be 'euler', 'heun', 'sde' or 'ddim', got '%s'", name);
        return -1;
    }
    return 0;
}

/* Sampler configuration shared by sample() and transition_log_prob(). */
typedef struct {
    rsm_sampler_config cfg;
    rsm_py_tensor *ts;
    int64_t *branch_steps;
} rsm_py_sampler_args;

static void
rsm_sampler_args_clear(rsm_py_sampler_args *a)
{
    Py_XDECREF(a->ts);
    PyMem_Free(a->branch_steps);
    a->ts = NULL;
    a->branch_steps = NULL;
}

static int
rsm_sampler_args_parse(PyObject *module, const char *func, const char *sampler, PyObject *ts_obj,
                       double noise_level, double eta, long long window_begin,
                       long long window_end, PyObject *branch_obj, long long branch_factor,
                       unsigned long long seed, rsm_py_sampler_args *a)
{
    memset(a, 0, sizeof(*a));
    if (rsm_parse_sampler(sampler, func, &a->cfg.kind) < 0) return -1;
    a->ts = rsm_vector_arg(module, ts_obj, func, "ts", RSM_F64, -1);
    if (!a->ts) return -1;
    int64_t S = a->ts->t.shape[0] - 1;
    if (S < 1) {
        rsm_py_raisef(PyExc_ValueError, func, "ts needs >= 2 grid points (steps >= 1)");
        return -1;
    }
    /* name the argument here: the core's check says "time t=..." and the user passed ts */
    if (rsm_check_times(a->ts, RSM_F64, func, "ts") < 0) return -1;
    a->cfg.steps = S;
    a->cfg.ts = (const double *)rsm_py_tensor_data(a->ts);
    a->cfg.noise_level = noise_level;
    a->cfg.eta = eta;
    a->cfg.window_begin = window_begin;
    a->cfg.window_end = window_end < 0 ? S : window_end;
    a->cfg.seed = (uint64_t)seed;
    a->cfg.branch_factor = branch_factor;
    if (branch_obj && branch_obj != Py_None) {
        PyObject *seq = PySequence_Fast(branch_obj, "branch_steps must be a sequence of ints");
        if (!seq) return -1;
        Py_ssize_t nb = PySequence_Fast_GET_SIZE(seq);
        a->branch_steps = (int64_t *)PyMem_Malloc((size_t)(nb > 0 ? nb : 1) * sizeof(int64_t));
        if (!a->branch_steps) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < nb; i++) {
            a->branch_steps[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
            if (a->branch_steps[i] == -1 && PyErr_Occurred()) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
        a->cfg.branch_steps = a->branch_steps;
        a->cfg.num_branch_steps = nb;
    }
    return 0;
}

/* The prior and condition arguments of a rollout over `rows` rows (`rows_name` in messages):
 * x_init [rows, D] and cond [rows, C], each None or finite; cond is required by a conditional
 * model without condition dropout. New references in *x_init / *cond (NULL for None); -1 with an
 * exception set otherwise. */
static int
rsm_rollout_inputs(PyObject *module, const char *func, const rsm_model *model, int64_t rows,
                   const char *rows_name, PyObject *x_init_obj, PyObject *cond_obj,
                   rsm_py_tensor **x_init, rsm_py_tensor **cond)
{
    *x_init = *cond = NULL;
    if (x_init_obj != Py_None) {
        *x_init = rsm_matrix_arg(module, x_init_obj, func, "x_init", model->dtype, rows,
                                 model->dim);
        if (!*x_init || rsm_check_finite(*x_init, model->dtype, func, "x_init") < 0) return -1;
    }
    if (cond_obj != Py_None) {
        if (model->cond_dim == 0) {
            rsm_py_raisef(PyExc_ValueError, func,
                          "cond was given but the model is unconditional (cond_dim=0)");
            return -1;
        }
        *cond = rsm_matrix_arg(module, cond_obj, func, "cond", model->dtype, rows,
                               model->cond_dim);
        if (!*cond || rsm_check_finite(*cond, model->dtype, func, "cond") < 0) return -1;
    } else if (model->cond_dim > 0 && !model->cond_optional) {
        rsm_py_raisef(PyExc_ValueError, func,
                      "the model is conditional (cond_dim=%lld): cond of shape [%s, %lld] is "
                      "required",
                      (long long)model->cond_dim, rows_name, (long long)model->cond_dim);
        return -1;
    }
    return 0;
}

static PyObject *
rsm_py_sample(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"model", "path", "n", "sampler", "ts", "noise_level", "eta", "seed",
                             "x_init", "cond", "window_begin", "window_end", "branch_steps",
                             "branch_factor", "return_trajectory", "pcpo_weight", "reward",
                             NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *x_init_obj = Py_None, *cond_obj = Py_None,
                                            *branch_obj = Py_None, *reward_obj = Py_None;
    long long n, window_begin = 0, window_end = -1, branch_factor = 1;
    const char *sampler;
    double noise_level = 0.7, eta = 1.0;
    unsigned long long seed = 0;
    int return_trajectory = 0;
    double pcpo_weight = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOLsO|ddKOOLLOLpdO", kwlist, &model_obj,
                                     &path_obj, &n, &sampler, &ts_obj, &noise_level, &eta, &seed,
                                     &x_init_obj, &cond_obj, &window_begin, &window_end,
                                     &branch_obj, &branch_factor, &return_trajectory,
                                     &pcpo_weight, &reward_obj))
        return NULL;
    const char *func = "sample";
    if (reward_obj != Py_None && !PyCallable_Check(reward_obj))
        return rsm_py_raisef(PyExc_TypeError, func, "reward must be callable or None, got %s",
                             Py_TYPE(reward_obj)->tp_name);
    rsm_module_state *state = rsm_state(module);
    if (!PyObject_TypeCheck(path_obj, state->path_type))
        return rsm_py_raisef(PyExc_TypeError, func, "path must be an rsm path (FlowPath or VPPath)");
    const rsm_path *path = &((rsm_py_path *)path_obj)->path;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    if (n < 1) return rsm_py_raisef(PyExc_ValueError, func, "n=%lld must be >= 1", n);
    rsm_py_sampler_args sa;
    PyObject *result = NULL;
    rsm_py_tensor *x_init = NULL, *cond = NULL;
    rsm_py_tensor *x_final = NULL, *xs = NULL, *means = NULL, *stds = NULL, *log_probs = NULL,
                  *noises = NULL, *outputs = NULL, *rows = NULL;
    if (rsm_sampler_args_parse(module, func, sampler, ts_obj, noise_level, eta, window_begin,
                               window_end, branch_obj, branch_factor, seed, &sa) < 0)
        goto done;
    sa.cfg.pcpo_weight = pcpo_weight;
    rsm_status status = rsm_sampler_check(path, &sa.cfg);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    const rsm_dtype dtype = model.dtype;
    const int64_t D = model.dim, S = sa.cfg.steps;
    if (rsm_rollout_inputs(module, func, &model, n, "n", x_init_obj, cond_obj, &x_init, &cond) < 0)
        goto done;
    int64_t N;
    status = rsm_sampler_final_rows(&sa.cfg, n, D, &N);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    int64_t shape_final[2] = {N, D};
    int64_t shape_xs[3] = {S + 1, N, D};
    int64_t shape_steps[3] = {S, N, D};
    int64_t shape_lp[2] = {S, N};
    int64_t shape_rows = S + 1;
    x_final = rsm_py_tensor_new(module, dtype, 2, shape_final, 0);
    if (!x_final) goto done;
    if (return_trajectory) {
        xs = rsm_py_tensor_new(module, dtype, 3, shape_xs, 0);
        means = rsm_py_tensor_new(module, dtype, 3, shape_steps, 0);
        noises = rsm_py_tensor_new(module, dtype, 3, shape_steps, 0);
        outputs = rsm_py_tensor_new(module, dtype, 3, shape_steps, 0);
        stds = rsm_py_tensor_new(module, dtype, 1, &S, 0);
        log_probs = rsm_py_tensor_new(module, dtype, 2, shape_lp, 0);
        rows = rsm_py_tensor_new(module, RSM_I64, 1, &shape_rows, 0);
        if (!xs || !means || !noises || !outputs || !stds || !log_probs || !rows) goto done;
    }
    int64_t nfe = 0;
    /* with a reward: the C rollout calls it once on x (rollout.h), holding the interpreter lock
     * only inside the call */
    rsm_py_reward_callback reward;
    rsm_py_reward_init(&reward, reward_obj == Py_None ? NULL : reward_obj, (PyObject *)x_final,
                       lock);
    Py_BEGIN_ALLOW_THREADS
    rsm_py_reward_lock_model(&reward);
#define RSM_PTR(t) ((t) ? rsm_py_tensor_data(t) : NULL)
    if (dtype == RSM_F32) {
        rsm_trajectory_f32 tr = {RSM_PTR(x_final), RSM_PTR(xs), RSM_PTR(means), RSM_PTR(stds),
                                 RSM_PTR(log_probs), RSM_PTR(noises), RSM_PTR(outputs),
                                 RSM_PTR(rows), 0};
        status = rsm_rollout_f32(&model, path, &sa.cfg, n, RSM_PTR(x_init), RSM_PTR(cond), &tr,
                                 rsm_py_reward_hook(&reward));
        nfe = tr.nfe;
    } else {
        rsm_trajectory_f64 tr = {RSM_PTR(x_final), RSM_PTR(xs), RSM_PTR(means), RSM_PTR(stds),
                                 RSM_PTR(log_probs), RSM_PTR(noises), RSM_PTR(outputs),
                                 RSM_PTR(rows), 0};
        status = rsm_rollout_f64(&model, path, &sa.cfg, n, RSM_PTR(x_init), RSM_PTR(cond), &tr,
                                 rsm_py_reward_hook(&reward));
        nfe = tr.nfe;
    }
    rsm_py_reward_unlock_model(&reward);
    Py_END_ALLOW_THREADS
    if (rsm_py_reward_finish(&reward, status, func) < 0) {
        rsm_py_reward_clear(&reward);
        goto done;
    }
    if (return_trajectory) {
        result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:L,s:O}", "x", x_final, "xs",
                               xs, "ts", sa.ts, "means", means, "stds", stds, "log_probs",
                               log_probs, "noises", noises, "outputs", outputs, "rows", rows,
                               "nfe", (long long)nfe, "reward",
                               reward.result ? reward.result : Py_None);
    } else {
        result = Py_BuildValue("{s:O,s:L,s:O}", "x", x_final, "nfe", (long long)nfe, "reward",
                               reward.result ? reward.result : Py_None);
    }
    rsm_py_reward_clear(&reward);
done:
    rsm_sampler_args_clear(&sa);
    Py_XDECREF(x_init);
    Py_XDECREF(cond);
    Py_XDECREF(x_final);
    Py_XDECREF(xs);
    Py_XDECREF(means);
    Py_XDECREF(stds);
    Py_XDECREF(log_probs);
    Py_XDECREF(noises);
    Py_XDECREF(outputs);
    Py_XDECREF(rows);
    return result;
}

/* branch_rollout(model, path, ts, roots, root_sampler, branch_sampler, budget, branch_seeds,
 *                seed=0, root_eta=0, branch_eta=1, noise_level=0.7, pcpo_weight=0, x_init=None,
 *                cond=None, reward=None) -> dict(root_xs, x_next, outputs, noises, log_probs, x0,
 *                nfe, reward): the ODE root + single-step branches of rollout.h, then reward(x0). */
static PyObject *
rsm_py_branch_rollout(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"model", "path", "ts", "roots", "root_sampler", "branch_sampler",
                             "budget", "branch_seeds", "seed", "root_eta", "branch_eta",
                             "noise_level", "pcpo_weight", "x_init", "cond", "reward", NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *budget_obj, *seeds_obj, *x_init_obj = Py_None,
                                                                   *cond_obj = Py_None,
                                                                   *reward_obj = Py_None;
    long long roots;
    const char *root_name, *branch_name;
    unsigned long long seed = 0;
    double root_eta = 0.0, branch_eta = 1.0, noise_level = 0.7, pcpo_weight = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOLssOO|KddddOOO", kwlist, &model_obj,
                                     &path_obj, &ts_obj, &roots, &root_name, &branch_name,
                                     &budget_obj, &seeds_obj, &seed, &root_eta, &branch_eta,
                                     &noise_level, &pcpo_weight, &x_init_obj, &cond_obj,
                                     &reward_obj))
        return NULL;
    const char *func = "branch_rollout";
    if (reward_obj != Py_None && !PyCallable_Check(reward_obj))
        return rsm_py_raisef(PyExc_TypeError, func, "reward must be callable or None, got %s",
                             Py_TYPE(reward_obj)->tp_name);
    const rsm_path *path = rsm_py_path_arg(module, path_obj, func, "path");
    if (!path) return NULL;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    if (roots < 1) return rsm_py_raisef(PyExc_ValueError, func, "roots=%lld must be >= 1", roots);
    rsm_py_sampler_args root_args, branch_args;
    memset(&branch_args, 0, sizeof(branch_args));
    PyObject *result = NULL;
    rsm_py_tensor *budget = NULL, *seeds = NULL, *x_init = NULL, *cond = NULL, *root_xs = NULL,
                  *x_next = NULL, *outputs = NULL, *noises = NULL, *log_probs = NULL, *x0 = NULL;
    if (rsm_sampler_args_parse(module, func, root_name, ts_obj, noise_level, root_eta, 0, -1,
                               Py_None, 1, seed, &root_args) < 0)
        goto done;
    if (rsm_sampler_args_parse(module, func, branch_name, ts_obj, noise_level, branch_eta, 0, -1,
                               Py_None, 1, 0, &branch_args) < 0)
        goto done;
    branch_args.cfg.pcpo_weight = pcpo_weight;
    const int64_t S = root_args.cfg.steps, D = model.dim;
    const rsm_dtype dtype = model.dtype;
    budget = rsm_vector_arg(module, budget_obj, func, "budget", RSM_I64, S);
    if (!budget) goto done;
    seeds = rsm_vector_arg(module, seeds_obj, func, "branch_seeds", RSM_U64, S);
    if (!seeds) goto done;
    rsm_branch_config bc = {root_args.cfg, branch_args.cfg,
                            (const int64_t *)rsm_py_tensor_data(budget),
                            (const uint64_t *)rsm_py_tensor_data(seeds)};
    rsm_status status = rsm_branch_check(path, &bc);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    if (rsm_rollout_inputs(module, func, &model, roots, "roots", x_init_obj, cond_obj, &x_init,
                           &cond) < 0)
        goto done;
    int64_t R;
    status = rsm_branch_rows(&bc, roots, D, &R);
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    int64_t shape_root[3] = {S + 1, roots, D}, shape_rows[2] = {R, D};
    root_xs = rsm_py_tensor_new(module, dtype, 3, shape_root, 0);
    x_next = rsm_py_tensor_new(module, dtype, 2, shape_rows, 0);
    outputs = rsm_py_tensor_new(module, dtype, 2, shape_rows, 0);
    noises = rsm_py_tensor_new(module, dtype, 2, shape_rows, 0);
    log_probs = rsm_py_tensor_new(module, dtype, 1, &R, 0);
    x0 = rsm_py_tensor_new(module, dtype, 2, shape_rows, 0);
    if (!root_xs || !x_next || !outputs || !noises || !log_probs || !x0) goto done;
    int64_t nfe = 0;
    rsm_py_reward_callback reward;
    rsm_py_reward_init(&reward, reward_obj == Py_None ? NULL : reward_obj, (PyObject *)x0, lock);
    Py_BEGIN_ALLOW_THREADS
    rsm_py_reward_lock_model(&reward);
    if (dtype == RSM_F32) {
        rsm_branch_out_f32 out = {RSM_PTR(root_xs), RSM_PTR(x_next), RSM_PTR(outputs),
                                  RSM_PTR(noises), RSM_PTR(log_probs), RSM_PTR(x0), 0};
        status = rsm_branch_rollout_f32(&model, path, &bc, roots, RSM_PTR(x_init), RSM_PTR(cond),
                                        &out, rsm_py_reward_hook(&reward));
        nfe = out.nfe;
    } else {
        rsm_branch_out_f64 out = {RSM_PTR(root_xs), RSM_PTR(x_next), RSM_PTR(outputs),
                                  RSM_PTR(noises), RSM_PTR(log_probs), RSM_PTR(x0), 0};
        status = rsm_branch_rollout_f64(&model, path, &bc, roots, RSM_PTR(x_init), RSM_PTR(cond),
                                        &out, rsm_py_reward_hook(&reward));
        nfe = out.nfe;
    }
    rsm_py_reward_unlock_model(&reward);
    Py_END_ALLOW_THREADS
    if (rsm_py_reward_finish(&reward, status, func) == 0)
        result = Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:L,s:O}", "root_xs", root_xs, "x_next",
                               x_next, "outputs", outputs, "noises", noises, "log_probs",
                               log_probs, "x0", x0, "nfe", (long long)nfe, "reward",
                               reward.result ? reward.result : Py_None);
    rsm_py_reward_clear(&reward);
done:
    rsm_sampler_args_clear(&root_args);
    rsm_sampler_args_clear(&branch_args);
    Py_XDECREF(budget);
    Py_XDECREF(seeds);
    Py_XDECREF(x_init);
    Py_XDECREF(cond);
    Py_XDECREF(root_xs);
    Py_XDECREF(x_next);
    Py_XDECREF(outputs);
    Py_XDECREF(noises);
    Py_XDECREF(log_probs);
    Py_XDECREF(x0);
    return result;
}

/* transition_log_prob(model, path, sampler, ts, step, x, x_next, noise_level, eta, cond,
 *                     window_begin, window_end) -> (log_prob[n], mean[n, D], output[n, D]) */
static PyObject *
rsm_py_transition_log_prob(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"model", "path", "sampler", "ts", "step", "x", "x_next",
                             "noise_level", "eta", "cond", "window_begin", "window_end",
                             "pcpo_weight", NULL};
    PyObject *model_obj, *path_obj, *ts_obj, *x_obj, *x_next_obj, *cond_obj = Py_None;
    const char *sampler;
    long long step, window_begin = 0, window_end = -1;
    double noise_level = 0.7, eta = 1.0, pcpo_weight = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOsOLOO|ddOLLd", kwlist, &model_obj, &path_obj,
                                     &sampler, &ts_obj, &step, &x_obj, &x_next_obj, &noise_level,
                                     &eta, &cond_obj, &window_begin, &window_end, &pcpo_weight))
        return NULL;
    const char *func = "log_prob";
    rsm_module_state *state = rsm_state(module);
    if (!PyObject_TypeCheck(path_obj, state->path_type))
        return rsm_py_raisef(PyExc_TypeError, func, "path must be an rsm path");
    const rsm_path *path = &((rsm_py_path *)path_obj)->path;
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    rsm_py_sampler_args sa;
    PyObject *result = NULL;
    rsm_py_tensor *x = NULL, *x_next = NULL, *cond = NULL, *lp = NULL, *mean = NULL, *out = NULL;
    if (rsm_sampler_args_parse(module, func, sampler, ts_obj, noise_level, eta, window_begin,
                               window_end, Py_None, 1, 0, &sa) < 0)
        goto done;
    sa.cfg.pcpo_weight = pcpo_weight;
    const rsm_dtype dtype = model.dtype;
    x = rsm_matrix_arg(module, x_obj, func, "x", dtype, -1, model.dim);
    if (!x || rsm_check_finite(x, dtype, func, "x") < 0) goto done;
    int64_t n = x->t.shape[0];
    x_next = rsm_matrix_arg(module, x_next_obj, func, "x_next", dtype, n, model.dim);
    if (!x_next || rsm_check_finite(x_next, dtype, func, "x_next") < 0) goto done;
    if (cond_obj != Py_None) {
        if (model.cond_dim == 0) {
            rsm_py_raisef(PyExc_ValueError, func, "cond was given but the model is unconditional");
            goto done;
        }
        cond = rsm_matrix_arg(module, cond_obj, func, "cond", dtype, n, model.cond_dim);
        if (!cond || rsm_check_finite(cond, dtype, func, "cond") < 0) goto done;
    }
    lp = rsm_py_tensor_new(module, dtype, 1, &n, 0);
    mean = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    out = rsm_py_tensor_new(module, dtype, 2, x->t.shape, 0);
    if (!lp || !mean || !out) goto done;
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    if (dtype == RSM_F32)
        status = rsm_transition_log_prob_f32(&model, path, &sa.cfg, step, n, RSM_PTR(x),
                                             RSM_PTR(x_next), RSM_PTR(cond), RSM_PTR(lp),
                                             RSM_PTR(mean), RSM_PTR(out));
    else
        status = rsm_transition_log_prob_f64(&model, path, &sa.cfg, step, n, RSM_PTR(x),
                                             RSM_PTR(x_next), RSM_PTR(cond), RSM_PTR(lp),
                                             RSM_PTR(mean), RSM_PTR(out));
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = Py_BuildValue("(OOO)", lp, mean, out);
done:
    rsm_sampler_args_clear(&sa);
    Py_XDECREF(x);
    Py_XDECREF(x_next);
    Py_XDECREF(cond);
    Py_XDECREF(lp);
    Py_XDECREF(mean);
    Py_XDECREF(out);
    return result;
}

/* step_coefficients(path, sampler, ts, noise_level, eta, window_begin, window_end) -> list of dicts */
static PyObject *
rsm_py_step_coefficients(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "sampler", "ts", "noise_level", "eta", "window_begin",
                             "window_end", "pcpo_weight", NULL};
    PyObject *path_obj, *ts_obj;
    const char *sampler;
    double noise_level = 0.7, eta = 1.0, pcpo_weight = 0.0;
    long long window_begin = 0, window_end = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OsO|ddLLd", kwlist, &path_obj, &sampler,
                                     &ts_obj, &noise_level, &eta, &window_begin, &window_end,
                                     &pcpo_weight))
        return NULL;
    if (!PyObject_TypeCheck(path_obj, rsm_state(module)->path_type))
        return rsm_py_raisef(PyExc_TypeError, "step_coefficients", "path must be an rsm path");
    const rsm_path *path = &((rsm_py_path *)path_obj)->path;
    rsm_py_sampler_args sa;
    if (rsm_sampler_args_parse(module, "step_coefficients", sampler, ts_obj, noise_level, eta,
                               window_begin, window_end, Py_None, 1, 0, &sa) < 0) {
        rsm_sampler_args_clear(&sa);
        return NULL;
    }
    sa.cfg.pcpo_weight = pcpo_weight;
    rsm_status status = rsm_sampler_check(path, &sa.cfg);
    if (status != RSM_OK) {
        rsm_sampler_args_clear(&sa);
        return rsm_py_raise(status, "step_coefficients");
    }
    PyObject *list = PyList_New(sa.cfg.steps);
    for (int64_t i = 0; list && i < sa.cfg.steps; i++) {
        rsm_step_coef s = rsm_sampler_step_coef(path, &sa.cfg, i);
        PyObject *d = Py_BuildValue("{s:d,s:d,s:d,s:d,s:d,s:d,s:O,s:O,s:d,s:d,s:d,s:d}", "t", s.t,
                                    "t_next", s.t_next, "dt", s.dt, "A", s.A, "K", s.K, "std",
                                    s.std, "stochastic", s.stochastic ? Py_True : Py_False,
                                    "heun", s.heun ? Py_True : Py_False, "v_x", s.v_x, "v_u",
                                    s.v_u, "v_x_next", s.v_x_next, "v_u_next", s.v_u_next);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, d);
    }
    rsm_sampler_args_clear(&sa);
    return list;
}

/* ---- AdamWCore ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    rsm_adamw opt;
    int initialised;
} rsm_py_adamw;

static int
rsm_adamw_py_init(rsm_py_adamw *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "lr", "beta1", "beta2", "eps", "weight_decay",
                             "max_grad_norm", "ema_decay", NULL};
    PyObject *params_obj;
    rsm_adamw_config c = {1e-3, 0.9, 0.999, 1e-8, 0.0, 0.0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|ddddddd", kwlist, &params_obj, &c.lr,
                                     &c.beta1, &c.beta2, &c.eps, &c.weight_decay, &c.max_grad_norm,
                                     &c.ema_decay))
        return -1;
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    rsm_py_tensor *params = NULL;
    /* accept float32 or float64 parameter buffers */
    if (PyObject_TypeCheck(params_obj, rsm_state(module)->tensor_type)) {
        params = (rsm_py_tensor *)Py_NewRef(params_obj);
    } else {
        params = rsm_py_tensor_arg(module, params_obj, "AdamW", "params", RSM_F32);
    }
    if (!params) return -1;
    rsm_dtype dtype = rsm_tensor_dtype(&params->t);
    if (self->initialised) rsm_adamw_free(&self->opt);
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
    if (self->initialised) rsm_adamw_free(&self->opt);
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
    rsm_py_tensor *params = rsm_py_tensor_out_arg(module, params_obj, "step", "params", self->opt.dtype);
    if (!params) return NULL;
    rsm_py_tensor *grads = rsm_py_tensor_out_arg(module, grads_obj, "step", "grads", self->opt.dtype);
    if (!grads) {
        Py_DECREF(params);
        return NULL;
    }
    PyObject *result = NULL;
    if (params->t.ndim != 1 || rsm_tensor_numel(&params->t) != self->opt.num_params) {
        rsm_py_raisef(PyExc_ValueError, "step", "params must have shape [%lld], got %d dimensions "
                      "and %lld elements", (long long)self->opt.num_params, (int)params->t.ndim,
                      (long long)rsm_tensor_numel(&params->t));
    } else if (grads->t.ndim != 1 || rsm_tensor_numel(&grads->t) != self->opt.num_params) {
        rsm_py_raisef(PyExc_ValueError, "step", "grads must have shape [%lld], got %d dimensions "
                      "and %lld elements", (long long)self->opt.num_params, (int)grads->t.ndim,
                      (long long)rsm_tensor_numel(&grads->t));
    } else {
        double norm = 0.0;
        rsm_status status;
        Py_BEGIN_ALLOW_THREADS
        status = rsm_adamw_step(&self->opt, rsm_py_tensor_data(params), rsm_py_tensor_data(grads),
                                lr, &norm);
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
    return (PyObject *)rsm_py_tensor_view(module, (PyObject *)self, data, self->opt.dtype, 1,
                                          &self->opt.num_params, 0);
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
    {"step", (PyCFunction)(void (*)(void))rsm_adamw_py_step, METH_VARARGS | METH_KEYWORDS, "step(params, grads, lr=None) -> grad norm"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_adamw_getset[] = {
    {"m", (getter)rsm_adamw_py_get_m, NULL, "first moments (view)", NULL},
    {"v", (getter)rsm_adamw_py_get_v, NULL, "second moments (view)", NULL},
    {"ema", (getter)rsm_adamw_py_get_ema, NULL, "EMA parameters (view) or None", NULL},
    {"step_count", (getter)rsm_adamw_py_get_step, (setter)rsm_adamw_py_set_step, "completed steps", NULL},
    {"config", (getter)rsm_adamw_py_get_config, NULL, "hyper-parameters", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot rsm_adamw_slots[] = {
    {Py_tp_init, rsm_adamw_py_init},
    {Py_tp_dealloc, rsm_adamw_py_dealloc},
    {Py_tp_methods, rsm_adamw_methods},
    {Py_tp_getset, rsm_adamw_getset},
    {Py_tp_doc, "AdamWCore(params, lr, beta1, beta2, eps, weight_decay, max_grad_norm, ema_decay)"},
    {0, NULL},
};

static PyType_Spec rsm_adamw_spec = {"rsm._C.AdamWCore", sizeof(rsm_py_adamw), 0,
                                     Py_TPFLAGS_DEFAULT, rsm_adamw_slots};

/* ---- pretraining -------------------------------------------------------------------------- */

/* pretrain_steps(model, opt, path, data, cond, batch_size, t_min, t_max, lr, warmup_steps, seed,
 *                first_step, num_steps) -> (losses, grad_norms) as float64 tensors */
static PyObject *
rsm_py_pretrain_steps(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"model", "opt", "path", "data", "cond", "batch_size", "t_min",
                             "t_max", "lr", "warmup_steps", "seed", "first_step", "num_steps",
                             "decay_steps", "min_lr_ratio", "cond_dropout", "null_cond", NULL};
    PyObject *model_obj, *opt_obj, *path_obj, *data_obj, *cond_obj, *null_obj = Py_None;
    long long batch_size, warmup_steps, first_step, num_steps, decay_steps = 0;
    double t_min, t_max, lr, min_lr_ratio = 0.0, cond_dropout = 0.0;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOLdddLKLL|LddO", kwlist, &model_obj,
                                     &opt_obj, &path_obj, &data_obj, &cond_obj, &batch_size,
                                     &t_min, &t_max, &lr, &warmup_steps, &seed, &first_step,
                                     &num_steps, &decay_steps, &min_lr_ratio, &cond_dropout,
                                     &null_obj))
        return NULL;
    const char *func = "pretrain";
    rsm_module_state *state = rsm_state(module);
    rsm_model model;
    PyThread_type_lock lock;
    if (rsm_model_arg(module, model_obj, func, &model, &lock) < 0) return NULL;
    if (!model.backward)
        return rsm_py_raisef(PyExc_TypeError, func, "model must be an rsm.MLP or rsm.DiT");
    if (!PyObject_TypeCheck(opt_obj, state->adamw_type))
        return rsm_py_raisef(PyExc_TypeError, func, "opt must be an rsm AdamW optimizer");
    if (!PyObject_TypeCheck(path_obj, state->path_type))
        return rsm_py_raisef(PyExc_TypeError, func, "path must be an rsm path");
    rsm_py_adamw *opt = (rsm_py_adamw *)opt_obj;
    rsm_py_tensor *data = NULL, *cond = NULL, *losses = NULL, *norms = NULL, *grads = NULL,
                  *null_cond = NULL;
    PyObject *result = NULL;
    data = rsm_matrix_arg(module, data_obj, func, "data", model.dtype, -1, model.dim);
    if (!data || rsm_check_finite(data, model.dtype, func, "data") < 0) goto done;
    if (cond_obj != Py_None) {
        if (model.cond_dim == 0) {
            rsm_py_raisef(PyExc_ValueError, func, "cond was given but the model is unconditional");
            goto done;
        }
        cond = rsm_matrix_arg(module, cond_obj, func, "cond", model.dtype, data->t.shape[0],
                              model.cond_dim);
        if (!cond || rsm_check_finite(cond, model.dtype, func, "cond") < 0) goto done;
    }
    if (null_obj != Py_None) {
        null_cond = rsm_vector_arg(module, null_obj, func, "null_cond", model.dtype, model.cond_dim);
        if (!null_cond || rsm_check_finite(null_cond, model.dtype, func, "null_cond") < 0) goto done;
    }
    int64_t steps = num_steps > 0 ? num_steps : 0;
    int64_t num_params = model.num_params;
    losses = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    norms = rsm_py_tensor_new(module, RSM_F64, 1, &steps, 1);
    grads = rsm_py_tensor_new(module, model.dtype, 1, &num_params, 0);
    if (!losses || !norms || !grads) goto done;
    rsm_pretrain_config cfg = {batch_size, t_min, t_max, lr, warmup_steps, decay_steps,
                               min_lr_ratio, (uint64_t)seed, cond_dropout,
                               null_cond ? rsm_py_tensor_data(null_cond) : NULL};
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    status = rsm_pretrain_steps(&model, &opt->opt, &((rsm_py_path *)path_obj)->path, &cfg,
                                rsm_py_tensor_data(data), cond ? rsm_py_tensor_data(cond) : NULL,
                                data->t.shape[0], first_step, num_steps, rsm_py_tensor_data(grads),
                                rsm_py_tensor_data(losses), rsm_py_tensor_data(norms));
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        goto done;
    }
    result = Py_BuildValue("(OO)", losses, norms);
done:
    Py_XDECREF(data);
    Py_XDECREF(cond);
    Py_XDECREF(losses);
    Py_XDECREF(norms);
    Py_XDECREF(grads);
    Py_XDECREF(null_cond);
    return result;
}

/* ---- random numbers ----------------------------------------------------------------------- */

static PyObject *
rsm_py_philox(PyObject *module, PyObject *args)
{
    unsigned int c0, c1, c2, c3, k0, k1;
    if (!PyArg_ParseTuple(args, "(IIII)(II)", &c0, &c1, &c2, &c3, &k0, &k1)) return NULL;
    uint32_t counter[4] = {c0, c1, c2, c3}, key[2] = {k0, k1}, out[4];
    rsm_philox4x32_10(counter, key, out);
    return Py_BuildValue("(IIII)", out[0], out[1], out[2], out[3]);
}

/* random(kind, seed, stream, offset, n, dtype) -> Tensor: kind 'normal', 'uniform' or 'u32' */
static PyObject *
rsm_py_random(PyObject *module, PyObject *args)
{
    const char *kind;
    unsigned long long seed, stream, offset;
    long long n;
    PyObject *dtype_obj = NULL;
    if (!PyArg_ParseTuple(args, "sKKKL|O", &kind, &seed, &stream, &offset, &n, &dtype_obj))
        return NULL;
    if (n < 0) return rsm_py_raisef(PyExc_ValueError, "random", "n=%lld must be >= 0", n);
    int64_t len = n;
    if (strcmp(kind, "u32") == 0) {
        rsm_py_tensor *out = rsm_py_tensor_new(module, RSM_U32, 1, &len, 0);
        if (out) rsm_fill_u32(seed, stream, offset, n, rsm_py_tensor_data(out));
        return (PyObject *)out;
    }
    rsm_dtype dtype;
    if (rsm_parse_dtype(dtype_obj, "random", &dtype) < 0) return NULL;
    rsm_py_tensor *out = rsm_py_tensor_new(module, dtype, 1, &len, 0);
    if (!out) return NULL;
    void *data = rsm_py_tensor_data(out);
    if (strcmp(kind, "normal") == 0) {
        if (dtype == RSM_F32) rsm_fill_normal_f32(seed, stream, offset, n, data);
        else rsm_fill_normal_f64(seed, stream, offset, n, data);
    } else if (strcmp(kind, "uniform") == 0) {
        if (dtype == RSM_F32) rsm_fill_uniform_f32(seed, stream, offset, n, data);
        else rsm_fill_uniform_f64(seed, stream, offset, n, data);
    } else {
        Py_DECREF(out);
        return rsm_py_raisef(PyExc_ValueError, "random",
                             "kind must be 'normal', 'uniform' or 'u32', got '%s'", kind);
    }
    return (PyObject *)out;
}

static PyObject *
rsm_py_stream_id(PyObject *module, PyObject *args)
{
    unsigned long long purpose, a, b;
    if (!PyArg_ParseTuple(args, "KKK", &purpose, &a, &b)) return NULL;
    return PyLong_FromUnsignedLongLong(rsm_stream_id(purpose, a, b));
}

/* ---- benchmark hook ------------------------------------------------------------------------ */

/* gemm(a, b, trans_a, trans_b, builtin=False) -> op(a) @ op(b), float32 or float64, through
 * rsm_sgemm / rsm_dgemm (the dispatch the MLP uses; builtin=True forces rsm's own kernel for that
 * call). A debugging and benchmark hook (benchmarks/bench_gemm.py), not part of the API. */
static PyObject *
rsm_py_gemm(PyObject *module, PyObject *args)
{
    PyObject *a_obj, *b_obj;
    int trans_a = 0, trans_b = 0, builtin = 0;
    if (!PyArg_ParseTuple(args, "OO|ppp", &a_obj, &b_obj, &trans_a, &trans_b, &builtin))
        return NULL;
    rsm_py_tensor *probe = rsm_py_tensor_arg(module, a_obj, "gemm", "a", RSM_F32);
    rsm_dtype dtype = RSM_F32;
    if (!probe) {
        PyErr_Clear();
        dtype = RSM_F64;
    }
    Py_XDECREF(probe);
    rsm_py_tensor *a = rsm_matrix_arg(module, a_obj, "gemm", "a", dtype, -1, -1);
    if (!a) return NULL;
    rsm_py_tensor *b = rsm_matrix_arg(module, b_obj, "gemm", "b", dtype, -1, -1);
    if (!b) {
        Py_DECREF(a);
        return NULL;
    }
    int64_t m = trans_a ? a->t.shape[1] : a->t.shape[0], k = trans_a ? a->t.shape[0] : a->t.shape[1];
    int64_t kb = trans_b ? b->t.shape[1] : b->t.shape[0], n = trans_b ? b->t.shape[0] : b->t.shape[1];
    rsm_py_tensor *c = NULL;
    if (k != kb) {
        rsm_py_raisef(PyExc_ValueError, "gemm", "inner dimensions differ: %lld vs %lld",
                      (long long)k, (long long)kb);
        goto done;
    }
    int64_t shape[2] = {m, n};
    c = rsm_py_tensor_new(module, dtype, 2, shape, 1);
    if (!c) goto done;
    Py_BEGIN_ALLOW_THREADS
    if (builtin) rsm_blas_use_builtin(1);
    if (dtype == RSM_F32)
        rsm_sgemm(trans_a, trans_b, m, n, k, 1.0f, rsm_py_tensor_data(a), a->t.shape[1],
                  rsm_py_tensor_data(b), b->t.shape[1], 0.0f, rsm_py_tensor_data(c), n);
    else
        rsm_dgemm(trans_a, trans_b, m, n, k, 1.0, rsm_py_tensor_data(a), a->t.shape[1],
                  rsm_py_tensor_data(b), b->t.shape[1], 0.0, rsm_py_tensor_data(c), n);
    if (builtin) rsm_blas_use_builtin(0);
    Py_END_ALLOW_THREADS
done:
    Py_DECREF(a);
    Py_DECREF(b);
    return (PyObject *)c;
}

static PyMethodDef rsm_compute_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))rsm_py_sample, METH_VARARGS | METH_KEYWORDS, "sample(...) -> dict"},
    {"branch_rollout", (PyCFunction)(void (*)(void))rsm_py_branch_rollout, METH_VARARGS | METH_KEYWORDS,
     "branch_rollout(...) -> dict: ODE root + single-step branches, then reward(x0) (rollout.h)"},
    {"transition_log_prob", (PyCFunction)(void (*)(void))rsm_py_transition_log_prob, METH_VARARGS | METH_KEYWORDS, "transition_log_prob(...) -> (log_prob, mean, output)"},
    {"step_coefficients", (PyCFunction)(void (*)(void))rsm_py_step_coefficients, METH_VARARGS | METH_KEYWORDS, "per-step (A, K, std) of a sampler"},
    {"pretrain_steps", (PyCFunction)(void (*)(void))rsm_py_pretrain_steps, METH_VARARGS | METH_KEYWORDS, "pretraining steps"},
    {"philox", rsm_py_philox, METH_VARARGS, "philox((c0, c1, c2, c3), (k0, k1)) -> 4 words"},
    {"random", rsm_py_random, METH_VARARGS, "random(kind, seed, stream, offset, n, dtype)"},
    {"stream_id", rsm_py_stream_id, METH_VARARGS, "stream_id(purpose, a, b)"},
    /* benchmark hook (benchmarks/bench_gemm.py), not API: */
    {"gemm", rsm_py_gemm, METH_VARARGS, "gemm(a, b, trans_a=False, trans_b=False, builtin=False) -> op(a) @ op(b) [benchmark hook]"},
    {NULL, NULL, 0, NULL},
};

static int
rsm_add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (!type) return -1;
    *slot = (PyTypeObject *)type;
    if (PyModule_AddObjectRef(module, name, type) < 0) return -1;
    return 0;
}

/* Exported for the other files of the binding (binding.h). */
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

const rsm_path *
rsm_py_path_arg(PyObject *module, PyObject *obj, const char *func, const char *argname)
{
    if (!PyObject_TypeCheck(obj, rsm_state(module)->path_type)) {
        rsm_py_raisef(PyExc_TypeError, func, "%s must be an rsm path core, got %s", argname,
                      Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return &((rsm_py_path *)obj)->path;
}

int
rsm_py_compute_exec(PyObject *module)
{
    rsm_module_state *state = rsm_state(module);
    if (rsm_add_type(module, &rsm_path_spec, &state->path_type, "PathCore") < 0) return -1;
    if (rsm_add_type(module, &rsm_mlp_spec, &state->mlp_type, "MLPCore") < 0) return -1;
    if (rsm_add_type(module, &rsm_gmm_spec, &state->gmm_type, "GaussianMixtureCore") < 0) return -1;
    if (rsm_add_type(module, &rsm_adamw_spec, &state->adamw_type, "AdamWCore") < 0) return -1;
    if (PyModule_AddFunctions(module, rsm_compute_methods) < 0) return -1;
    return 0;
}
