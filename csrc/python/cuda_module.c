/* cuda_module.c: the rsm._cuda extension module, compiled only into rsm._cuda (never rsm._C) and
 * linked with the nvcc objects of the kernels/ sources. `import rsm` does not load it, so rsm works
 * without CUDA libraries; rsm.cuda_available() imports it.
 *
 * A thin layer over kernels/rsm_cuda.h. Arrays come in through DLPack from any producer (rsm's
 * device tensors, torch.cuda, CuPy, JAX) through rsm._C's one importer (dlpack_api.h: every
 * field checked, sizes overflow-checked, the producer asked for its capsule with
 * `__dlpack__(stream=<rsm's stream>)` so it orders its pending work before rsm's), with rsm._C's
 * one dtype table; this file adds what a kernel argument needs beyond that (device, dtype,
 * contiguity, writability, size, the same device for all of a call), with a message naming the
 * argument. An argument may also be `(array, offset)`: the view starting `offset` elements in
 * (slices of a trajectory buffer). The imported tensors of a call are released only after the
 * work queued on rsm's stream has completed (an event per call, polled), so a producer cannot
 * recycle memory a kernel still reads.
 *
 * Device memory of rsm's own tensors comes from the caching allocator (kernels/alloc.cu):
 * `empty(shape, dtype, device)` returns a DLPack capsule whose deleter hands the block back;
 * rsm.from_dlpack turns it into an rsm.Tensor on cuda:N.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "dlpack.h"
#include "dlpack_api.h"
#include "backend_cuda.h"
#include "rsm_cuda.h"

#define CAPSULE_VERSIONED "dltensor_versioned"

/* What an argument accepts: one rsm_dtype (the kernels' dtype codes are rsm_dtype values:
 * RSM_F32 0, RSM_F64 1), or one of these sets. */
enum { WANT_ANY_REAL = -1, WANT_ANY = -3 };

/* rsm._C's importer and dtype table (dlpack_api.h), borrowed on first use; the references keep
 * rsm._C and the table alive for the life of this module. */
static PyObject *g_rsm_C = NULL, *g_api_capsule = NULL;
static const rsm_dlpack_api *g_api = NULL;

static const rsm_dlpack_api *
dlpack_api(void)
{
    if (g_api != NULL) return g_api;
    PyObject *mod = PyImport_ImportModule("rsm._C");
    if (mod == NULL) return NULL;
    const rsm_dlpack_api *api = (const rsm_dlpack_api *)PyCapsule_Import(RSM_DLPACK_API_NAME, 0);
    if (api == NULL) {
        Py_DECREF(mod);
        return NULL;
    }
    if (api->version != RSM_DLPACK_API_VERSION) {
        Py_DECREF(mod);
        PyErr_Format(PyExc_ImportError,
                     "rsm._cuda: rsm._C's DLPack importer is version %d, this build expects %d "
                     "(rebuild rsm: the two extension modules come from different builds)",
                     api->version, RSM_DLPACK_API_VERSION);
        return NULL;
    }
    g_api_capsule = PyObject_GetAttrString(mod, "_dlpack_api");
    if (g_api_capsule == NULL) {
        Py_DECREF(mod);
        return NULL;
    }
    g_rsm_C = mod;
    g_api = api;
    return api;
}

static const char *
want_name(const rsm_dlpack_api *api, int want)
{
    switch (want) {
    case WANT_ANY: return "float32, float64, int64, uint8 or uint32";
    case WANT_ANY_REAL: return "float32 or float64";
    default: return api->dtype_name((rsm_dtype)want);
    }
}

/* A dtype the kernels take: the real types, int64 indices, uint8 flags (bool is the same byte),
 * uint32 Philox words. */
static int
dtype_accepted(rsm_dtype got, int want)
{
    if (want == WANT_ANY)
        return got == RSM_F32 || got == RSM_F64 || got == RSM_I64 || got == RSM_U8 ||
               got == RSM_BOOL || got == RSM_U32;
    if (want == WANT_ANY_REAL) return got == RSM_F32 || got == RSM_F64;
    if (want == RSM_U8) return got == RSM_U8 || got == RSM_BOOL;
    return (int)got == want;
}

static PyObject *
raise_cuda(const char *func)
{
    PyErr_Format(PyExc_RuntimeError, "%s(): %s", func, rsm_cuda_error());
    return NULL;
}

/* ---- deferred release of the capsules of queued work ------------------------------------ */

typedef struct pending {
    void *event;
    PyObject *capsules; /* a list */
    struct pending *next;
} pending;

static pending *g_pending = NULL;

static void
poll_pending(int wait)
{
    pending **link = &g_pending;
    while (*link != NULL) {
        pending *p = *link;
        int done = rsm_cuda_event_done(p->event);
        if (done == 0 && wait) {
            /* wait for it without the GIL, then release */
            Py_BEGIN_ALLOW_THREADS
            while ((done = rsm_cuda_event_done(p->event)) == 0) {
            }
            Py_END_ALLOW_THREADS
        }
        if (done != 0) { /* completed, or failed (the device is lost: release anyway) */
            *link = p->next;
            rsm_cuda_event_destroy(p->event);
            Py_DECREF(p->capsules);
            free(p);
        } else {
            link = &p->next;
        }
    }
}

/* ---- array arguments ---------------------------------------------------------------------- */

typedef struct arr {
    void *ptr;       /* first element (offset applied), NULL for None */
    int device;
    int dtype;       /* an rsm_dtype; -1 for None */
    int64_t numel;   /* elements from ptr on */
    size_t itemsize;
} arr;

typedef struct call {
    const char *func;
    PyObject *capsules; /* the imported tensors, kept until the call's work completes */
    int device;         /* -1 until the first array fixes it */
} call;

static int
call_begin(call *c, const char *func)
{
    poll_pending(0);
    c->func = func;
    c->device = -1;
    c->capsules = PyList_New(0);
    return c->capsules ? 0 : -1;
}

/* After queuing the call's work: keep its capsules until an event says it completed. */
static PyObject *
call_end(call *c, PyObject *result)
{
    if (c->capsules == NULL) return result;
    if (PyList_GET_SIZE(c->capsules) > 0 && c->device >= 0) {
        void *event = NULL;
        pending *p = (pending *)malloc(sizeof(pending));
        if (p != NULL && rsm_cuda_event_record(c->device, NULL, &event) == 0) {
            p->event = event;
            p->capsules = c->capsules;
            p->next = g_pending;
            g_pending = p;
            c->capsules = NULL;
            return result;
        }
        free(p);
        /* no event: wait for the stream instead, then release */
        Py_BEGIN_ALLOW_THREADS
        (void)rsm_cuda_stream_synchronize(c->device, NULL);
        Py_END_ALLOW_THREADS
    }
    Py_CLEAR(c->capsules);
    return result;
}

