/* device_py.c: the binding's side of models on a device (issue 13). A model core built with a
 * backend (rsm.cuda.backend_table(device), a capsule of rsm._cuda holding a const rsm_backend *)
 * keeps its parameters and activations on that device; its entry points (forward / vjp /
 * backward, rsm.sample) take their array arguments as device tensors (DLPack, zero-copy) and
 * return device tensors whose memory comes from the backend's allocator. On the CPU backend
 * (be NULL or kind CPU) every helper here is the CPU helper it wraps, so CPU calls are unchanged.
 *
 * What stays on the host whatever the device (backend.h's contract): sizes, configurations, the
 * schedule `ts`, the row counters of a rollout.
 */
#include "binding.h"

#include "../../kernels/backend_cuda.h" /* RSM_CUDA_BACKEND_CAPSULE (no CUDA header inside) */

#include <string.h>

int
rsm_py_on_device(const rsm_backend *be)
{
    return be != NULL && be->kind != RSM_DEVICE_CPU;
}

const rsm_backend *
rsm_py_backend_arg(PyObject *obj, const char *func)
{
    if (obj == NULL || obj == Py_None) return NULL;
    if (!PyCapsule_IsValid(obj, RSM_CUDA_BACKEND_CAPSULE)) {
        rsm_py_raisef(PyExc_TypeError, func,
                      "backend must be None (the CPU) or the capsule of rsm.cuda.backend_table("
                      "device), got %s",
                      Py_TYPE(obj)->tp_name);
        return NULL;
    }
    const rsm_backend *be = (const rsm_backend *)PyCapsule_GetPointer(obj, RSM_CUDA_BACKEND_CAPSULE);
    if (be == NULL) return NULL;
    char missing[512];
    if (rsm_backend_missing(be, missing, sizeof(missing)) > 0) {
        rsm_py_raisef(PyExc_RuntimeError, func, "the backend %s has no entry for: %s", be->name,
                      missing);
        return NULL;
    }
    return be;
}

void *
rsm_py_device_copy_in(const rsm_backend *be, const void *host, size_t bytes, const char *func)
{
    void *block = be->alloc(be, bytes > 0 ? bytes : 1);
    if (block == NULL) {
        rsm_py_raisef(PyExc_MemoryError, func, "cannot allocate %zu bytes on %s", bytes, be->name);
        return NULL;
    }
    rsm_status status;
    Py_BEGIN_ALLOW_THREADS
    if (bytes > 0) be->copy(be, block, host, bytes, RSM_COPY_H2D);
    status = be->synchronize(be); /* the host block may go as soon as we return */
    if (status == RSM_OK) status = be->check(be);
    Py_END_ALLOW_THREADS
    if (status != RSM_OK) {
        be->free(be, block);
        rsm_py_raise(status, func);
        return NULL;
    }
    return block;
}

/* The capsule that owns a block of device memory: freed through its backend (the context). */
#define RSM_DEVICE_BLOCK "rsm.device_block"

static void
rsm_device_block_destructor(PyObject *capsule)
{
    void *ptr = PyCapsule_GetPointer(capsule, RSM_DEVICE_BLOCK);
    const rsm_backend *be = (const rsm_backend *)PyCapsule_GetContext(capsule);
    if (ptr && be) be->free(be, ptr);
    PyErr_Clear(); /* a destructor must not leave an exception */
}

PyObject *
rsm_py_device_block(const rsm_backend *be, void *ptr)
{
    PyObject *owner = PyCapsule_New(ptr, RSM_DEVICE_BLOCK, rsm_device_block_destructor);
    if (owner == NULL) {
        be->free(be, ptr);
        return NULL;
    }
    if (PyCapsule_SetContext(owner, (void *)be) < 0) {
        Py_DECREF(owner); /* no context: the destructor frees nothing, so free here */
        be->free(be, ptr);
        return NULL;
    }
    return owner;
}

