/* debug_py.c: test and benchmark hooks of rsm._C, not API:
 *   gemm(a, b, ...)                  the GEMM dispatch the models use (benchmarks/bench_gemm.py)
 *   dit_op(name, sizes, inputs, cot) one DiT op's forward and backward (tests/test_dit_ops.py)
 *   backend_check(dtype)             the CPU backend table op by op (tests/test_backend.py)
 * (rsm.Tensor's own argument-conversion hook, _tensor_arg, lives with the type in tensor_py.c.) */
#include "binding.h"

#include "../backend.h"
#include "../blas.h"
#include "../nn/dit.h"

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
    rsm_py_tensor *a = rsm_py_matrix_arg(module, a_obj, "gemm", "a", dtype, -1, -1);
    if (!a) return NULL;
    rsm_py_tensor *b = rsm_py_matrix_arg(module, b_obj, "gemm", "b", dtype, -1, -1);
    if (!b) {
        Py_DECREF(a);
        return NULL;
    }
    int64_t m = trans_a ? a->t.shape[1] : a->t.shape[0],
            k = trans_a ? a->t.shape[0] : a->t.shape[1];
    int64_t kb = trans_b ? b->t.shape[1] : b->t.shape[0],
            n = trans_b ? b->t.shape[0] : b->t.shape[1];
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

/* dit_op(name, sizes, inputs, cotangent) -> (out, grads): one op's forward and backward in
 * float64 (test hook for the finite-difference checks of tests/test_dit_ops.py, not API).
 * Output and gradient sizes per op are those of rsm_dit_op_f64 (dit_real.c). */
static PyObject *
rsm_py_dit_op(PyObject *module, PyObject *args)
{
    const char *name;
    PyObject *sizes_obj, *inputs_obj, *cot_obj;
    if (!PyArg_ParseTuple(args, "sOOO", &name, &sizes_obj, &inputs_obj, &cot_obj)) return NULL;
    int64_t sz[8] = {0};
    Py_ssize_t ns = PySequence_Size(sizes_obj);
    if (ns < 1 || ns > 8) return rsm_py_raisef(PyExc_ValueError, "dit_op", "1..8 sizes");
    for (Py_ssize_t i = 0; i < ns; i++) {
        PyObject *v = PySequence_GetItem(sizes_obj, i);
        sz[i] = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (PyErr_Occurred()) return NULL;
    }
    Py_ssize_t ni = PySequence_Size(inputs_obj);
    if (ni < 1 || ni > 4) return rsm_py_raisef(PyExc_ValueError, "dit_op", "1..4 inputs");
    rsm_py_tensor *in[4] = {NULL}, *grads[4] = {NULL}, *cot = NULL, *out = NULL;
    PyObject *result = NULL;
    const double *in_ptr[4] = {NULL};
    double *grad_ptr[4] = {NULL};
    for (Py_ssize_t i = 0; i < ni; i++) {
        PyObject *v = PySequence_GetItem(inputs_obj, i);
        if (!v) goto done;
        in[i] = rsm_py_tensor_arg(module, v, "dit_op", "inputs", RSM_F64);
        Py_DECREF(v);
        if (!in[i]) goto done;
        int64_t len = rsm_tensor_numel(&in[i]->t);
        grads[i] = rsm_py_tensor_new(module, RSM_F64, 1, &len, 1);
        if (!grads[i]) goto done;
        in_ptr[i] = rsm_py_tensor_data(in[i]);
        grad_ptr[i] = rsm_py_tensor_data(grads[i]);
    }
    cot = rsm_py_tensor_arg(module, cot_obj, "dit_op", "cotangent", RSM_F64);
    if (!cot) goto done;
    int64_t out_len = rsm_tensor_numel(&cot->t);
    out = rsm_py_tensor_new(module, RSM_F64, 1, &out_len, 1);
    if (!out) goto done;
    rsm_status status = rsm_dit_op_f64(name, sz, in_ptr, rsm_py_tensor_data(cot),
                                       rsm_py_tensor_data(out), grad_ptr);
    if (status != RSM_OK) {
        rsm_py_raise(status, "dit_op");
        goto done;
    }
    PyObject *glist = PyTuple_New(ni);
    if (!glist) goto done;
    for (Py_ssize_t i = 0; i < ni; i++) PyTuple_SET_ITEM(glist, i, Py_NewRef((PyObject *)grads[i]));
    result = Py_BuildValue("(ON)", out, glist);
done:
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(in[i]);
        Py_XDECREF(grads[i]);
    }
    Py_XDECREF(cot);
    Py_XDECREF(out);
    return result;
}

/* backend_check(dtype) -> (mismatches, checked op names, all op names, missing entries): every
 * op of the CPU backend table (backend.h) of that precision against the CPU loops, bit for bit
 * (backend_check_real.c), and the table's NULL entries. A test hook, not part of the API. */
static PyObject *
rsm_py_backend_check(PyObject *module, PyObject *args)
{
    (void)module;
    const char *dtype_name;
    if (!PyArg_ParseTuple(args, "s", &dtype_name)) return NULL;
    rsm_dtype dtype;
    if (strcmp(dtype_name, "float32") == 0) {
        dtype = RSM_F32;
    } else if (strcmp(dtype_name, "float64") == 0) {
        dtype = RSM_F64;
    } else {
        return rsm_py_raisef(PyExc_ValueError, "backend_check",
                             "dtype must be 'float32' or 'float64', not '%s'", dtype_name);
    }
    char checked[4096], msg[1024], missing[1024];
    int64_t mismatches;
    Py_BEGIN_ALLOW_THREADS
    mismatches = RSM_REAL_CALL(dtype, backend_check, &rsm_backend_cpu, checked, sizeof(checked),
                               msg, sizeof(msg));
    Py_END_ALLOW_THREADS
    if (mismatches < 0) return PyErr_NoMemory();
    int64_t n_missing = rsm_backend_missing(&rsm_backend_cpu, missing, sizeof(missing));
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (int64_t i = 0; i < rsm_backend_op_count(); i++) {
        PyObject *name = PyUnicode_FromString(rsm_backend_op_name(i));
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return Py_BuildValue("{s:L,s:s,s:s,s:N,s:L,s:s}", "mismatches", (long long)mismatches,
                         "checked", checked, "mismatched", msg, "ops", names, "missing",
                         (long long)n_missing, "missing_names", missing);
}

static PyMethodDef rsm_debug_methods[] = {
    {"gemm", rsm_py_gemm, METH_VARARGS,
     "gemm(a, b, trans_a=False, trans_b=False, builtin=False) -> op(a) @ op(b) [benchmark hook]"},
    {"backend_check", rsm_py_backend_check, METH_VARARGS,
     "backend_check(dtype): the CPU backend table op by op against the CPU loops (test hook)"},
    {"dit_op", rsm_py_dit_op, METH_VARARGS,
     "dit_op(name, sizes, inputs, cotangent) -> (out, grads) [test hook]"},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_debug_exec(PyObject *module)
{
    return PyModule_AddFunctions(module, rsm_debug_methods);
}
