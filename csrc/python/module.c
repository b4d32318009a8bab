/* module.c: the rsm._C extension module: multi-phase initialisation (PEP 489) with module state
 * (PEP 687), the status -> exception mapping, and build information.
 */
#include "binding.h"

#include <stdarg.h>

#include "../blas.h"

rsm_module_state *
rsm_state(PyObject *module)
{
    return (rsm_module_state *)PyModule_GetState(module);
}

PyObject *
rsm_module_of_type(PyTypeObject *type)
{
    return PyType_GetModuleByDef(type, &rsm_module_def);
}

static PyObject *
rsm_exception_for(rsm_status status)
{
    switch (status) {
    case RSM_ERR_VALUE: return PyExc_ValueError;
    case RSM_ERR_TYPE: return PyExc_TypeError;
    case RSM_ERR_MEMORY: return PyExc_MemoryError;
    case RSM_ERR_BUFFER: return PyExc_BufferError;
    case RSM_ERR_IO: return PyExc_OSError;
    case RSM_ERR_NUMERIC: return PyExc_FloatingPointError;
    default: return PyExc_RuntimeError;
    }
}

PyObject *
rsm_py_raise(rsm_status status, const char *func)
{
    if (status == RSM_ERR_CALLBACK && PyErr_Occurred()) return NULL;
    if (status == RSM_ERR_MEMORY && rsm_last_error()[0] == '\0') return PyErr_NoMemory();
    PyErr_Format(rsm_exception_for(status), "%s(): %s", func,
                 rsm_last_error()[0] ? rsm_last_error() : rsm_status_to_string(status));
    return NULL;
}

PyObject *
rsm_py_raisef(PyObject *exc_type, const char *func, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    PyOS_vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    PyErr_Format(exc_type, "%s(): %s", func, message);
    return NULL;
}

/* load_blas(path): use the CBLAS of the shared library at `path` (OpenBLAS from the
 * scipy-openblas32 wheel) for matrix products; without it rsm uses its own GEMM kernel. */
static PyObject *
rsm_py_load_blas(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(arg, &bytes)) return NULL;
    rsm_status status = rsm_blas_load(PyBytes_AS_STRING(bytes));
    Py_DECREF(bytes);
    if (status != RSM_OK) return rsm_py_raise(status, "load_blas");
    Py_RETURN_NONE;
}

static PyObject *
rsm_py_set_num_threads(PyObject *module, PyObject *arg)
{
    (void)module;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1) return rsm_py_raisef(PyExc_ValueError, "set_num_threads", "n=%ld must be >= 1", n);
    rsm_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *
rsm_py_get_num_threads(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(rsm_get_num_threads());
}

static PyObject *
rsm_py_build_info(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    rsm_blas_info info = rsm_blas_get_info();
    return Py_BuildValue(
        "{s:s,s:s,s:O,s:i,s:s,s:s,s:O,s:s}", "compiler",
#if defined(__clang__)
        "clang " __clang_version__,
#elif defined(__GNUC__)
        "gcc " __VERSION__,
#else
        "unknown",
#endif
        "c_flags", RSM_BUILD_CFLAGS, "openmp",
#if defined(_OPENMP)
        Py_True,
#else
        Py_False,
#endif
        "num_threads", rsm_get_num_threads(), "blas", info.name, "blas_path", info.path,
        "sanitizers",
#if defined(RSM_SANITIZE)
        Py_True,
#else
        Py_False,
#endif
        "dlpack_version", "1.1");
}

static PyMethodDef rsm_module_methods[] = {
    {"load_blas", rsm_py_load_blas, METH_O, "load_blas(path): use this CBLAS library for GEMMs."},
    {"set_num_threads", rsm_py_set_num_threads, METH_O, "set_num_threads(n): threads for rsm's CPU loops and BLAS."},
    {"get_num_threads", rsm_py_get_num_threads, METH_NOARGS, "get_num_threads() -> threads of rsm's CPU loops."},
    {"build_info", rsm_py_build_info, METH_NOARGS, "build_info() -> dict of what this build found."},
    {NULL, NULL, 0, NULL},
};

int
rsm_py_add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot, const char *name)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (!type) return -1;
    *slot = (PyTypeObject *)type; /* the state owns this reference */
    return PyModule_AddObjectRef(module, name, type);
}

/* Each file of the binding adds its part: tensors first (every other part converts to them),
 * then the types, then the functions. */
static int
rsm_module_exec(PyObject *module)
{
    int (*const parts[])(PyObject *) = {
        rsm_py_tensor_exec, rsm_py_path_exec,    rsm_py_mlp_exec,       rsm_py_gmm_exec,
        rsm_py_dit_exec,    rsm_py_guided_exec,  rsm_py_optim_exec,     rsm_py_sampler_exec,
        rsm_py_reward_exec, rsm_py_objective_exec, rsm_py_train_exec,   rsm_py_rng_exec,
        rsm_py_debug_exec,  rsm_py_external_exec,
    };
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (parts[i](module) < 0) return -1;
    return 0;
}

static int
rsm_module_traverse(PyObject *module, visitproc visit, void *arg)
{
    rsm_module_state *state = rsm_state(module);
#define RSM_VISIT_TYPE(name) Py_VISIT(state->name);
    RSM_MODULE_TYPES(RSM_VISIT_TYPE)
#undef RSM_VISIT_TYPE
    return 0;
}

static int
rsm_module_clear(PyObject *module)
{
    rsm_module_state *state = rsm_state(module);
#define RSM_CLEAR_TYPE(name) Py_CLEAR(state->name);
    RSM_MODULE_TYPES(RSM_CLEAR_TYPE)
#undef RSM_CLEAR_TYPE
    return 0;
}

static void
rsm_module_free(void *module)
{
    rsm_module_clear((PyObject *)module);
}

static PyModuleDef_Slot rsm_module_slots[] = {
    {Py_mod_exec, rsm_module_exec},
    {0, NULL},
};

PyModuleDef rsm_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rsm._C",
    .m_doc = "rsm's C core: tensors (DLPack), models, paths, samplers, optimizers.",
    .m_size = sizeof(rsm_module_state),
    .m_methods = rsm_module_methods,
    .m_slots = rsm_module_slots,
    .m_traverse = rsm_module_traverse,
    .m_clear = rsm_module_clear,
    .m_free = rsm_module_free,
};

PyMODINIT_FUNC
PyInit__C(void)
{
    return PyModuleDef_Init(&rsm_module_def);
}