rsm_py_tensor *
rsm_py_tensor_view_on(PyObject *module, const rsm_backend *be, PyObject *base, void *data,
                      rsm_dtype dtype, int32_t ndim, const int64_t *shape, int readonly)
{
    rsm_py_tensor *view = rsm_py_tensor_view(module, base, data, dtype, ndim, shape, readonly);
    if (view && rsm_py_on_device(be)) {
        view->t.device.device_type = kDLCUDA;
        view->t.device.device_id = be->device;
    }
    return view;
}

rsm_py_tensor *
rsm_py_tensor_new_on(PyObject *module, const rsm_backend *be, rsm_dtype dtype, int32_t ndim,
                     const int64_t *shape, int zero)
{
    if (!rsm_py_on_device(be)) return rsm_py_tensor_new(module, dtype, ndim, shape, zero);
    rsm_tensor probe; /* the shape's element count, overflow-checked as on the CPU */
    rsm_status status = rsm_tensor_init_contiguous(&probe, dtype, ndim, shape);
    if (status != RSM_OK) return (rsm_py_tensor *)rsm_py_raise(status, "tensor_new");
    size_t bytes = (size_t)rsm_tensor_numel(&probe) * rsm_dtype_size(dtype);
    void *ptr = be->alloc(be, bytes > 0 ? bytes : 1);
    if (ptr == NULL)
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_MemoryError, "tensor_new",
                                              "cannot allocate %zu bytes on %s", bytes, be->name);
    if (zero && bytes > 0) be->memset_zero(be, ptr, bytes);
    PyObject *owner = rsm_py_device_block(be, ptr);
    if (owner == NULL) return NULL;
    rsm_py_tensor *view = rsm_py_tensor_view_on(module, be, owner, ptr, dtype, ndim, shape, 0);
    Py_DECREF(owner);
    return view;
}

/* A device argument: on be's device, of `dtype`, C-contiguous (no copy is made on a device: a
 * strided or mistyped argument is refused naming it). */