static PyObject *
call_fail(call *c)
{
    /* nothing was queued with these arrays after an error before launch; after a launch error
     * the device is in trouble anyway: synchronise before releasing */
    if (c->capsules && c->device >= 0) {
        Py_BEGIN_ALLOW_THREADS
        (void)rsm_cuda_stream_synchronize(c->device, NULL);
        Py_END_ALLOW_THREADS
    }
    Py_CLEAR(c->capsules);
    return NULL;
}

/* Arguments the kernels write: a read-only producer (a JAX array) is refused for these only. */
static int
is_output(const char *func, const char *name)
{
    static const char *outputs[] = {"out", "y", "dx", "dparams", "x_next", "mean", "noise",
                                    "log_prob", "x_euler", "xt", "target", "pred", "work",
                                    "cotangent", "row_loss", "kl_row", "log_ratio", "active",
                                    "norm", "grads", "m", "v", "ema", "dst", "acts", "scratch",
                                    NULL};
    for (int i = 0; outputs[i] != NULL; i++)
        if (strcmp(name, outputs[i]) == 0) return 1;
    if (strcmp(name, "params") == 0) return strcmp(func, "adamw_update") == 0;
    if (strcmp(name, "cond") == 0) return strcmp(func, "pretrain_batch") == 0;
    return 0;
}

/* obj -> arr: a CUDA array of dtype `want` (an rsm_dtype, or WANT_ANY_REAL / WANT_ANY) with at
 * least `need` elements (-1: any) on the call's device, imported by rsm._C's importer. None
 * gives ptr NULL when `optional`. */
static int
get_arr(call *c, PyObject *obj, const char *name, int want, int64_t need, int optional, arr *out)
{
    memset(out, 0, sizeof(*out));
    out->dtype = -1;
    if (obj == Py_None) {
        if (optional) return 0;
        PyErr_Format(PyExc_TypeError, "%s(): %s is required, got None", c->func, name);
        return -1;
    }
    const rsm_dlpack_api *api = dlpack_api();
    if (api == NULL) return -1;
    long long offset = 0;
    if (PyTuple_Check(obj)) {
        if (PyTuple_GET_SIZE(obj) != 2 || !PyLong_Check(PyTuple_GET_ITEM(obj, 1))) {
            PyErr_Format(PyExc_TypeError, "%s(): %s must be an array or (array, offset)", c->func,
                         name);
            return -1;
        }
        offset = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, 1));
        if (offset < 0 && !PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s(): the offset of %s must be >= 0", c->func, name);
        if (PyErr_Occurred()) return -1;
        obj = PyTuple_GET_ITEM(obj, 0);
    }
    const rsm_tensor *t = NULL;
    PyObject *tensor = api->import_on(g_rsm_C, obj, c->func, name, kDLCUDA, &t);
    if (tensor == NULL) return -1;
    const int id = (int)t->device.device_id;
    const rsm_dtype dtype = api->tensor_dtype(t);
    const int64_t numel = api->tensor_numel(t); /* <= RSM_MAX_ELEMS: the importer checked it */
    if (c->device >= 0 && id != c->device) {
        PyErr_Format(PyExc_ValueError, "%s(): %s is on cuda:%d, the other arrays on cuda:%d",
                     c->func, name, id, c->device);
    } else if (!dtype_accepted(dtype, want)) {
        PyErr_Format(PyExc_TypeError, "%s(): %s must be %s, got %s", c->func, name,
                     want_name(api, want), api->dtype_name(dtype));
    } else if (!api->tensor_is_contiguous(t)) {
        PyErr_Format(PyExc_ValueError, "%s(): %s must be C-contiguous", c->func, name);
    } else if ((t->flags & RSM_TENSOR_READ_ONLY) && is_output(c->func, name)) {
        PyErr_Format(PyExc_ValueError, "%s(): %s is read-only, but it is written", c->func, name);
    } else if (offset > numel || (need >= 0 && numel - offset < need)) {
        PyErr_Format(PyExc_ValueError,
                     "%s(): %s has %lld elements from offset %lld, expected at least %lld",
                     c->func, name, (long long)(numel - (offset < numel ? offset : numel)),
                     offset, (long long)need);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(tensor);
        return -1;
    }
    out->itemsize = api->dtype_size(dtype);
    out->ptr = (char *)t->data + t->byte_offset + (size_t)offset * out->itemsize;
    out->device = id;
    out->dtype = (int)dtype;
    out->numel = numel - offset;
    c->device = id;
    int rc = PyList_Append(c->capsules, tensor);
    Py_DECREF(tensor);
    return rc;
}

/* Run `expr` (a kernel launch returning an int) on the call's device, without the GIL. */
#define LAUNCH(c, expr)                                                                        \
    do {                                                                                       \
        int rc_ = 0;                                                                           \
        void *stream_ = NULL;                                                                  \
        Py_BEGIN_ALLOW_THREADS                                                                 \
        rc_ = rsm_cuda_set_device((c)->device);                                                \
        if (rc_ == 0) rc_ = rsm_cuda_stream((c)->device, &stream_);                            \
        if (rc_ == 0) rc_ = (expr);                                                            \
        Py_END_ALLOW_THREADS                                                                   \
        if (rc_ != 0) {                                                                        \
            raise_cuda((c)->func);                                                             \
            return call_fail(c);                                                               \
        }                                                                                      \
    } while (0)

/* ---- discovery, streams, memory ----------------------------------------------------------- */

/* device_count() -> (count, reason): reason is "" when count > 0, else why there is no device. */
static PyObject *
py_device_count(PyObject *module, PyObject *unused)
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
py_runtime_version(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(rsm_cuda_runtime_version());
}

static PyObject *
py_stream(PyObject *module, PyObject *arg)
{
    int device = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    void *stream = NULL;
    if (rsm_cuda_stream(device, &stream) != 0) return raise_cuda("stream");
    return PyLong_FromVoidPtr(stream);
}

static PyObject *
py_synchronize(PyObject *module, PyObject *arg)
{
    int device = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rsm_cuda_stream_synchronize(device, NULL);
    Py_END_ALLOW_THREADS
    if (rc != 0) return raise_cuda("synchronize");
    poll_pending(1);
    Py_RETURN_NONE;
}

/* export_sync(device, consumer_stream): make the consumer's stream wait for rsm's queued work
 * (DLPack producer side; rsm.Tensor.__dlpack__ calls it for device tensors). */
static PyObject *
py_export_sync(PyObject *module, PyObject *args)
{
    int device;
    Py_ssize_t consumer;
    if (!PyArg_ParseTuple(args, "in:export_sync", &device, &consumer)) return NULL;
    void *stream = NULL;
    if (rsm_cuda_stream(device, &stream) != 0) return raise_cuda("__dlpack__");
    if (rsm_cuda_stream_wait(device, stream, (void *)(intptr_t)consumer) != 0)
        return raise_cuda("__dlpack__");
    Py_RETURN_NONE;
}

