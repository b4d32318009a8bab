/* rng_py.c: the binding of rsm's counter-based random numbers (csrc/rng.h): the Philox block,
 * filled normal / uniform / u32 streams and the stream ids. Python draws its noise through these,
 * so that a seed gives the same numbers here as inside the C samplers. */
#include "binding.h"

#include <string.h>

#include "../rng.h"

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
    if (rsm_py_parse_real_dtype(dtype_obj, "random", &dtype) < 0) return NULL;
    rsm_py_tensor *out = rsm_py_tensor_new(module, dtype, 1, &len, 0);
    if (!out) return NULL;
    void *data = rsm_py_tensor_data(out);
    if (strcmp(kind, "normal") == 0) {
        if (dtype == RSM_F32)
            rsm_fill_normal_f32(seed, stream, offset, n, data);
        else
            rsm_fill_normal_f64(seed, stream, offset, n, data);
    } else if (strcmp(kind, "uniform") == 0) {
        if (dtype == RSM_F32)
            rsm_fill_uniform_f32(seed, stream, offset, n, data);
        else
            rsm_fill_uniform_f64(seed, stream, offset, n, data);
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

static PyMethodDef rsm_rng_methods[] = {
    {"philox", rsm_py_philox, METH_VARARGS, "philox((c0, c1, c2, c3), (k0, k1)) -> 4 words"},
    {"random", rsm_py_random, METH_VARARGS, "random(kind, seed, stream, offset, n, dtype)"},
    {"stream_id", rsm_py_stream_id, METH_VARARGS, "stream_id(purpose, a, b)"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_rng_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_rng_methods);
}
