/* args.c: argument conversion helpers shared by the entry points of the binding: dtype names,
 * real arrays of a given shape, finite values and times. They convert and name the argument in
 * their messages; what the core checks itself is left to the core's status message. */
#include "binding.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int
rsm_py_parse_real_dtype(PyObject *obj, const char *func, rsm_dtype *out)
{
    if (obj && !PyUnicode_Check(obj)) {
        rsm_py_raisef(PyExc_TypeError, func, "dtype must be 'float32' or 'float64', got %s",
                      Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *name = obj ? PyUnicode_AsUTF8(obj) : "float32";
    if (!name) return -1;
    if (strcmp(name, "float32") == 0)
        *out = RSM_F32;
    else if (strcmp(name, "float64") == 0)
        *out = RSM_F64;
    else {
        rsm_py_raisef(PyExc_ValueError, func, "dtype must be 'float32' or 'float64', got '%s'",
                      name);
        return -1;
    }
    return 0;
}

/* A [rows, cols] argument; rows / cols < 0 mean any (the message then says n / d). */
rsm_py_tensor *
rsm_py_matrix_arg(PyObject *module, PyObject *obj, const char *func, const char *name,
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

rsm_py_tensor *
rsm_py_vector_arg(PyObject *module, PyObject *obj, const char *func, const char *name,
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
int
rsm_py_check_times(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name)
{
    int64_t n = rsm_tensor_numel(&t->t);
    for (int64_t i = 0; i < n; i++) {
        double v = dtype == RSM_F32 ? (double)((float *)rsm_py_tensor_data(t))[i]
                                    : ((double *)rsm_py_tensor_data(t))[i];
        if (!(v >= 0.0 && v <= 1.0)) {
            rsm_py_raisef(PyExc_ValueError, func,
                          "%s[%lld]=%g: times must be finite and in [0, 1] (t = 1 is noise)", name,
                          (long long)i, v);
            return -1;
        }
    }
    return 0;
}

int
rsm_py_check_finite(rsm_py_tensor *t, rsm_dtype dtype, const char *func, const char *name)
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

rsm_py_tensor *
rsm_py_real_arg(PyObject *module, PyObject *obj, const char *func, const char *name)
{
    rsm_py_tensor *t = rsm_py_tensor_arg(module, obj, func, name, RSM_F32);
    if (t || !PyErr_ExceptionMatches(PyExc_TypeError)) return t;
    PyErr_Clear();
    return rsm_py_tensor_arg(module, obj, func, name, RSM_F64);
}