static rsm_py_tensor *
rsm_py_device_arg(PyObject *module, const rsm_backend *be, PyObject *obj, const char *func,
                  const char *name, rsm_dtype dtype)
{
    rsm_py_tensor *t = rsm_py_tensor_on(module, obj, func, name, kDLCUDA);
    if (t == NULL) return NULL;
    const char *problem = NULL;
    if (t->t.device.device_id != be->device)
        problem = "is on another device than the model";
    else if (rsm_tensor_dtype(&t->t) != dtype)
        problem = "has another dtype than the model's";
    else if (!rsm_tensor_is_contiguous(&t->t))
        problem = "is not C-contiguous (call .contiguous() first)";
    if (problem) {
        rsm_py_raisef(rsm_tensor_dtype(&t->t) != dtype ? PyExc_TypeError : PyExc_ValueError, func,
                      "%s %s (cuda:%d, %s); the model is on %s, %s", name, problem,
                      (int)t->t.device.device_id, rsm_dtype_name(rsm_tensor_dtype(&t->t)), be->name,
                      rsm_dtype_name(dtype));
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

static int
rsm_py_check_shape(rsm_py_tensor *t, const char *func, const char *name, int32_t ndim,
                   int64_t rows, int64_t cols)
{
    if (t->t.ndim == ndim && (rows < 0 || t->t.shape[0] == rows) &&
        (ndim < 2 || cols < 0 || t->t.shape[1] == cols))
        return 0;
    rsm_py_raisef(PyExc_ValueError, func, "%s must have %d dimensions of shape [%lld, %lld] (-1: any)",
                  name, (int)ndim, (long long)rows, (long long)cols);
    return -1;
}

rsm_py_tensor *
rsm_py_matrix_arg_on(PyObject *module, const rsm_backend *be, PyObject *obj, const char *func,
                     const char *name, rsm_dtype dtype, int64_t rows, int64_t cols)
{
    if (!rsm_py_on_device(be)) return rsm_py_matrix_arg(module, obj, func, name, dtype, rows, cols);
    rsm_py_tensor *t = rsm_py_device_arg(module, be, obj, func, name, dtype);
    if (t && rsm_py_check_shape(t, func, name, 2, rows, cols) < 0) Py_CLEAR(t);
    return t;
}

rsm_py_tensor *
rsm_py_vector_arg_on(PyObject *module, const rsm_backend *be, PyObject *obj, const char *func,
                     const char *name, rsm_dtype dtype, int64_t len)
{
    if (!rsm_py_on_device(be)) return rsm_py_vector_arg(module, obj, func, name, dtype, len);
    rsm_py_tensor *t = rsm_py_device_arg(module, be, obj, func, name, dtype);
    if (t && rsm_py_check_shape(t, func, name, 1, len, -1) < 0) Py_CLEAR(t);
    return t;
}

/* The value checks of the CPU (finite, times in [0, 1]) on a device argument: on a host copy,
 * so the message names the first bad element exactly as on the CPU. One copy per entry point's
 * inputs (not per step of a loop). */
int
rsm_py_check_on(PyObject *module, const rsm_backend *be, rsm_py_tensor *t, rsm_dtype dtype,
                const char *func, const char *name, int times)
{
    if (!rsm_py_on_device(be))
        return times ? rsm_py_check_times(t, dtype, func, name)
                     : rsm_py_check_finite(t, dtype, func, name);
    rsm_py_tensor *host = rsm_py_tensor_new(module, dtype, t->t.ndim, t->t.shape, 0);
    if (host == NULL) return -1;
    size_t bytes = (size_t)rsm_tensor_numel(&t->t) * rsm_dtype_size(dtype);
    rsm_status status = RSM_OK;
    Py_BEGIN_ALLOW_THREADS
    if (bytes > 0) be->copy(be, rsm_py_tensor_data(host), rsm_py_tensor_data(t), bytes, RSM_COPY_D2H);
    status = be->check(be);
    Py_END_ALLOW_THREADS
    int rc;
    if (status != RSM_OK) {
        rsm_py_raise(status, func);
        rc = -1;
    } else {
        rc = times ? rsm_py_check_times(host, dtype, func, name)
                   : rsm_py_check_finite(host, dtype, func, name);
    }
    Py_DECREF(host);
    return rc;
}

/* set_params(src) of a model core: copy a flat [n] array of `dtype` into its parameter block
 * `dst`, from the host (any model) or from a device array on the model's device (a device
 * model): how .to(device), copy() and load_params reach a device model's block. Under the
 * model's lock (its forward may be running in another thread). */
PyObject *
rsm_py_set_params(PyObject *module, const rsm_backend *be, PyThread_type_lock lock, void *dst,
                  rsm_dtype dtype, int64_t n, PyObject *arg)
{
    size_t bytes = (size_t)n * rsm_dtype_size(dtype);
    /* a device array goes device to device; anything else is read on the host */
    int from_device = 0;
    if (rsm_py_on_device(be) && PyObject_HasAttrString(arg, "__dlpack_device__")) {
        PyObject *dev = PyObject_CallMethod(arg, "__dlpack_device__", NULL);
        if (dev == NULL) return NULL;
        from_device = PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) >= 1 &&
                      PyLong_AsLong(PyTuple_GET_ITEM(dev, 0)) == kDLCUDA;
        Py_DECREF(dev);
        if (PyErr_Occurred()) return NULL;
    }
    rsm_py_tensor *src = from_device
        ? rsm_py_vector_arg_on(module, be, arg, "set_params", "params", dtype, n)
        : rsm_py_vector_arg(module, arg, "set_params", "params", dtype, n);
    if (src == NULL) return NULL;
    rsm_status status = RSM_OK;
    Py_BEGIN_ALLOW_THREADS
    if (lock) PyThread_acquire_lock(lock, WAIT_LOCK);
    if (!rsm_py_on_device(be)) {
        memcpy(dst, rsm_py_tensor_data(src), bytes);
    } else {
        be->copy(be, dst, rsm_py_tensor_data(src), bytes,
                 from_device ? RSM_COPY_D2D : RSM_COPY_H2D);
        status = be->synchronize(be); /* src (host or imported) may go when we return */
        if (status == RSM_OK) status = be->check(be);
    }
    if (lock) PyThread_release_lock(lock);
    Py_END_ALLOW_THREADS
    Py_DECREF(src);
    if (status != RSM_OK) return rsm_py_raise(status, "set_params");
    Py_RETURN_NONE;
}