typedef struct owned_block {
    DLManagedTensorVersioned managed;
    int device;
    int64_t shape_strides[]; /* ndim shapes, then ndim strides */
} owned_block;

static void
owned_deleter(DLManagedTensorVersioned *m)
{
    owned_block *b = (owned_block *)m;
    rsm_cuda_free(b->device, m->dl_tensor.data);
    free(b);
}

static void
owned_capsule_destructor(PyObject *capsule)
{
    if (PyCapsule_IsValid(capsule, CAPSULE_VERSIONED)) {
        DLManagedTensorVersioned *m =
            (DLManagedTensorVersioned *)PyCapsule_GetPointer(capsule, CAPSULE_VERSIONED);
        if (m && m->deleter) m->deleter(m);
    }
}

/* empty(shape, dtype, device) -> "dltensor_versioned" capsule of uninitialised device memory
 * from the caching allocator. dtype: one the kernels take (float32, float64, int64, uint8, bool,
 * uint32), spelled as rsm._C's dtype table spells it. The element count is overflow-checked
 * against the core's bound (checked.h) before any allocation. */
static PyObject *
py_empty(PyObject *module, PyObject *args)
{
    PyObject *shape_obj;
    const char *dtype_name;
    int device;
    if (!PyArg_ParseTuple(args, "Osi:empty", &shape_obj, &dtype_name, &device)) return NULL;
    const rsm_dlpack_api *api = dlpack_api();
    if (api == NULL) return NULL;
    int dtype = -1;
    for (int i = 0; i < RSM_DTYPE_COUNT; i++)
        if (dtype_accepted((rsm_dtype)i, WANT_ANY) && strcmp(api->dtype_name((rsm_dtype)i), dtype_name) == 0)
            dtype = i;
    if (dtype < 0) {
        PyErr_Format(PyExc_TypeError, "empty(): dtype must be %s or bool, got %s",
                     want_name(api, WANT_ANY), dtype_name);
        return NULL;
    }
    if (device < 0) {
        PyErr_Format(PyExc_ValueError, "empty(): device=%d must be >= 0", device);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(shape_obj, "empty(): shape must be a sequence of ints");
    if (seq == NULL) return NULL;
    Py_ssize_t ndim = PySequence_Fast_GET_SIZE(seq);
    if (ndim > RSM_MAX_NDIM) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "empty(): at most %d dimensions", RSM_MAX_NDIM);
        return NULL;
    }
    owned_block *b = (owned_block *)calloc(1, sizeof(owned_block) + 2 * (size_t)ndim * sizeof(int64_t));
    if (b == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    int64_t numel = 1;
    int ok = 1;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v < 0 && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "empty(): shape entries must be >= 0");
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            free(b);
            return NULL;
        }
        b->shape_strides[i] = v;
        numel = rsm_size_mul(numel, v, &ok);
    }
    Py_DECREF(seq);
    if (!rsm_size_within(numel, ok)) {
        free(b);
        PyErr_Format(PyExc_ValueError, "empty(): shape has more than 2^%d elements",
                     RSM_MAX_ELEMS_LOG2);
        return NULL;
    }
    int64_t stride = 1;
    for (Py_ssize_t i = ndim - 1; i >= 0; i--) {
        b->shape_strides[ndim + i] = stride;
        stride *= b->shape_strides[i];
    }
    void *data = NULL;
    if (rsm_cuda_alloc(device, (size_t)numel * api->dtype_size((rsm_dtype)dtype), &data) != 0) {
        free(b);
        return raise_cuda("empty");
    }
    b->device = device;
    b->managed.version.major = DLPACK_MAJOR_VERSION;
    b->managed.version.minor = DLPACK_MINOR_VERSION;
    b->managed.manager_ctx = NULL;
    b->managed.deleter = owned_deleter;
    b->managed.flags = 0;
    DLTensor *dl = &b->managed.dl_tensor;
    dl->data = data;
    dl->device.device_type = kDLCUDA;
    dl->device.device_id = device;
    dl->ndim = (int32_t)ndim;
    dl->dtype = api->dtype_to_dl((rsm_dtype)dtype);
    dl->shape = b->shape_strides;
    dl->strides = b->shape_strides + ndim;
    dl->byte_offset = 0;
    PyObject *capsule = PyCapsule_New(&b->managed, CAPSULE_VERSIONED, owned_capsule_destructor);
    if (capsule == NULL) owned_deleter(&b->managed);
    return capsule;
}

static PyObject *
py_memory_stats(PyObject *module, PyObject *arg)
{
    int device = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    rsm_cuda_alloc_stats s;
    if (rsm_cuda_alloc_stats_get(device, &s) != 0) return raise_cuda("memory_stats");
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "allocated_bytes",
                         (unsigned long long)s.allocated_bytes, "reserved_bytes",
                         (unsigned long long)s.reserved_bytes, "peak_allocated_bytes",
                         (unsigned long long)s.peak_allocated_bytes, "peak_reserved_bytes",
                         (unsigned long long)s.peak_reserved_bytes, "num_allocs",
                         (unsigned long long)s.num_allocs, "num_cache_hits",
                         (unsigned long long)s.num_cache_hits, "num_device_mallocs",
                         (unsigned long long)s.num_device_mallocs, "num_frees",
                         (unsigned long long)s.num_frees);
}

static PyObject *
py_empty_cache(PyObject *module, PyObject *arg)
{
    int device = PyLong_AsLong(arg);
    if (PyErr_Occurred()) return NULL;
    poll_pending(1);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rsm_cuda_empty_cache(device);
    Py_END_ALLOW_THREADS
    if (rc != 0) return raise_cuda("empty_cache");
    Py_RETURN_NONE;
}

static const char *const matmul_modes[] = {"ieee", "tf32", "bf16"};

/* set_matmul(mode): the math of float32 matrix products, "ieee" (default), "tf32" or "bf16"
 * (rsm_cuda.h). */
static PyObject *
py_set_matmul(PyObject *module, PyObject *arg)
{
    const char *mode = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    for (int i = 0; mode != NULL && i < 3; i++)
        if (strcmp(mode, matmul_modes[i]) == 0) {
            if (rsm_cuda_set_matmul(i) != 0) return raise_cuda("set_matmul");
            Py_RETURN_NONE;
        }
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "set_matmul(): mode must be 'ieee', 'tf32' or 'bf16', got %R",
                     arg);
    return NULL;
}

static PyObject *
py_get_matmul(PyObject *module, PyObject *unused)
{
    return PyUnicode_FromString(matmul_modes[rsm_cuda_get_matmul()]);
}

/* copy(dst, src): host<->device or device<->device copies of equal byte size. A host side is any
 * C-contiguous buffer (numpy); the device side a CUDA array (DLPack). Waits for completion. */
