/* cuda_module.c: the rsm._cuda extension module, compiled only into rsm._cuda (never rsm._C) and
 * linked with the nvcc objects of kernels/*.cu. `import rsm` does not load it, so rsm works
 * without CUDA libraries; rsm.cuda_available() imports it. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "rsm_cuda.h"

/* device_count() -> (count, reason): reason is "" when count > 0, else why there is no device. */
static PyObject *
rsm_cuda_py_device_count(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    int count = 0;
    char reason[512];
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    err = rsm_cuda_device_count(&count, reason, sizeof(reason));
    Py_END_ALLOW_THREADS
    /* On an error count stays 0 and reason says why: "no device" is an answer, not a failure. */
    return Py_BuildValue("(is)", err == 0 ? count : 0, reason);
}

/* runtime_version() -> int: CUDA runtime version (1000 * major + 10 * minor), e.g. 13000. */
static PyObject *
rsm_cuda_py_runtime_version(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(rsm_cuda_runtime_version());
}

static PyMethodDef rsm_cuda_methods[] = {
    {"device_count", rsm_cuda_py_device_count, METH_NOARGS,
     "device_count() -> (count, reason): visible CUDA devices; reason says why there are none."},
    {"runtime_version", rsm_cuda_py_runtime_version, METH_NOARGS,
     "runtime_version() -> int: the CUDA runtime version rsm was built with (e.g. 13000)."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot rsm_cuda_slots[] = {
    {0, NULL},
};

static PyModuleDef rsm_cuda_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rsm._cuda",
    .m_doc = "rsm's CUDA code: device discovery (kernels follow).",
    .m_size = 0,
    .m_methods = rsm_cuda_methods,
    .m_slots = rsm_cuda_slots,
};

PyMODINIT_FUNC
PyInit__cuda(void)
{
    return PyModuleDef_Init(&rsm_cuda_module_def);
}
