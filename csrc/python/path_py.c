/* path_py.c: the binding of the probability paths (csrc/path.h): rsm._C.PathCore, its
 * coefficients, the parameterization changes and the forward noising. */
#include "binding.h"

#include <string.h>

typedef struct {
    PyObject_HEAD rsm_path path;
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
            rsm_py_tensor *b =
                module ? rsm_py_tensor_arg(module, betas, "VPPath", "betas", RSM_F64) : NULL;
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
    if (strcmp(name, "eps") == 0 || strcmp(name, "epsilon") == 0)
        *out = RSM_PARAM_EPS;
    else if (strcmp(name, "velocity") == 0 || strcmp(name, "v") == 0)
        *out = RSM_PARAM_VELOCITY;
    else if (strcmp(name, "x0") == 0)
        *out = RSM_PARAM_X0;
    else if (strcmp(name, "score") == 0)
        *out = RSM_PARAM_SCORE;
    else {
        rsm_py_raisef(PyExc_ValueError, "convert",
                      "parameterization must be 'eps', 'velocity', 'x0' or 'score', got '%s'",
                      name);
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
    if (rsm_py_parse_real_dtype(dtype_obj, func, &dtype) < 0) return NULL;
    const char *x_name = noising ? "x0" : "x", *u_name = noising ? "eps" : "u";
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    PyObject *result = NULL;
    rsm_py_tensor *x = NULL, *u = NULL, *t = NULL, *out = NULL;
    x = rsm_py_matrix_arg(module, x_obj, func, x_name, dtype, -1, -1);
    if (!x) goto done;
    if (rsm_py_check_finite(x, dtype, func, x_name) < 0) goto done;
    u = rsm_py_matrix_arg(module, u_obj, func, u_name, dtype, x->t.shape[0], x->t.shape[1]);
    if (!u || rsm_py_check_finite(u, dtype, func, u_name) < 0) goto done;
    t = rsm_py_vector_arg(module, t_obj, func, "t", dtype, x->t.shape[0]);
    if (!t || rsm_py_check_times(t, dtype, func, "t") < 0) goto done;
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
    if (!PyArg_ParseTuple(args, "ssOOOO", &src_name, &dst_name, &x_obj, &u_obj, &t_obj, &dtype_obj))
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
    {"coef", (PyCFunction)rsm_path_py_coef, METH_O,
     "coef(t) -> dict(alpha, sigma, dalpha, dsigma, alpha_bar)"},
    {"coefs", (PyCFunction)rsm_path_py_coefs, METH_O,
     "coefs(t float64 [n]) -> float64 [n, 5] (alpha, sigma, dalpha, dsigma, alpha_bar)"},
    {"convert", (PyCFunction)rsm_path_py_convert, METH_VARARGS,
     "convert(src, dst, x, u, t, dtype)"},
    {"noise", (PyCFunction)rsm_path_py_noise, METH_VARARGS, "noise(x0, eps, t, dtype) -> x_t"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rsm_path_getset[] = {
    {"kind", (getter)rsm_path_py_get_kind, NULL, "'flow' or 'vp'", NULL},
    {"native_param", (getter)rsm_path_py_get_native, NULL,
     "native output parameterization (rsm_param code: 0 eps, 1 velocity, 2 x0, 3 score)", NULL},
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
rsm_py_path_exec(PyObject *module)
{
    return rsm_py_add_type(module, &rsm_path_spec, &rsm_state(module)->path_type, "PathCore");
}