static PyObject *
py_copy(PyObject *module, PyObject *args)
{
    PyObject *dst, *src;
    if (!PyArg_ParseTuple(args, "OO:copy", &dst, &src)) return NULL;
    call c;
    if (call_begin(&c, "copy") < 0) return NULL;
    int dst_host = PyObject_CheckBuffer(dst), src_host = PyObject_CheckBuffer(src);
    Py_buffer buf;
    arr a, b;
    if (dst_host && src_host) {
        PyErr_SetString(PyExc_ValueError, "copy(): one side must be a CUDA array");
        return call_fail(&c);
    }
    if (dst_host || src_host) {
        PyObject *host = dst_host ? dst : src, *dev = dst_host ? src : dst;
        if (PyObject_GetBuffer(host, &buf, PyBUF_C_CONTIGUOUS | (dst_host ? PyBUF_WRITABLE : 0)) < 0)
            return call_fail(&c);
        if (get_arr(&c, dev, dst_host ? "src" : "dst", WANT_ANY, -1, 0, &a) < 0) {
            PyBuffer_Release(&buf);
            return call_fail(&c);
        }
        size_t bytes = (size_t)a.numel * a.itemsize;
        if ((size_t)buf.len != bytes) {
            PyErr_Format(PyExc_ValueError, "copy(): the host buffer has %zd bytes, the device "
                         "array %zu", buf.len, bytes);
            PyBuffer_Release(&buf);
            return call_fail(&c);
        }
        int rc;
        void *hbuf = buf.buf;
        Py_BEGIN_ALLOW_THREADS
        rc = dst_host ? rsm_cuda_memcpy(a.device, hbuf, a.ptr, bytes, 1, NULL)
                      : rsm_cuda_memcpy(a.device, a.ptr, hbuf, bytes, 0, NULL);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&buf);
        if (rc != 0) {
            raise_cuda("copy");
            return call_fail(&c);
        }
        return call_end(&c, Py_NewRef(Py_None));
    }
    if (get_arr(&c, src, "src", WANT_ANY, -1, 0, &b) < 0) return call_fail(&c);
    if (get_arr(&c, dst, "dst", b.dtype, b.numel, 0, &a) < 0) return call_fail(&c);
    if (a.itemsize != b.itemsize) {
        PyErr_Format(PyExc_TypeError, "copy(): dst has %zu-byte elements, src %zu-byte ones",
                     a.itemsize, b.itemsize);
        return call_fail(&c);
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rsm_cuda_memcpy(a.device, a.ptr, b.ptr, (size_t)b.numel * b.itemsize, 2, NULL);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        raise_cuda("copy");
        return call_fail(&c);
    }
    return call_end(&c, Py_NewRef(Py_None));
}

static PyObject *
py_zero(PyObject *module, PyObject *args)
{
    PyObject *dst;
    if (!PyArg_ParseTuple(args, "O:zero", &dst)) return NULL;
    call c;
    if (call_begin(&c, "zero") < 0) return NULL;
    arr a;
    if (get_arr(&c, dst, "dst", WANT_ANY_REAL, -1, 0, &a) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_memset_zero(a.device, a.ptr, (size_t)a.numel * a.itemsize, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- random numbers, elementwise ---------------------------------------------------------- */

static PyObject *
py_fill_normal(PyObject *module, PyObject *args)
{
    PyObject *out;
    unsigned long long seed, stream_id, offset = 0;
    if (!PyArg_ParseTuple(args, "OKK|K:fill_normal", &out, &seed, &stream_id, &offset)) return NULL;
    call c;
    if (call_begin(&c, "fill_normal") < 0) return NULL;
    arr a;
    if (get_arr(&c, out, "out", WANT_ANY_REAL, -1, 0, &a) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_fill_normal(a.dtype, seed, stream_id, offset, a.numel, a.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

static PyObject *
py_fill_u32(PyObject *module, PyObject *args)
{
    PyObject *out;
    unsigned long long seed, stream_id, offset = 0;
    if (!PyArg_ParseTuple(args, "OKK|K:fill_u32", &out, &seed, &stream_id, &offset)) return NULL;
    call c;
    if (call_begin(&c, "fill_u32") < 0) return NULL;
    arr a;
    if (get_arr(&c, out, "out", RSM_U32, -1, 0, &a) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_fill_u32(seed, stream_id, offset, a.numel, (uint32_t *)a.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

static PyObject *
py_silu_forward(PyObject *module, PyObject *args)
{
    PyObject *x, *y;
    if (!PyArg_ParseTuple(args, "OO:silu_forward", &x, &y)) return NULL;
    call c;
    if (call_begin(&c, "silu_forward") < 0) return NULL;
    arr ax, ay;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, -1, 0, &ax) < 0) return call_fail(&c);
    if (get_arr(&c, y, "y", ax.dtype, ax.numel, 0, &ay) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_silu_forward(ax.dtype, ax.numel, ax.ptr, ay.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

static PyObject *
py_silu_backward(PyObject *module, PyObject *args)
{
    PyObject *dy, *x, *dx;
    if (!PyArg_ParseTuple(args, "OOO:silu_backward", &dy, &x, &dx)) return NULL;
    call c;
    if (call_begin(&c, "silu_backward") < 0) return NULL;
    arr a, b, d;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, -1, 0, &b) < 0) return call_fail(&c);
    if (get_arr(&c, dy, "dy", b.dtype, b.numel, 0, &a) < 0) return call_fail(&c);
    if (get_arr(&c, dx, "dx", b.dtype, b.numel, 0, &d) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_silu_backward(b.dtype, b.numel, a.ptr, b.ptr, d.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

static PyObject *
py_ema(PyObject *module, PyObject *args)
{
    PyObject *ema, *params;
    double decay;
    if (!PyArg_ParseTuple(args, "OOd:ema", &ema, &params, &decay)) return NULL;
    call c;
    if (call_begin(&c, "ema") < 0) return NULL;
    arr a, b;
    if (get_arr(&c, params, "params", WANT_ANY_REAL, -1, 0, &b) < 0) return call_fail(&c);
    if (get_arr(&c, ema, "ema", b.dtype, b.numel, 0, &a) < 0) return call_fail(&c);
    LAUNCH(&c, rsm_cuda_ema(b.dtype, b.numel, decay, a.ptr, b.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- MLP ---------------------------------------------------------------------------------- */

/* cfg: (dim, hidden, depth, cond_dim, temb_dim, in_dim, in_w, in_b, block0, block_size, out_w,
 * out_b, num_params) */
static int
parse_mlp(PyObject *cfg, rsm_cuda_mlp *m)
{
    long long v[13];
    if (!PyTuple_Check(cfg) || PyTuple_GET_SIZE(cfg) != 13) {
        PyErr_SetString(PyExc_TypeError, "mlp config must be a tuple of 13 ints");
        return -1;
    }
    for (int i = 0; i < 13; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(cfg, i));
        if (PyErr_Occurred()) return -1;
        if (v[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "mlp config entries must be >= 0");
            return -1;
        }
    }
    m->dim = v[0], m->hidden = v[1], m->depth = v[2], m->cond_dim = v[3], m->temb_dim = v[4];
    m->in_dim = v[5], m->in_w = v[6], m->in_b = v[7], m->block0 = v[8], m->block_size = v[9];
    m->out_w = v[10], m->out_b = v[11], m->num_params = v[12];
    if (m->in_dim != m->dim + m->temb_dim + m->cond_dim || m->dim < 1 || m->hidden < 1) {
        PyErr_SetString(PyExc_ValueError, "inconsistent mlp config");
        return -1;
    }
    return 0;
}

static PyObject *
py_mlp_sizes(PyObject *module, PyObject *args)
{
    PyObject *cfg;
    long long rows;
    if (!PyArg_ParseTuple(args, "OL:mlp_sizes", &cfg, &rows)) return NULL;
    rsm_cuda_mlp m;
    if (parse_mlp(cfg, &m) < 0) return NULL;
    return Py_BuildValue("(LL)", (long long)rsm_cuda_mlp_acts_numel(&m, rows),
                         (long long)rsm_cuda_mlp_scratch_numel(&m, rows));
}

/* mlp_forward(cfg, params, n, x, t, cond, out, acts) */
static PyObject *
py_mlp_forward(PyObject *module, PyObject *args)
{
    PyObject *cfg, *params, *x, *t, *cond, *out, *acts;
    long long n;
    if (!PyArg_ParseTuple(args, "OOLOOOOO:mlp_forward", &cfg, &params, &n, &x, &t, &cond, &out,
                          &acts))
        return NULL;
    rsm_cuda_mlp m;
    if (parse_mlp(cfg, &m) < 0) return NULL;
    call c;
    if (call_begin(&c, "mlp_forward") < 0) return NULL;
    arr ap, ax, at, ac, ao, aa;
    if (get_arr(&c, params, "params", WANT_ANY_REAL, m.num_params, 0, &ap) < 0) return call_fail(&c);
    int dt = ap.dtype;
    if (get_arr(&c, x, "x", dt, n * m.dim, 0, &ax) < 0 || get_arr(&c, t, "t", dt, n, 0, &at) < 0 ||
        get_arr(&c, cond, "cond", dt, n * m.cond_dim, m.cond_dim == 0, &ac) < 0 ||
        get_arr(&c, out, "out", dt, n * m.dim, 0, &ao) < 0 ||
        get_arr(&c, acts, "acts", dt, rsm_cuda_mlp_acts_numel(&m, n), 0, &aa) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_mlp_forward(dt, &m, ap.ptr, n, ax.ptr, at.ptr, ac.ptr, ao.ptr, aa.ptr,
                                    stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* mlp_backward(cfg, params, n, acts, scratch, dout, dparams or None, dx or None) */
static PyObject *
py_mlp_backward(PyObject *module, PyObject *args)
{
    PyObject *cfg, *params, *acts, *scratch, *dout, *dparams, *dx;
    long long n;
    if (!PyArg_ParseTuple(args, "OOLOOOOO:mlp_backward", &cfg, &params, &n, &acts, &scratch, &dout,
                          &dparams, &dx))
        return NULL;
    rsm_cuda_mlp m;
    if (parse_mlp(cfg, &m) < 0) return NULL;
    call c;
    if (call_begin(&c, "mlp_backward") < 0) return NULL;
    arr ap, aa, as, ad, ag, ax;
    if (get_arr(&c, params, "params", WANT_ANY_REAL, m.num_params, 0, &ap) < 0) return call_fail(&c);
    int dt = ap.dtype;
    if (get_arr(&c, acts, "acts", dt, rsm_cuda_mlp_acts_numel(&m, n), 0, &aa) < 0 ||
        get_arr(&c, scratch, "scratch", dt, rsm_cuda_mlp_scratch_numel(&m, n), 0, &as) < 0 ||
        get_arr(&c, dout, "dout", dt, n * m.dim, 0, &ad) < 0 ||
        get_arr(&c, dparams, "dparams", dt, m.num_params, 1, &ag) < 0 ||
        get_arr(&c, dx, "dx", dt, n * m.dim, 1, &ax) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_mlp_backward(dt, &m, ap.ptr, n, aa.ptr, as.ptr, ad.ptr, ag.ptr, ax.ptr,
                                     stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- sampler ------------------------------------------------------------------------------ */

/* sampler_step(x, u, x_next, mean, noise, log_prob, A, K, std, stochastic, seed, stream_id, rows,
 * dim): mean, noise, log_prob may be None. */
static PyObject *
py_sampler_step(PyObject *module, PyObject *args)
{
    PyObject *x, *u, *xn, *mean, *noise, *lp;
    double A, K, std;
    int stochastic;
    unsigned long long seed, stream_id;
    long long rows, dim;
    if (!PyArg_ParseTuple(args, "OOOOOOdddpKKLL:sampler_step", &x, &u, &xn, &mean, &noise, &lp, &A,
                          &K, &std, &stochastic, &seed, &stream_id, &rows, &dim))
        return NULL;
    call c;
    if (call_begin(&c, "sampler_step") < 0) return NULL;
    arr ax, au, an, am, az, al;
    const int64_t n = rows * dim;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, n, 0, &ax) < 0) return call_fail(&c);
    int dt = ax.dtype;
    if (get_arr(&c, u, "u", dt, n, 0, &au) < 0 || get_arr(&c, xn, "x_next", dt, n, 0, &an) < 0 ||
        get_arr(&c, mean, "mean", dt, n, 1, &am) < 0 ||
        get_arr(&c, noise, "noise", dt, n, 1, &az) < 0 ||
        get_arr(&c, lp, "log_prob", dt, rows, 1, &al) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_sampler_step(dt, A, K, std, stochastic, seed, stream_id, rows, dim, ax.ptr,
                                     au.ptr, an.ptr, am.ptr, az.ptr, al.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* transition_log_prob(x, u, x_next, log_prob, mean or None, A, K, std, rows, dim) */
static PyObject *
py_transition_log_prob(PyObject *module, PyObject *args)
{
    PyObject *x, *u, *xn, *lp, *mean;
    double A, K, std;
    long long rows, dim;
    if (!PyArg_ParseTuple(args, "OOOOOdddLL:transition_log_prob", &x, &u, &xn, &lp, &mean, &A, &K,
                          &std, &rows, &dim))
        return NULL;
    call c;
    if (call_begin(&c, "transition_log_prob") < 0) return NULL;
    arr ax, au, an, al, am;
    const int64_t n = rows * dim;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, n, 0, &ax) < 0) return call_fail(&c);
    int dt = ax.dtype;
    if (get_arr(&c, u, "u", dt, n, 0, &au) < 0 || get_arr(&c, xn, "x_next", dt, n, 0, &an) < 0 ||
        get_arr(&c, lp, "log_prob", dt, rows, 0, &al) < 0 ||
        get_arr(&c, mean, "mean", dt, n, 1, &am) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_transition_log_prob(dt, A, K, std, rows, dim, ax.ptr, au.ptr, an.ptr,
                                            al.ptr, am.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* heun_predict(x, u, x_euler, dt, v_x, v_u) */
static PyObject *
py_heun_predict(PyObject *module, PyObject *args)
{
    PyObject *x, *u, *xe;
    double dt_, vx, vu;
    if (!PyArg_ParseTuple(args, "OOOddd:heun_predict", &x, &u, &xe, &dt_, &vx, &vu)) return NULL;
    call c;
    if (call_begin(&c, "heun_predict") < 0) return NULL;
    arr ax, au, ae;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, -1, 0, &ax) < 0 ||
        get_arr(&c, u, "u", ax.dtype, ax.numel, 0, &au) < 0 ||
        get_arr(&c, xe, "x_euler", ax.dtype, ax.numel, 0, &ae) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_heun_predict(ax.dtype, dt_, vx, vu, ax.numel, ax.ptr, au.ptr, ae.ptr,
                                     stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* heun_mean(x, u, x_euler, u2, x_next, dt, v_x, v_u, v_x_next, v_u_next) */
static PyObject *
py_heun_mean(PyObject *module, PyObject *args)
{
    PyObject *x, *u, *xe, *u2, *xn;
    double dt_, vx, vu, vxn, vun;
    if (!PyArg_ParseTuple(args, "OOOOOddddd:heun_mean", &x, &u, &xe, &u2, &xn, &dt_, &vx, &vu,
                          &vxn, &vun))
        return NULL;
    call c;
    if (call_begin(&c, "heun_mean") < 0) return NULL;
    arr ax, au, ae, a2, an;
    if (get_arr(&c, x, "x", WANT_ANY_REAL, -1, 0, &ax) < 0 ||
        get_arr(&c, u, "u", ax.dtype, ax.numel, 0, &au) < 0 ||
        get_arr(&c, xe, "x_euler", ax.dtype, ax.numel, 0, &ae) < 0 ||
        get_arr(&c, u2, "u2", ax.dtype, ax.numel, 0, &a2) < 0 ||
        get_arr(&c, xn, "x_next", ax.dtype, ax.numel, 0, &an) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_heun_mean(ax.dtype, dt_, vx, vu, vxn, vun, ax.numel, ax.ptr, au.ptr,
                                  ae.ptr, a2.ptr, an.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- pretraining -------------------------------------------------------------------------- */

/* pretrain_batch(data, cond_data, index, coefs, target_param, seed, noise_stream, xt, target,
 * cond, B, D, C): coefs float64 [B, 5] (alpha, sigma, dalpha, dsigma, alpha_bar) */
static PyObject *
py_pretrain_batch(PyObject *module, PyObject *args)
{
    PyObject *data, *cdata, *index, *coefs, *xt, *target, *cond;
    int target_param;
    unsigned long long seed, noise_stream;
    long long B, D, C;
    if (!PyArg_ParseTuple(args, "OOOOiKKOOOLLL:pretrain_batch", &data, &cdata, &index, &coefs,
                          &target_param, &seed, &noise_stream, &xt, &target, &cond, &B, &D, &C))
        return NULL;
    if (target_param < 0 || target_param > 3) {
        PyErr_SetString(PyExc_ValueError, "pretrain_batch(): target_param must be 0..3");
        return NULL;
    }
    call c;
    if (call_begin(&c, "pretrain_batch") < 0) return NULL;
    arr ad, acd, ai, ac, ax, at, aco;
    if (get_arr(&c, data, "data", WANT_ANY_REAL, D, 0, &ad) < 0) return call_fail(&c);
    int dt = ad.dtype;
    if (get_arr(&c, cdata, "cond_data", dt, C, C == 0, &acd) < 0 ||
        get_arr(&c, index, "index", RSM_I64, B, 0, &ai) < 0 ||
        get_arr(&c, coefs, "coefs", RSM_F64, 5 * B, 0, &ac) < 0 ||
        get_arr(&c, xt, "xt", dt, B * D, 0, &ax) < 0 ||
        get_arr(&c, target, "target", dt, B * D, 0, &at) < 0 ||
        get_arr(&c, cond, "cond", dt, B * C, C == 0, &aco) < 0)
        return call_fail(&c);
    /* index values are trusted to be < the data rows: they come from rsm's own Philox draws */
    LAUNCH(&c, rsm_cuda_pretrain_batch(dt, B, D, C, ad.ptr, acd.ptr, (const int64_t *)ai.ptr,
                                       ac.ptr, target_param, seed, noise_stream, ax.ptr, at.ptr,
                                       aco.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* mse_cotangent(pred, target, work): work float64 >= 257; work[0] = sum of squares */
static PyObject *
py_mse_cotangent(PyObject *module, PyObject *args)
{
    PyObject *pred, *target, *work;
    if (!PyArg_ParseTuple(args, "OOO:mse_cotangent", &pred, &target, &work)) return NULL;
    call c;
    if (call_begin(&c, "mse_cotangent") < 0) return NULL;
    arr ap, at, aw;
    if (get_arr(&c, pred, "pred", WANT_ANY_REAL, -1, 0, &ap) < 0 ||
        get_arr(&c, target, "target", ap.dtype, ap.numel, 0, &at) < 0 ||
        get_arr(&c, work, "work", RSM_F64, 257, 0, &aw) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_mse_cotangent(ap.dtype, ap.numel, ap.ptr, at.ptr, (double *)aw.ptr,
                                      stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- objective ---------------------------------------------------------------------------- */

/* objective(form, anchor_old, linear_only, mean_over_dims, normalizer, rows, dim, coef, u, u_old,
 * u_ref, psi, noise, cotangent, row_loss, kl_row, log_ratio, active) */
static PyObject *
py_objective(PyObject *module, PyObject *args)
{
    int form, anchor_old, linear_only, mean_over_dims;
    double normalizer;
    long long rows, dim;
    PyObject *coef, *u, *uo, *ur, *psi, *noise, *cot, *rl, *kl, *lr, *act;
    if (!PyArg_ParseTuple(args, "ipppdLLOOOOOOOOOOO:objective", &form, &anchor_old, &linear_only,
                          &mean_over_dims, &normalizer, &rows, &dim, &coef, &u, &uo, &ur, &psi,
                          &noise, &cot, &rl, &kl, &lr, &act))
        return NULL;
    call c;
    if (call_begin(&c, "objective") < 0) return NULL;
    const int64_t n = rows * dim;
    arr ac, au, aou, aru, aps, an, ag, arl, akl, alr, aa;
    if (get_arr(&c, u, "u", WANT_ANY_REAL, n, 0, &au) < 0) return call_fail(&c);
    int dt = au.dtype;
    if (get_arr(&c, coef, "coef", RSM_F64, 14 * rows, 0, &ac) < 0 ||
        get_arr(&c, uo, "u_old", dt, n, 1, &aou) < 0 ||
        get_arr(&c, ur, "u_ref", dt, n, 1, &aru) < 0 ||
        get_arr(&c, psi, "psi", dt, n, 1, &aps) < 0 ||
        get_arr(&c, noise, "noise", dt, n, 1, &an) < 0 ||
        get_arr(&c, cot, "cotangent", dt, n, 0, &ag) < 0 ||
        get_arr(&c, rl, "row_loss", RSM_F64, rows, 0, &arl) < 0 ||
        get_arr(&c, kl, "kl_row", RSM_F64, rows, 0, &akl) < 0 ||
        get_arr(&c, lr, "log_ratio", RSM_F64, rows, 1, &alr) < 0 ||
        get_arr(&c, act, "active", RSM_U8, rows, 0, &aa) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_objective(dt, form, anchor_old, linear_only, mean_over_dims, normalizer,
                                  rows, dim, ac.ptr, au.ptr, aou.ptr, aru.ptr, aps.ptr, an.ptr,
                                  ag.ptr, (double *)arl.ptr, (double *)akl.ptr, (double *)alr.ptr,
                                  (uint8_t *)aa.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- AdamW -------------------------------------------------------------------------------- */

/* grad_norm(grads, norm, work): norm float64 [1], work float64 [>= 1024] */
static PyObject *
py_grad_norm(PyObject *module, PyObject *args)
{
    PyObject *grads, *norm, *work;
    if (!PyArg_ParseTuple(args, "OOO:grad_norm", &grads, &norm, &work)) return NULL;
    call c;
    if (call_begin(&c, "grad_norm") < 0) return NULL;
    arr ag, an, aw;
    if (get_arr(&c, grads, "grads", WANT_ANY_REAL, -1, 0, &ag) < 0 ||
        get_arr(&c, norm, "norm", RSM_F64, 1, 0, &an) < 0 ||
        get_arr(&c, work, "work", RSM_F64, rsm_cuda_grad_norm_work(ag.numel), 0, &aw) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_grad_norm(ag.dtype, ag.numel, ag.ptr, (double *)an.ptr, (double *)aw.ptr,
                                  stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* adamw_update(consts (10 floats), max_grad_norm, norm, params, grads, m, v, ema or None) */
static PyObject *
py_adamw_update(PyObject *module, PyObject *args)
{
    PyObject *consts, *norm, *params, *grads, *m, *v, *ema;
    double max_norm;
    if (!PyArg_ParseTuple(args, "OdOOOOOO:adamw_update", &consts, &max_norm, &norm, &params,
                          &grads, &m, &v, &ema))
        return NULL;
    double k[10];
    if (!PyTuple_Check(consts) || PyTuple_GET_SIZE(consts) != 10) {
        PyErr_SetString(PyExc_TypeError, "adamw_update(): consts must be a tuple of 10 floats");
        return NULL;
    }
    for (int i = 0; i < 10; i++) {
        k[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(consts, i));
        if (PyErr_Occurred()) return NULL;
    }
    call c;
    if (call_begin(&c, "adamw_update") < 0) return NULL;
    arr an, ap, ag, am, av, ae;
    if (get_arr(&c, params, "params", WANT_ANY_REAL, -1, 0, &ap) < 0) return call_fail(&c);
    int dt = ap.dtype;
    if (get_arr(&c, norm, "norm", RSM_F64, 1, 0, &an) < 0 ||
        get_arr(&c, grads, "grads", dt, ap.numel, 0, &ag) < 0 ||
        get_arr(&c, m, "m", dt, ap.numel, 0, &am) < 0 ||
        get_arr(&c, v, "v", dt, ap.numel, 0, &av) < 0 ||
        get_arr(&c, ema, "ema", dt, ap.numel, 1, &ae) < 0)
        return call_fail(&c);
    LAUNCH(&c, rsm_cuda_adamw_update(dt, ap.numel, k, max_norm, (const double *)an.ptr, ap.ptr,
                                     ag.ptr, am.ptr, av.ptr, ae.ptr, stream_));
    return call_end(&c, Py_NewRef(Py_None));
}

/* ---- the backend table for the C loops (kernels/backend_cuda.h) ---------------------------- */

/* backend(device) -> capsule "rsm._cuda.backend" holding the const rsm_backend * of cuda:device
 * (created on first use, kept for the process): what the C loops of rsm._C run on. */
static PyObject *
py_backend(PyObject *module, PyObject *arg)
{
    int device = PyLong_AsLong(arg);
    if (device == -1 && PyErr_Occurred()) return NULL;
    const rsm_dlpack_api *api = dlpack_api();
    if (api == NULL) return NULL;
    const rsm_cuda_host_api host = {api->fail, api->path_coef_at, api->path_native_param};
    const rsm_backend *be = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rsm_cuda_backend_get(device, &host, &be);
    Py_END_ALLOW_THREADS
    if (rc != 0) return raise_cuda("backend");
    return PyCapsule_New((void *)be, RSM_CUDA_BACKEND_CAPSULE, NULL);
}

/* backend_call(device, dtype, name, args) -> float: op `name` of the CUDA backend table on
 * cuda:device in precision dtype (0 float32, 1 float64), for the device parity tests. Each of
 * args is None (NULL), an int, a float, a CUDA array or (array, offset) (a device pointer), or a
 * host buffer (bytes, bytearray, a numpy array: a host pointer, for the op's structs and host
 * outputs). Returns the op's double, or its rsm_status; waits for the device. */
static PyObject *
py_backend_call(PyObject *module, PyObject *args)
{
    int device, dtype;
    const char *name;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "iisO!:backend_call", &device, &dtype, &name, &PyTuple_Type, &list))
        return NULL;
    enum { MAX_ARGS = 24 };
    const Py_ssize_t n = PyTuple_GET_SIZE(list);
    if (n > MAX_ARGS) {
        PyErr_Format(PyExc_ValueError, "backend_call(): at most %d arguments", MAX_ARGS);
        return NULL;
    }
    PyObject *be_capsule = py_backend(module, PyTuple_GET_ITEM(args, 0));
    if (be_capsule == NULL) return NULL;
    const rsm_backend *be = (const rsm_backend *)PyCapsule_GetPointer(be_capsule,
                                                                      RSM_CUDA_BACKEND_CAPSULE);
    Py_DECREF(be_capsule); /* the backend lives for the process */
    if (be == NULL) return NULL;
    call c;
    if (call_begin(&c, "backend_call") < 0) return NULL;
    c.device = device;
    rsm_cuda_arg cargs[MAX_ARGS];
    Py_buffer bufs[MAX_ARGS];
    int nbufs = 0;
    memset(cargs, 0, sizeof(cargs));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(list, i);
        char argname[32];
        snprintf(argname, sizeof(argname), "args[%zd]", i);
        if (o == Py_None) continue;
        if (PyLong_Check(o)) {
            cargs[i].i = PyLong_AsLongLong(o);
            cargs[i].d = (double)cargs[i].i;
        } else if (PyFloat_Check(o)) {
            cargs[i].d = PyFloat_AsDouble(o);
        } else if (PyObject_CheckBuffer(o) &&
                   PyObject_GetBuffer(o, &bufs[nbufs], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
            cargs[i].ptr = bufs[nbufs++].buf;
        } else {
            PyErr_Clear();
            arr a;
            if (get_arr(&c, o, argname, WANT_ANY, -1, 0, &a) < 0) break;
            cargs[i].ptr = a.ptr;
        }
        if (PyErr_Occurred()) break;
    }
    double ret = 0.0;
    int rc = -1;
    if (!PyErr_Occurred()) {
        Py_BEGIN_ALLOW_THREADS
        rc = rsm_cuda_set_device(device);
        if (rc == 0) rc = rsm_cuda_backend_call(be, dtype, name, cargs, (int)n, &ret);
        if (rc == 0) rc = rsm_cuda_stream_synchronize(device, NULL);
        Py_END_ALLOW_THREADS
        if (rc != 0) raise_cuda("backend_call");
    }
    for (int k = 0; k < nbufs; k++) PyBuffer_Release(&bufs[k]);
    if (PyErr_Occurred()) return call_fail(&c);
    /* a failure the op recorded (be->check): the loops would see it as their status */
    if (be->check(be) != RSM_OK) {
        PyErr_Format(PyExc_RuntimeError, "backend_call(%s): %s", name, g_api->last_error());
        return call_fail(&c);
    }
    return call_end(&c, PyFloat_FromDouble(ret));
}

static PyMethodDef rsm_cuda_methods[] = {
    {"device_count", py_device_count, METH_NOARGS,
     "device_count() -> (count, reason): visible CUDA devices; reason says why there are none."},
    {"runtime_version", py_runtime_version, METH_NOARGS,
     "runtime_version() -> int: the CUDA runtime version rsm was built with (e.g. 13000)."},
    {"stream", py_stream, METH_O, "stream(device) -> int: rsm's stream (cudaStream_t) on device"},
    {"synchronize", py_synchronize, METH_O, "synchronize(device): wait for rsm's stream"},
    {"export_sync", py_export_sync, METH_VARARGS,
     "export_sync(device, consumer_stream): the consumer's stream waits for rsm's work"},
    {"empty", py_empty, METH_VARARGS,
     "empty(shape, dtype, device) -> DLPack capsule of device memory (caching allocator)"},
    {"memory_stats", py_memory_stats, METH_O, "memory_stats(device) -> dict"},
    {"empty_cache", py_empty_cache, METH_O, "empty_cache(device): free cached blocks"},
    {"set_matmul", py_set_matmul, METH_O,
     "set_matmul(mode): float32 matrix products 'ieee' (default), 'tf32' or 'bf16'"},
    {"matmul", py_get_matmul, METH_NOARGS, "matmul() -> 'ieee', 'tf32' or 'bf16'"},
    {"backend_call", py_backend_call, METH_VARARGS,
     "backend_call(device, dtype, name, args) -> float: one op of the CUDA backend table (tests)"},
    {"backend", py_backend, METH_O,
     "backend(device) -> capsule of the CUDA backend table (csrc/backend.h) for the C loops"},
    {"copy", py_copy, METH_VARARGS, "copy(dst, src): host<->device or device->device"},
    {"zero", py_zero, METH_VARARGS, "zero(dst): fill a real device array with 0"},
    {"fill_normal", py_fill_normal, METH_VARARGS, "fill_normal(out, seed, stream_id, offset=0)"},
    {"fill_u32", py_fill_u32, METH_VARARGS, "fill_u32(out, seed, stream_id, offset=0)"},
    {"silu_forward", py_silu_forward, METH_VARARGS, "silu_forward(x, y)"},
    {"silu_backward", py_silu_backward, METH_VARARGS, "silu_backward(dy, x, dx)"},
    {"ema", py_ema, METH_VARARGS, "ema(ema, params, decay)"},
    {"mlp_sizes", py_mlp_sizes, METH_VARARGS, "mlp_sizes(cfg, rows) -> (acts, scratch) numels"},
    {"mlp_forward", py_mlp_forward, METH_VARARGS,
     "mlp_forward(cfg, params, n, x, t, cond, out, acts)"},
    {"mlp_backward", py_mlp_backward, METH_VARARGS,
     "mlp_backward(cfg, params, n, acts, scratch, dout, dparams, dx)"},
    {"sampler_step", py_sampler_step, METH_VARARGS,
     "sampler_step(x, u, x_next, mean, noise, log_prob, A, K, std, stochastic, seed, stream_id, "
     "rows, dim)"},
    {"transition_log_prob", py_transition_log_prob, METH_VARARGS,
     "transition_log_prob(x, u, x_next, log_prob, mean, A, K, std, rows, dim)"},
    {"heun_predict", py_heun_predict, METH_VARARGS, "heun_predict(x, u, x_euler, dt, v_x, v_u)"},
    {"heun_mean", py_heun_mean, METH_VARARGS,
     "heun_mean(x, u, x_euler, u2, x_next, dt, v_x, v_u, v_x_next, v_u_next)"},
    {"pretrain_batch", py_pretrain_batch, METH_VARARGS,
     "pretrain_batch(data, cond_data, index, coefs, target_param, seed, noise_stream, xt, target, "
     "cond, B, D, C)"},
    {"mse_cotangent", py_mse_cotangent, METH_VARARGS, "mse_cotangent(pred, target, work)"},
    {"objective", py_objective, METH_VARARGS,
     "objective(form, anchor_old, linear_only, mean_over_dims, normalizer, rows, dim, coef, u, "
     "u_old, u_ref, psi, noise, cotangent, row_loss, kl_row, log_ratio, active)"},
    {"grad_norm", py_grad_norm, METH_VARARGS, "grad_norm(grads, norm, work)"},
    {"adamw_update", py_adamw_update, METH_VARARGS,
     "adamw_update(consts, max_grad_norm, norm, params, grads, m, v, ema)"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot rsm_cuda_slots[] = {
    {0, NULL},
};

static PyModuleDef rsm_cuda_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rsm._cuda",
    .m_doc = "rsm's CUDA code: device memory, streams and kernels (python/rsm/cuda.py wraps it).",
    .m_size = 0,
    .m_methods = rsm_cuda_methods,
    .m_slots = rsm_cuda_slots,
};

PyMODINIT_FUNC
PyInit__cuda(void)
{
    return PyModuleDef_Init(&rsm_cuda_module_def);
}
