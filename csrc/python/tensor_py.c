/* tensor_py.c: the rsm.Tensor type and DLPack exchange (producer and consumer).
 *
 * An rsm.Tensor is an rsm_tensor view plus whatever keeps its memory alive; exactly one of:
 *   own_data  an rsm_malloc'd buffer (empty/zeros/copies), freed on dealloc;
 *   managed   an imported DLManagedTensor(Versioned), whose deleter is called on dealloc, so the
 *             producer lives exactly as long as the view;
 *   base      a Python object owning the memory (rsm_py_tensor_view, e.g. a model's parameters).
 *
 * The type is not GC-tracked: `base` is an object of the compute layer (a model, a buffer owner)
 * that never refers back to the views it hands out, and `managed` is owned by another library, so
 * a tensor cannot be part of a reference cycle in practice. Weak references are supported.
 *
 * DLPack follows the Python specification (DLPack 1.1, data-api "__dlpack__" protocol):
 *   export: one malloc holds the managed struct, shape and strides; manager_ctx holds a new
 *           reference to the exported rsm.Tensor; the deleter takes the GIL and is a no-op once
 *           the interpreter is finalised; the capsule destructor only calls the deleter when no
 *           consumer renamed the capsule to "used_dltensor[_versioned]".
 *   import: the consumer renames the capsule to "used_..." as soon as it owns the managed
 *           tensor, and from then on every path ends in exactly one deleter call.
 */
#include "binding.h"

#include <stdlib.h>
#include <string.h>

#include "structmember.h"

#define RSM_CAPSULE_LEGACY "dltensor"
#define RSM_CAPSULE_VERSIONED "dltensor_versioned"
#define RSM_CAPSULE_LEGACY_USED "used_dltensor"
#define RSM_CAPSULE_VERSIONED_USED "used_dltensor_versioned"

/* copy= keyword of __dlpack__ / from_dlpack: None, False, True. */
enum { RSM_COPY_IF_NEEDED = -1, RSM_COPY_NEVER = 0, RSM_COPY_ALWAYS = 1 };

/* ---- small helpers ------------------------------------------------------------------------ */

static PyTypeObject *
tensor_type_of(PyObject *module)
{
    return rsm_state(module)->tensor_type;
}

/* Save and restore the pending exception around code that may run Python (deleters, capsule
 * destructors), which must neither clobber nor leak an exception being propagated. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} rsm_saved_error;

static void
rsm_error_save(rsm_saved_error *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    saved->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&saved->type, &saved->value, &saved->tb);
#endif
}

static void
rsm_error_restore(rsm_saved_error *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved->exc);
#else
    PyErr_Restore(saved->type, saved->value, saved->tb);
#endif
}

/* Call the deleter of a managed tensor we own (either layout); NULL deleters are allowed. */
static void
rsm_managed_delete(void *managed, int versioned)
{
    if (managed == NULL) return;
    if (versioned) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)managed;
        if (m->deleter) m->deleter(m);
    } else {
        DLManagedTensor *m = (DLManagedTensor *)managed;
        if (m->deleter) m->deleter(m);
    }
}

/* Memory the CPU can read directly: imported as a CPU tensor (numpy does the same). */
static int
rsm_device_is_host(DLDevice device)
{
    return device.device_type == kDLCPU || device.device_type == kDLCUDAHost ||
           device.device_type == kDLROCMHost || device.device_type == kDLCUDAManaged;
}

static void
rsm_device_describe(DLDevice device, char *buf, size_t size)
{
    switch ((int)device.device_type) {
    case kDLCPU: snprintf(buf, size, "cpu"); break;
    case kDLCUDA: snprintf(buf, size, "cuda:%d", (int)device.device_id); break;
    case kDLROCM: snprintf(buf, size, "rocm:%d", (int)device.device_id); break;
    case kDLMetal: snprintf(buf, size, "metal:%d", (int)device.device_id); break;
    default:
        snprintf(buf, size, "dlpack_device(%d, %d)", (int)device.device_type,
                 (int)device.device_id);
    }
}

/* "complex64", "float8", "int4x2" ...: names the dtype of a DLPack tensor in error messages,
 * including those rsm cannot hold. */
static void
rsm_dl_dtype_describe(DLDataType dl, char *buf, size_t size)
{
    static const char *const codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex",
                                        "bool"};
    const char *code = dl.code < sizeof(codes) / sizeof(codes[0]) ? codes[dl.code] : "code";
    if (dl.lanes != 1)
        snprintf(buf, size, "%s%ux%u", code, (unsigned)dl.bits, (unsigned)dl.lanes);
    else
        snprintf(buf, size, "%s%u", code, (unsigned)dl.bits);
}

static int
rsm_tensor_is_readonly(const rsm_py_tensor *self)
{
    return (self->t.flags & RSM_TENSOR_READ_ONLY) != 0;
}

/* A bare tensor object (no memory yet); fields are zeroed by tp_alloc. */
static rsm_py_tensor *
rsm_tensor_alloc(PyObject *module)
{
    PyTypeObject *type = tensor_type_of(module);
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    return (rsm_py_tensor *)alloc(type, 0);
}

/* The row-major position `flat` of a CPU tensor, as an element address (strided tensors too). */
static const char *
rsm_tensor_elem(const rsm_tensor *t, int64_t flat)
{
    size_t itemsize = (size_t)t->dtype.bits / 8;
    const char *p = (const char *)rsm_tensor_ptr(t);
    for (int32_t d = t->ndim - 1; d >= 0; d--) {
        int64_t i = flat % t->shape[d];
        flat /= t->shape[d];
        p += (ptrdiff_t)(i * t->strides[d]) * (ptrdiff_t)itemsize;
    }
    return p;
}

static float
rsm_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign; /* +-0 */
    } else {
        /* subnormal half: normalise the mantissa into a float exponent */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* One element as a Python float/int/bool (for __repr__). */
static PyObject *
rsm_tensor_item(const rsm_tensor *t, int64_t flat)
{
    const char *p = rsm_tensor_elem(t, flat);
    switch (rsm_tensor_dtype(t)) {
    case RSM_F32: { float v; memcpy(&v, p, sizeof(v)); return PyFloat_FromDouble(v); }
    case RSM_F64: { double v; memcpy(&v, p, sizeof(v)); return PyFloat_FromDouble(v); }
    case RSM_F16: { uint16_t v; memcpy(&v, p, sizeof(v)); return PyFloat_FromDouble(rsm_half_to_float(v)); }
    case RSM_BF16: {
        uint16_t v;
        memcpy(&v, p, sizeof(v));
        uint32_t bits = (uint32_t)v << 16;
        float f;
        memcpy(&f, &bits, sizeof(f));
        return PyFloat_FromDouble(f);
    }
    case RSM_I64: { int64_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromLongLong(v); }
    case RSM_I32: { int32_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromLong(v); }
    case RSM_I16: { int16_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromLong(v); }
    case RSM_I8: { int8_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromLong(v); }
    case RSM_U64: { uint64_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromUnsignedLongLong(v); }
    case RSM_U32: { uint32_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromUnsignedLong(v); }
    case RSM_U16: { uint16_t v; memcpy(&v, p, sizeof(v)); return PyLong_FromUnsignedLong(v); }
    case RSM_U8: return PyLong_FromUnsignedLong(*(const uint8_t *)p);
    case RSM_BOOL: return PyBool_FromLong(*(const uint8_t *)p != 0);
    default: break;
    }
    Py_RETURN_NONE;
}

/* ---- construction ------------------------------------------------------------------------- */

rsm_py_tensor *
rsm_py_tensor_new(PyObject *module, rsm_dtype dtype, int32_t ndim, const int64_t *shape, int zero)
{
    if ((int)dtype < 0 || dtype >= RSM_DTYPE_COUNT) {
        PyErr_Format(PyExc_ValueError, "empty(): invalid dtype %d", (int)dtype);
        return NULL;
    }
    rsm_tensor t;
    rsm_status status = rsm_tensor_init_contiguous(&t, dtype, ndim, shape);
    if (status != RSM_OK) return (rsm_py_tensor *)rsm_py_raise(status, "empty");
    /* numel * itemsize must fit a size_t (and Py_ssize_t, for numpy's sake). */
    size_t bytes = rsm_dtype_size(dtype);
    for (int32_t i = 0; i < ndim; i++) {
        if (__builtin_mul_overflow(bytes, (size_t)shape[i], &bytes) ||
            bytes > (size_t)PY_SSIZE_T_MAX) {
            return (rsm_py_tensor *)rsm_py_raisef(PyExc_MemoryError, "empty",
                                                  "a tensor of this shape does not fit in memory");
        }
    }
    rsm_py_tensor *self = rsm_tensor_alloc(module);
    if (self == NULL) return NULL;
    self->t = t;
    self->own_data = zero ? rsm_calloc(bytes) : rsm_malloc(bytes);
    if (self->own_data == NULL) {
        Py_DECREF(self);
        return (rsm_py_tensor *)PyErr_NoMemory();
    }
    self->t.data = self->own_data;
    return self;
}

rsm_py_tensor *
rsm_py_tensor_view(PyObject *module, PyObject *base, void *data, rsm_dtype dtype, int32_t ndim,
                   const int64_t *shape, int readonly)
{
    rsm_tensor t;
    rsm_status status = rsm_tensor_init_contiguous(&t, dtype, ndim, shape);
    if (status != RSM_OK) return (rsm_py_tensor *)rsm_py_raise(status, "tensor_view");
    rsm_py_tensor *self = rsm_tensor_alloc(module);
    if (self == NULL) return NULL;
    self->t = t;
    self->t.data = data;
    if (readonly) self->t.flags |= RSM_TENSOR_READ_ONLY;
    self->base = Py_XNewRef(base);
    return self;
}

/* An owned, writable, C-contiguous copy of `src` (any strides). The copy runs without the GIL:
 * `src` is kept alive by the caller's reference. */
static rsm_py_tensor *
rsm_tensor_copy(PyObject *module, const rsm_py_tensor *src)
{
    if (src->t.device.device_type != kDLCPU) {
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_BufferError, "copy",
                                              "the tensor is on the GPU: copy it with rsm.cuda "
                                              "(to_host / to_device), not on the CPU");
    }
    rsm_py_tensor *dst =
        rsm_py_tensor_new(module, rsm_tensor_dtype(&src->t), src->t.ndim, src->t.shape, 0);
    if (dst == NULL) return NULL;
    const rsm_tensor *s = &src->t;
    void *d = rsm_py_tensor_data(dst);
    Py_BEGIN_ALLOW_THREADS
    rsm_tensor_copy_to_contiguous(s, d);
    Py_END_ALLOW_THREADS
    return dst;
}

static void
rsm_tensor_dealloc(rsm_py_tensor *self)
{
    PyTypeObject *type = Py_TYPE(self);
    if (self->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)self);
    if (self->managed != NULL) {
        /* The producer's deleter may run Python code (it takes the GIL, drops references). */
        rsm_saved_error saved;
        rsm_error_save(&saved);
        void *managed = self->managed;
        self->managed = NULL;
        rsm_managed_delete(managed, self->managed_versioned);
        rsm_error_restore(&saved);
    }
    if (self->own_data != NULL) {
        rsm_free(self->own_data);
        self->own_data = NULL;
    }
    Py_CLEAR(self->base);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type); /* instances of heap types own a reference to their type */
}

/* ---- DLPack export (__dlpack__) ----------------------------------------------------------- */

/* The exported DLManagedTensor[Versioned], its shape and its strides share one malloc; the
 * header size is rounded up so the int64 arrays that follow it are aligned. */
static size_t
rsm_export_header(int versioned)
{
    size_t header = versioned ? sizeof(DLManagedTensorVersioned) : sizeof(DLManagedTensor);
    return (header + 15) & ~(size_t)15;
}

static void
rsm_export_deleter_common(void *managed, PyObject *owner)
{
    /* After finalisation there is no interpreter to drop the reference in: leak instead of
     * crashing (the Python specification asks exactly this). */
    if (!Py_IsInitialized()) return;
    PyGILState_STATE gil = PyGILState_Ensure();
    free(managed);
    Py_XDECREF(owner);
    PyGILState_Release(gil);
}

static void
rsm_export_deleter_versioned(DLManagedTensorVersioned *self)
{
    rsm_export_deleter_common(self, (PyObject *)self->manager_ctx);
}

static void
rsm_export_deleter_legacy(DLManagedTensor *self)
{
    rsm_export_deleter_common(self, (PyObject *)self->manager_ctx);
}

/* Capsule destructors: a consumer that took ownership renamed the capsule, and then the deleter
 * is its business; otherwise (the capsule was never consumed) we delete here. */
static void
rsm_capsule_destructor_common(PyObject *capsule, int versioned)
{
    if (PyCapsule_IsValid(capsule, versioned ? RSM_CAPSULE_VERSIONED_USED
                                             : RSM_CAPSULE_LEGACY_USED)) {
        return;
    }
    rsm_saved_error saved;
    rsm_error_save(&saved);
    void *managed = PyCapsule_GetPointer(capsule, versioned ? RSM_CAPSULE_VERSIONED
                                                            : RSM_CAPSULE_LEGACY);
    if (managed == NULL) {
        PyErr_WriteUnraisable(capsule);
    } else {
        rsm_managed_delete(managed, versioned);
        if (PyErr_Occurred()) PyErr_WriteUnraisable(capsule);
    }
    rsm_error_restore(&saved);
}

static void
rsm_capsule_destructor_versioned(PyObject *capsule)
{
    rsm_capsule_destructor_common(capsule, 1);
}

static void
rsm_capsule_destructor_legacy(PyObject *capsule)
{
    rsm_capsule_destructor_common(capsule, 0);
}

/* A capsule over `src`: manager_ctx takes a new reference to src. */
static PyObject *
rsm_export_capsule(rsm_py_tensor *src, int versioned, uint64_t flags)
{
    const rsm_tensor *t = &src->t;
    size_t header = rsm_export_header(versioned);
    char *mem = malloc(header + 2 * (size_t)t->ndim * sizeof(int64_t));
    if (mem == NULL) return PyErr_NoMemory();
    int64_t *shape = (int64_t *)(mem + header);
    int64_t *strides = shape + t->ndim;
    memcpy(shape, t->shape, (size_t)t->ndim * sizeof(int64_t));
    memcpy(strides, t->strides, (size_t)t->ndim * sizeof(int64_t));

    DLTensor *dl;
    if (versioned) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)mem;
        m->version.major = DLPACK_MAJOR_VERSION;
        m->version.minor = DLPACK_MINOR_VERSION;
        m->manager_ctx = Py_NewRef((PyObject *)src);
        m->deleter = rsm_export_deleter_versioned;
        m->flags = flags;
        dl = &m->dl_tensor;
    } else {
        DLManagedTensor *m = (DLManagedTensor *)mem;
        m->manager_ctx = Py_NewRef((PyObject *)src);
        m->deleter = rsm_export_deleter_legacy;
        dl = &m->dl_tensor;
    }
    /* On the CPU the first element goes in `data` and byte_offset stays 0 (as numpy does);
     * consumers handle either, and this avoids relying on their byte_offset support. */
    dl->data = rsm_tensor_ptr(t);
    dl->device = t->device;
    dl->ndim = t->ndim;
    dl->dtype = t->dtype;
    dl->shape = shape;
    dl->strides = strides;
    dl->byte_offset = 0;

    PyObject *capsule = versioned
        ? PyCapsule_New(mem, RSM_CAPSULE_VERSIONED, rsm_capsule_destructor_versioned)
        : PyCapsule_New(mem, RSM_CAPSULE_LEGACY, rsm_capsule_destructor_legacy);
    if (capsule == NULL) rsm_managed_delete(mem, versioned);
    return capsule;
}

/* A (int, int) tuple such as max_version or dl_device; -1 on error. */
static int
rsm_parse_int_pair(PyObject *obj, const char *func, const char *name, long *a, long *b)
{
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        rsm_py_raisef(PyExc_TypeError, func, "%s must be None or a tuple of two ints, got %.200s",
                      name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *a = PyLong_AsLong(PyTuple_GET_ITEM(obj, 0));
    if (*a == -1 && PyErr_Occurred()) return -1;
    *b = PyLong_AsLong(PyTuple_GET_ITEM(obj, 1));
    if (*b == -1 && PyErr_Occurred()) return -1;
    return 0;
}

/* copy= keyword: None, True or False (as the array API spells it). */
static int
rsm_parse_copy(PyObject *obj, const char *func, int *mode)
{
    if (obj == Py_None) {
        *mode = RSM_COPY_IF_NEEDED;
    } else if (obj == Py_True) {
        *mode = RSM_COPY_ALWAYS;
    } else if (obj == Py_False) {
        *mode = RSM_COPY_NEVER;
    } else {
        rsm_py_raisef(PyExc_TypeError, func, "copy must be None, True or False, got %.200s",
                      Py_TYPE(obj)->tp_name);
        return -1;
    }
    return 0;
}

static int rsm_cuda_export_sync(const rsm_py_tensor *self, PyObject *stream, const char *func);

static PyObject *
rsm_tensor_dlpack(rsm_py_tensor *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", kwlist, &stream,
                                     &max_version, &dl_device, &copy)) {
        return NULL;
    }
    const char *func = "__dlpack__";
    int copy_mode;
    if (rsm_parse_copy(copy, func, &copy_mode) < 0) return NULL;

    /* Streams order work on a device queue; the CPU has none, so only None makes sense. */
    if (stream != Py_None && self->t.device.device_type == kDLCPU) {
        return rsm_py_raisef(PyExc_ValueError, func,
                             "stream must be None for a CPU tensor, got %.200R", stream);
    }
    if (self->t.device.device_type == kDLCUDA) {
        if (copy_mode == RSM_COPY_ALWAYS)
            return rsm_py_raisef(PyExc_BufferError, func,
                                 "copy=True of a CUDA tensor is not supported: rsm does not copy "
                                 "on export (copy it with rsm.cuda first)");
        if (rsm_cuda_export_sync(self, stream, func) < 0) return NULL;
    }

    int versioned = 0;
    if (max_version != Py_None) {
        long major, minor;
        if (rsm_parse_int_pair(max_version, func, "max_version", &major, &minor) < 0) return NULL;
        versioned = major >= 1;
    }

    if (dl_device != Py_None) {
        long type, id;
        if (rsm_parse_int_pair(dl_device, func, "dl_device", &type, &id) < 0) return NULL;
        if (type != (long)self->t.device.device_type || id != (long)self->t.device.device_id) {
            char own[64];
            rsm_device_describe(self->t.device, own, sizeof(own));
            return rsm_py_raisef(PyExc_BufferError, func,
                                 "cannot export a tensor on %s to dl_device=(%ld, %ld): rsm "
                                 "does not copy between devices",
                                 own, type, id);
        }
    }

    rsm_py_tensor *src = self;
    uint64_t flags = 0;
    if (copy_mode == RSM_COPY_ALWAYS) {
        PyObject *module = rsm_module_of_type(Py_TYPE(self));
        if (module == NULL) return NULL;
        src = rsm_tensor_copy(module, self);
        if (src == NULL) return NULL;
        flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
    } else {
        Py_INCREF(src);
        if (rsm_tensor_is_readonly(self)) {
            /* Only the versioned struct can say "read-only"; a legacy consumer would write to
             * it, so refuse (numpy does the same). */
            if (!versioned) {
                Py_DECREF(src);
                return rsm_py_raisef(PyExc_BufferError, func,
                                     "cannot export a read-only tensor as a legacy DLPack "
                                     "capsule, which cannot mark it read-only; pass "
                                     "max_version=(1, 0) or newer, or copy=True");
            }
            flags |= DLPACK_FLAG_BITMASK_READ_ONLY;
        }
    }
    PyObject *capsule = rsm_export_capsule(src, versioned, flags);
    Py_DECREF(src);
    return capsule;
}

static PyObject *
rsm_tensor_dlpack_device(rsm_py_tensor *self, PyObject *unused)
{
    return Py_BuildValue("(ii)", (int)self->t.device.device_type, (int)self->t.device.device_id);
}

/* ---- CUDA hooks ---------------------------------------------------------------------------- */

/* rsm._C never links CUDA: device tensors only pass through it (views of memory owned by a
 * DLPack producer or by rsm._cuda's caching allocator). What needs the device (streams) is asked
 * of rsm._cuda through Python. */

/* rsm's stream on cuda:`device` as a new int object, or NULL with `exc` set ("subject is on
 * cuda:N, but CUDA is not available: why"). */
static PyObject *
rsm_cuda_stream_of(int device, const char *func, const char *subject, PyObject *exc)
{
    PyObject *cuda = PyImport_ImportModule("rsm._cuda");
    PyObject *stream = NULL;
    if (cuda != NULL) {
        PyObject *count = PyObject_CallMethod(cuda, "device_count", NULL);
        if (count != NULL && PyTuple_Check(count) && PyTuple_GET_SIZE(count) == 2) {
            long n = PyLong_AsLong(PyTuple_GET_ITEM(count, 0));
            if (n > device) {
                stream = PyObject_CallMethod(cuda, "stream", "i", device);
            } else if (!PyErr_Occurred()) {
                const char *why = PyUnicode_AsUTF8(PyTuple_GET_ITEM(count, 1));
                rsm_py_raisef(exc, func, "%s is on cuda:%d, but CUDA is not available here: %s",
                              subject, device, why && *why ? why : "no such device");
            }
        }
        Py_XDECREF(count);
        Py_DECREF(cuda);
        return stream;
    }
    /* rsm._cuda missing: a CPU-only build (RSM_CUDA=0, no nvcc) or an unloadable one */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *why = text ? PyUnicode_AsUTF8(text) : NULL;
    if (why == NULL) PyErr_Clear();
    rsm_py_raisef(exc, func,
                  "%s is on cuda:%d, but this build of rsm has no CUDA backend (rsm._cuda: %s); "
                  "move it to the CPU first (e.g. .cpu())",
                  subject, device, why ? why : "not built");
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return NULL;
}

/* DLPack producer side: make the consumer's stream wait for rsm's work on the tensor's device.
 * stream None is the legacy default stream (1), -1 means "no synchronisation" (DLPack spec). */
static int
rsm_cuda_export_sync(const rsm_py_tensor *self, PyObject *stream, const char *func)
{
    long long consumer = 1;
    if (stream != Py_None) {
        consumer = PyLong_AsLongLong(stream);
        if (consumer == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            rsm_py_raisef(PyExc_TypeError, func,
                          "stream must be None or an int (a cudaStream_t, 1, 2 or -1), got %.200s",
                          Py_TYPE(stream)->tp_name);
            return -1;
        }
        if (consumer == -1) return 0;
        if (consumer == 0) {
            rsm_py_raisef(PyExc_ValueError, func,
                          "stream=0 is ambiguous for CUDA (DLPack): pass 1 (legacy default), 2 "
                          "(per-thread default) or a stream handle");
            return -1;
        }
    }
    PyObject *cuda = PyImport_ImportModule("rsm._cuda");
    if (cuda == NULL) return -1;
    PyObject *r = PyObject_CallMethod(cuda, "export_sync", "in", (int)self->t.device.device_id,
                                      (Py_ssize_t)consumer);
    Py_DECREF(cuda);
    if (r == NULL) return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- DLPack import ------------------------------------------------------------------------ */

/* Take ownership of the managed tensor in `capsule` and wrap it (zero-copy). `subject` names the
 * array in messages ("obj", or an argument name); non-host devices raise `device_exc`.
 * *copied is set when the producer flagged the data as a private copy. */
static rsm_py_tensor *
rsm_import_capsule(PyObject *module, PyObject *capsule, const char *func, const char *subject,
                   PyObject *device_exc, int allow_device, int *copied)
{
    *copied = 0;
    int versioned;
    if (PyCapsule_IsValid(capsule, RSM_CAPSULE_VERSIONED)) {
        versioned = 1;
    } else if (PyCapsule_IsValid(capsule, RSM_CAPSULE_LEGACY)) {
        versioned = 0;
    } else if (PyCapsule_CheckExact(capsule) &&
               (PyCapsule_IsValid(capsule, RSM_CAPSULE_VERSIONED_USED) ||
                PyCapsule_IsValid(capsule, RSM_CAPSULE_LEGACY_USED))) {
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_BufferError, func,
                                              "this DLPack capsule was already consumed");
    } else {
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_TypeError, func,
            "%s.__dlpack__() returned %.200s, expected a \"dltensor\" or "
            "\"dltensor_versioned\" capsule",
            subject, Py_TYPE(capsule)->tp_name);
    }
    void *managed = PyCapsule_GetPointer(capsule, versioned ? RSM_CAPSULE_VERSIONED
                                                            : RSM_CAPSULE_LEGACY);
    if (managed == NULL) return NULL;
    /* From here on we own the managed tensor: the rename tells the capsule's destructor so, and
     * every error path below calls the deleter itself. */
    if (PyCapsule_SetName(capsule, versioned ? RSM_CAPSULE_VERSIONED_USED
                                             : RSM_CAPSULE_LEGACY_USED) < 0) {
        return NULL;
    }

    const DLTensor *dl;
    uint64_t flags = 0;
    if (versioned) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)managed;
        if (m->version.major > DLPACK_MAJOR_VERSION) {
            /* A newer ABI may lay out dl_tensor differently: touch only version and deleter. */
            unsigned major = m->version.major, minor = m->version.minor;
            rsm_managed_delete(managed, 1);
            return (rsm_py_tensor *)rsm_py_raisef(
                PyExc_BufferError, func,
                "%s uses DLPack %u.%u, but rsm supports DLPack %d.x (up to %d.%d)", subject,
                major, minor, DLPACK_MAJOR_VERSION, DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION);
        }
        dl = &m->dl_tensor;
        flags = m->flags;
    } else {
        dl = &((DLManagedTensor *)managed)->dl_tensor;
    }

    rsm_dtype dtype;
    char what[64];
    if (dl->dtype.lanes != 1 || rsm_dtype_from_dl(dl->dtype, &dtype) != RSM_OK ||
        (flags & DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED)) {
        rsm_dl_dtype_describe(dl->dtype, what, sizeof(what));
        rsm_managed_delete(managed, versioned);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_TypeError, func,
            "%s has dtype %s, which rsm cannot hold (supported: float32, float64, float16, "
            "bfloat16, int8/16/32/64, uint8/16/32/64, bool)",
            subject, what);
    }
    const int on_cuda = dl->device.device_type == kDLCUDA;
    if (on_cuda && allow_device) {
        /* a device tensor is only accepted where CUDA works (else it could never be used) */
        PyObject *stream = rsm_cuda_stream_of((int)dl->device.device_id, func, subject, device_exc);
        if (stream == NULL) {
            /* the deleter may run Python: keep the exception across it */
            rsm_saved_error saved;
            rsm_error_save(&saved);
            rsm_managed_delete(managed, versioned);
            rsm_error_restore(&saved);
            return NULL;
        }
        Py_DECREF(stream);
    } else if (!rsm_device_is_host(dl->device)) {
        rsm_device_describe(dl->device, what, sizeof(what));
        rsm_managed_delete(managed, versioned);
        return (rsm_py_tensor *)rsm_py_raisef(
            device_exc, func,
            "%s is on %s; this function runs on the CPU: move it there first (e.g. .cpu(), or "
            "rsm.cuda.to_host)",
            subject, what);
    }
    if (rsm_dl_check(dl) != RSM_OK) { /* NULL pointers, negative or overflowing sizes */
        rsm_managed_delete(managed, versioned);
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_BufferError, func,
                                              "%s is not a valid DLPack tensor: %s", subject,
                                              rsm_last_error());
    }

    rsm_py_tensor *self = rsm_tensor_alloc(module);
    if (self == NULL) {
        rsm_managed_delete(managed, versioned);
        return NULL;
    }
    rsm_tensor *t = &self->t;
    t->data = dl->data;
    if (on_cuda) {
        t->device = dl->device;
    } else {
        t->device.device_type = kDLCPU; /* host-accessible memory is CPU memory to rsm */
        t->device.device_id = 0;
    }
    t->ndim = dl->ndim;
    t->dtype = dl->dtype;
    t->byte_offset = dl->byte_offset;
    int64_t stride = 1;
    for (int32_t i = dl->ndim - 1; i >= 0; i--) {
        t->shape[i] = dl->shape[i];
        /* NULL strides mean compact row-major (DLPack >= 0.6 producers always fill them). */
        t->strides[i] = dl->strides != NULL ? dl->strides[i] : stride;
        stride *= dl->shape[i];
    }
    /* Read-only only travels in the versioned struct. Legacy capsules carry no flag, so they
     * are imported writable, as torch.from_dlpack does: a legacy producer that exports
     * read-only memory (numpy refuses to) is trusting the consumer anyway. */
    if (flags & DLPACK_FLAG_BITMASK_READ_ONLY) t->flags |= RSM_TENSOR_READ_ONLY;
    *copied = (flags & DLPACK_FLAG_BITMASK_IS_COPIED) != 0;
    self->managed = managed;
    self->managed_versioned = versioned;
    return self;
}

/* Look up an attribute that may be missing: 1 found, 0 missing, -1 error. */
static int
rsm_get_optional_attr(PyObject *obj, const char *name, PyObject **out)
{
    *out = PyObject_GetAttrString(obj, name);
    if (*out != NULL) return 1;
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Ask a producer for a capsule: the 1.x protocol first, the pre-1.0 one on TypeError. */
static PyObject *
rsm_call_dlpack(PyObject *dlpack, int copy_mode, PyObject *stream)
{
    PyObject *kwargs = Py_BuildValue("{s:O,s:(ii)}", "stream", stream, "max_version",
                                     DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION);
    if (kwargs == NULL) return NULL;
    if (copy_mode != RSM_COPY_IF_NEEDED &&
        PyDict_SetItemString(kwargs, "copy", copy_mode ? Py_True : Py_False) < 0) {
        Py_DECREF(kwargs);
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) {
        Py_DECREF(kwargs);
        return NULL;
    }
    PyObject *capsule = PyObject_Call(dlpack, empty, kwargs);
    Py_DECREF(kwargs);
    if (capsule == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
        /* An old producer, __dlpack__(self, stream=None) or no arguments at all: it cannot copy
         * on request, so the caller copies itself when copy=True. */
        PyErr_Clear();
        if (stream != Py_None) {
            PyObject *kw = Py_BuildValue("{s:O}", "stream", stream);
            capsule = kw ? PyObject_Call(dlpack, empty, kw) : NULL;
            Py_XDECREF(kw);
        } else {
            capsule = PyObject_Call(dlpack, empty, NULL);
        }
    }
    Py_DECREF(empty);
    return capsule;
}

/* Any DLPack source (rsm.Tensor, producer object, capsule) as an rsm.Tensor (new reference). */
static rsm_py_tensor *
rsm_import(PyObject *module, PyObject *obj, int copy_mode, const char *func, const char *subject,
           PyObject *device_exc, int allow_device)
{
    PyTypeObject *tensor_type = tensor_type_of(module);
    if (PyObject_TypeCheck(obj, tensor_type)) {
        rsm_py_tensor *t = (rsm_py_tensor *)obj;
        if (copy_mode == RSM_COPY_ALWAYS) return rsm_tensor_copy(module, t);
        if (!allow_device && t->t.device.device_type != kDLCPU) {
            char what[64];
            rsm_device_describe(t->t.device, what, sizeof(what));
            return (rsm_py_tensor *)rsm_py_raisef(
                device_exc, func,
                "%s is on %s; this function runs on the CPU: move it there first "
                "(rsm.cuda.to_host)",
                subject, what);
        }
        return (rsm_py_tensor *)Py_NewRef(obj);
    }

    rsm_py_tensor *result;
    int copied = 0;
    if (PyCapsule_CheckExact(obj)) {
        result = rsm_import_capsule(module, obj, func, subject, device_exc, allow_device, &copied);
    } else {
        PyObject *dlpack;
        int found = rsm_get_optional_attr(obj, "__dlpack__", &dlpack);
        if (found < 0) return NULL;
        if (!found) {
            return (rsm_py_tensor *)rsm_py_raisef(
                PyExc_TypeError, func,
                "%s must be an array supporting DLPack (numpy, torch, ...), got %.200s", subject,
                Py_TYPE(obj)->tp_name);
        }
        /* Check the device before asking for a capsule, so an unusable (GPU) tensor is not
         * exported for nothing; producers without __dlpack_device__ are checked on import. */
        PyObject *device_fn, *stream = NULL;
        found = rsm_get_optional_attr(obj, "__dlpack_device__", &device_fn);
        if (found < 0) {
            Py_DECREF(dlpack);
            return NULL;
        }
        if (found) {
            PyObject *device = PyObject_CallNoArgs(device_fn);
            Py_DECREF(device_fn);
            long type = 0, id = 0;
            if (device == NULL ||
                rsm_parse_int_pair(device, func, "__dlpack_device__()", &type, &id) < 0) {
                Py_XDECREF(device);
                Py_DECREF(dlpack);
                return NULL;
            }
            Py_DECREF(device);
            DLDevice dev = {(DLDeviceType)type, (int32_t)id};
            if (dev.device_type == kDLCUDA && allow_device) {
                /* the DLPack stream protocol: the producer orders its pending work before
                 * rsm's stream (the consumer's) */
                stream = rsm_cuda_stream_of((int)id, func, subject, device_exc);
                if (stream == NULL) {
                    Py_DECREF(dlpack);
                    return NULL;
                }
            } else if (!rsm_device_is_host(dev)) {
                char what[64];
                rsm_device_describe(dev, what, sizeof(what));
                Py_DECREF(dlpack);
                return (rsm_py_tensor *)rsm_py_raisef(
                    device_exc, func,
                    "%s is on %s; this function runs on the CPU: move it there first (e.g. "
                    ".cpu(), or rsm.cuda.to_host)",
                    subject, what);
            }
        }
        PyObject *capsule = rsm_call_dlpack(dlpack, copy_mode, stream ? stream : Py_None);
        Py_XDECREF(stream);
        Py_DECREF(dlpack);
        if (capsule == NULL) return NULL;
        result = rsm_import_capsule(module, capsule, func, subject, device_exc, allow_device,
                                    &copied);
        Py_DECREF(capsule); /* renamed on success: its destructor leaves the deleter to us */
    }
    if (result != NULL && copy_mode == RSM_COPY_ALWAYS && !copied) {
        rsm_py_tensor *copy = rsm_tensor_copy(module, result);
        Py_DECREF(result);
        result = copy;
    }
    return result;
}

rsm_py_tensor *
rsm_py_tensor_arg(PyObject *module, PyObject *obj, const char *func, const char *argname,
                  rsm_dtype dtype)
{
    rsm_py_tensor *t = rsm_import(module, obj, RSM_COPY_IF_NEEDED, func, argname,
                                  PyExc_ValueError, 0);
    if (t == NULL) return NULL;
    if (t->t.device.device_type != kDLCPU) {
        char what[64];
        rsm_device_describe(t->t.device, what, sizeof(what));
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_ValueError, func,
            "%s is on %s; this function runs on the CPU: move it there first (rsm.cuda.to_host)",
            argname, what);
    }
    rsm_dtype got = rsm_tensor_dtype(&t->t);
    if (got != dtype) {
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_TypeError, func, "%s has dtype %s, expected %s (convert it first: x.astype(\"%s\") in numpy or JAX, "
            "x.to(torch.%s) in torch, or build the model with dtype=\"%s\")",
            argname, rsm_dtype_name(got), rsm_dtype_name(dtype), rsm_dtype_name(dtype),
            rsm_dtype_name(dtype), rsm_dtype_name(got));
    }
    if (!rsm_tensor_is_contiguous(&t->t)) {
        rsm_py_tensor *copy = rsm_tensor_copy(module, t);
        Py_DECREF(t);
        t = copy;
    }
    return t;
}

/* The importer for a caller that names the device (the device ops of rsm._cuda through
 * dlpack_api.h; CPU callers use rsm_py_tensor_arg): `obj` as an rsm.Tensor on a device of type
 * `device_type`, zero-copy, any dtype and strides (the caller checks those). For kDLCUDA a device
 * tensor is imported with the stream protocol, and a host tensor is refused naming the argument;
 * for kDLCPU a device tensor is refused as rsm_py_tensor_arg refuses it. */
rsm_py_tensor *
rsm_py_tensor_on(PyObject *module, PyObject *obj, const char *func, const char *argname,
                 int device_type)
{
    if (device_type != kDLCPU && device_type != kDLCUDA)
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_SystemError, func,
                                              "device type %d is not kDLCPU or kDLCUDA",
                                              device_type);
    const int on_cuda = device_type == kDLCUDA;
    rsm_py_tensor *t = rsm_import(module, obj, RSM_COPY_NEVER, func, argname, PyExc_ValueError,
                                  on_cuda);
    if (t == NULL || (int)t->t.device.device_type == device_type) return t;
    char what[64];
    rsm_device_describe(t->t.device, what, sizeof(what));
    Py_DECREF(t);
    return (rsm_py_tensor *)rsm_py_raisef(
        PyExc_ValueError, func,
        on_cuda ? "%s is on %s; this function runs on a CUDA device: move it there first "
                  "(rsm.cuda.to_device)"
                : "%s is on %s; this function runs on the CPU: move it there first "
                  "(rsm.cuda.to_host)",
        argname, what);
}

rsm_py_tensor *
rsm_py_tensor_out_arg(PyObject *module, PyObject *obj, const char *func, const char *argname,
                      rsm_dtype dtype)
{
    rsm_py_tensor *t = rsm_import(module, obj, RSM_COPY_NEVER, func, argname, PyExc_ValueError, 0);
    if (t == NULL) return NULL;
    rsm_dtype got = rsm_tensor_dtype(&t->t);
    if (got != dtype) {
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_TypeError, func, "%s has dtype %s, expected %s (convert it first: x.astype(\"%s\") in numpy or JAX, "
            "x.to(torch.%s) in torch, or build the model with dtype=\"%s\")",
            argname, rsm_dtype_name(got), rsm_dtype_name(dtype), rsm_dtype_name(dtype),
            rsm_dtype_name(dtype), rsm_dtype_name(got));
    }
    if (t->t.device.device_type != kDLCPU) {
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(PyExc_ValueError, func,
                                              "%s must be a CPU tensor", argname);
    }
    if (rsm_tensor_is_readonly(t)) {
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_ValueError, func, "%s is read-only, but it is written as an output", argname);
    }
    if (!rsm_tensor_is_contiguous(&t->t)) {
        Py_DECREF(t);
        return (rsm_py_tensor *)rsm_py_raisef(
            PyExc_ValueError, func,
            "%s must be C-contiguous to be written as an output (pass np.ascontiguousarray(%s) "
            "and read the result from it)",
            argname, argname);
    }
    return t;
}

/* ---- Python-level properties and methods -------------------------------------------------- */

static PyObject *
rsm_int64_tuple(const int64_t *values, int32_t n)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) return NULL;
    for (int32_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLongLong(values[i]);
        if (v == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, v);
    }
    return tuple;
}

static PyObject *
rsm_tensor_get_shape(rsm_py_tensor *self, void *closure)
{
    return rsm_int64_tuple(self->t.shape, self->t.ndim);
}

static PyObject *
rsm_tensor_get_strides(rsm_py_tensor *self, void *closure)
{
    return rsm_int64_tuple(self->t.strides, self->t.ndim);
}

static PyObject *
rsm_tensor_get_dtype(rsm_py_tensor *self, void *closure)
{
    return PyUnicode_FromString(rsm_dtype_name(rsm_tensor_dtype(&self->t)));
}

static PyObject *
rsm_tensor_get_device(rsm_py_tensor *self, void *closure)
{
    char what[64];
    rsm_device_describe(self->t.device, what, sizeof(what));
    return PyUnicode_FromString(what);
}

static PyObject *
rsm_tensor_get_ndim(rsm_py_tensor *self, void *closure)
{
    return PyLong_FromLong(self->t.ndim);
}

static PyObject *
rsm_tensor_get_size(rsm_py_tensor *self, void *closure)
{
    return PyLong_FromLongLong(rsm_tensor_numel(&self->t));
}

static PyObject *
rsm_tensor_get_nbytes(rsm_py_tensor *self, void *closure)
{
    return PyLong_FromLongLong(rsm_tensor_numel(&self->t) * (int64_t)(self->t.dtype.bits / 8));
}

static PyObject *
rsm_tensor_get_readonly(rsm_py_tensor *self, void *closure)
{
    return PyBool_FromLong(rsm_tensor_is_readonly(self));
}

static PyObject *
rsm_tensor_get_is_contiguous(rsm_py_tensor *self, void *closure)
{
    return PyBool_FromLong(rsm_tensor_is_contiguous(&self->t));
}

/* numpy.from_dlpack(self): numpy is imported lazily, rsm's C core does not need it. */
static PyObject *
rsm_tensor_to_numpy(rsm_py_tensor *self, PyObject *unused)
{
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) return NULL;
    PyObject *array = PyObject_CallMethod(numpy, "from_dlpack", "O", (PyObject *)self);
    Py_DECREF(numpy);
    return array;
}

/* __array__(dtype=None, copy=None), numpy 2 semantics: copy=False must not copy (ValueError if a
 * dtype conversion would), copy=True always copies. */
static PyObject *
rsm_tensor_array(rsm_py_tensor *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"dtype", "copy", NULL};
    PyObject *dtype = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OO:__array__", kwlist, &dtype, &copy)) {
        return NULL;
    }
    int copy_mode;
    if (rsm_parse_copy(copy, "__array__", &copy_mode) < 0) return NULL;
    PyObject *array = rsm_tensor_to_numpy(self, NULL);
    if (array == NULL) return NULL;
    if (dtype != Py_None) {
        /* astype(dtype, copy=...): copy is keyword-only in numpy's signature in practice */
        PyObject *converted = NULL;
        PyObject *astype = PyObject_GetAttrString(array, "astype");
        PyObject *kw = Py_BuildValue("{s:O}", "copy",
                                     copy_mode == RSM_COPY_ALWAYS ? Py_True : Py_False);
        PyObject *posargs = PyTuple_Pack(1, dtype);
        if (astype != NULL && kw != NULL && posargs != NULL) {
            converted = PyObject_Call(astype, posargs, kw);
        }
        Py_XDECREF(astype);
        Py_XDECREF(kw);
        Py_XDECREF(posargs);
        if (converted == NULL) {
            Py_DECREF(array);
            return NULL;
        }
        int changed = converted != array;
        Py_DECREF(array);
        if (changed && copy_mode == RSM_COPY_NEVER) {
            Py_DECREF(converted);
            return rsm_py_raisef(PyExc_ValueError, "__array__",
                                 "copy=False, but converting dtype %s to the requested dtype "
                                 "needs a copy",
                                 rsm_dtype_name(rsm_tensor_dtype(&self->t)));
        }
        return converted;
    }
    if (copy_mode == RSM_COPY_ALWAYS) {
        PyObject *copied = PyObject_CallMethod(array, "copy", NULL);
        Py_DECREF(array);
        return copied;
    }
    return array;
}

/* copy(): an owned, writable, C-contiguous copy. */
static PyObject *
rsm_tensor_copy_method(rsm_py_tensor *self, PyObject *unused)
{
    PyObject *module = rsm_module_of_type(Py_TYPE(self));
    if (module == NULL) return NULL;
    return (PyObject *)rsm_tensor_copy(module, self);
}

static Py_ssize_t
rsm_tensor_len(rsm_py_tensor *self)
{
    if (self->t.ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "len() of a 0-d tensor");
        return -1;
    }
    return (Py_ssize_t)self->t.shape[0];
}

/* rsm.Tensor([0.0, 1.0, ...], shape=(2, 3), dtype=float32, device=cpu): a few leading values
 * in row-major order, whatever the strides. */
static PyObject *
rsm_tensor_repr(rsm_py_tensor *self)
{
    enum { SHOWN = 6 };
    const rsm_tensor *t = &self->t;
    int64_t numel = rsm_tensor_numel(t);
    PyObject *values = NULL;
    if (t->device.device_type == kDLCPU) {
        int64_t shown = numel < SHOWN ? numel : SHOWN;
        PyObject *list = PyList_New(0);
        if (list == NULL) return NULL;
        for (int64_t i = 0; i < shown; i++) {
            PyObject *item = rsm_tensor_item(t, i);
            if (item == NULL || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(item);
        }
        PyObject *text = PyObject_Repr(list);
        Py_DECREF(list);
        if (text == NULL) return NULL;
        if (numel > SHOWN) {
            /* "[a, b, c]" -> "[a, b, c, ...]" */
            PyObject *head = PyUnicode_Substring(text, 0, PyUnicode_GetLength(text) - 1);
            Py_DECREF(text);
            if (head == NULL) return NULL;
            text = PyUnicode_FromFormat("%U, ...]", head);
            Py_DECREF(head);
            if (text == NULL) return NULL;
        }
        values = text;
    } else {
        values = PyUnicode_FromString("<device memory>");
        if (values == NULL) return NULL;
    }
    PyObject *shape = rsm_tensor_get_shape(self, NULL);
    PyObject *device = rsm_tensor_get_device(self, NULL);
    PyObject *result = NULL;
    if (shape != NULL && device != NULL) {
        result = PyUnicode_FromFormat("rsm.Tensor(%U, shape=%R, dtype=%s, device=%U%s)", values,
                                      shape, rsm_dtype_name(rsm_tensor_dtype(t)), device,
                                      rsm_tensor_is_readonly(self) ? ", readonly=True" : "");
    }
    Py_XDECREF(shape);
    Py_XDECREF(device);
    Py_DECREF(values);
    return result;
}

static PyGetSetDef rsm_tensor_getset[] = {
    {"shape", (getter)rsm_tensor_get_shape, NULL, "tuple of dimension sizes", NULL},
    {"strides", (getter)rsm_tensor_get_strides, NULL, "tuple of strides, in elements", NULL},
    {"dtype", (getter)rsm_tensor_get_dtype, NULL, "element type, as numpy spells it", NULL},
    {"device", (getter)rsm_tensor_get_device, NULL, "\"cpu\" or \"cuda:N\"", NULL},
    {"ndim", (getter)rsm_tensor_get_ndim, NULL, "number of dimensions", NULL},
    {"size", (getter)rsm_tensor_get_size, NULL, "number of elements", NULL},
    {"nbytes", (getter)rsm_tensor_get_nbytes, NULL, "size * itemsize", NULL},
    {"readonly", (getter)rsm_tensor_get_readonly, NULL, "True if the memory must not be written",
     NULL},
    {"is_contiguous", (getter)rsm_tensor_get_is_contiguous, NULL,
     "True if compact row-major (C-contiguous)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef rsm_tensor_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))rsm_tensor_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None) -> capsule\n\n"
     "DLPack export: a \"dltensor_versioned\" capsule when max_version >= (1, 0), else a "
     "legacy \"dltensor\" capsule."},
    {"__dlpack_device__", (PyCFunction)rsm_tensor_dlpack_device, METH_NOARGS,
     "__dlpack_device__() -> (device_type, device_id); (1, 0) is the CPU."},
    {"numpy", (PyCFunction)rsm_tensor_to_numpy, METH_NOARGS,
     "numpy() -> numpy.ndarray sharing this tensor's memory (read-only if the tensor is)."},
    {"__array__", (PyCFunction)(void (*)(void))rsm_tensor_array, METH_VARARGS | METH_KEYWORDS,
     "__array__(dtype=None, copy=None): numpy interoperability (zero-copy unless asked)."},
    {"copy", (PyCFunction)rsm_tensor_copy_method, METH_NOARGS,
     "copy() -> a writable, C-contiguous copy owned by rsm."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef rsm_tensor_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(rsm_py_tensor, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot rsm_tensor_slots[] = {
    {Py_tp_dealloc, rsm_tensor_dealloc},
    {Py_tp_repr, rsm_tensor_repr},
    {Py_tp_getset, rsm_tensor_getset},
    {Py_tp_methods, rsm_tensor_methods},
    {Py_tp_members, rsm_tensor_members},
    {Py_sq_length, rsm_tensor_len},
    {Py_tp_doc, (void *)"rsm.Tensor: an n-d array view (CPU), exchanged with other libraries "
                        "through DLPack.\n\nCreate one with rsm.from_dlpack(x), "
                        "rsm._C.empty(shape, dtype) or rsm._C.zeros(shape, dtype)."},
    {0, NULL},
};

static PyType_Spec rsm_tensor_spec = {
    .name = "rsm.Tensor",
    .basicsize = sizeof(rsm_py_tensor),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = rsm_tensor_slots,
};

/* ---- module functions --------------------------------------------------------------------- */

static PyObject *
rsm_py_from_dlpack(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "copy", NULL};
    PyObject *obj, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$O:from_dlpack", kwlist, &obj, &copy)) {
        return NULL;
    }
    int copy_mode;
    if (rsm_parse_copy(copy, "from_dlpack", &copy_mode) < 0) return NULL;
    return (PyObject *)rsm_import(module, obj, copy_mode, "from_dlpack", "obj",
                                  PyExc_BufferError, 1);
}

/* dtype= of empty/zeros: a name ("float32"), a numpy dtype (.name) or scalar type (__name__). */
static int
rsm_parse_dtype(PyObject *obj, const char *func, rsm_dtype *out)
{
    PyObject *name = NULL;
    if (PyUnicode_Check(obj)) {
        name = Py_NewRef(obj);
    } else {
        const char *attrs[] = {"name", "__name__"};
        for (int i = 0; i < 2 && name == NULL; i++) {
            PyObject *attr;
            int found = rsm_get_optional_attr(obj, attrs[i], &attr);
            if (found < 0) return -1;
            if (found && PyUnicode_Check(attr)) {
                name = attr;
            } else if (found) {
                Py_DECREF(attr);
            }
        }
    }
    if (name == NULL) {
        rsm_py_raisef(PyExc_TypeError, func, "dtype must be a string such as \"float32\", got %.200s",
                      Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *text = PyUnicode_AsUTF8(name);
    if (text == NULL) {
        Py_DECREF(name);
        return -1;
    }
    for (int i = 0; i < RSM_DTYPE_COUNT; i++) {
        if (strcmp(text, rsm_dtype_name((rsm_dtype)i)) == 0) {
            *out = (rsm_dtype)i;
            Py_DECREF(name);
            return 0;
        }
    }
    rsm_py_raisef(PyExc_TypeError, func, "unsupported dtype %.100s", text);
    Py_DECREF(name);
    return -1;
}

/* shape=: an int or a sequence of ints. Returns ndim or -1. */
static int
rsm_parse_shape(PyObject *obj, const char *func, int64_t *shape)
{
    if (PyIndex_Check(obj)) {
        shape[0] = PyLong_AsLongLong(obj);
        if (shape[0] == -1 && PyErr_Occurred()) return -1;
        if (shape[0] < 0) {
            rsm_py_raisef(PyExc_ValueError, func, "negative dimension %lld", (long long)shape[0]);
            return -1;
        }
        return 1;
    }
    PyObject *seq = PySequence_Fast(obj, "shape must be an int or a sequence of ints");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > RSM_MAX_NDIM) {
        Py_DECREF(seq);
        rsm_py_raisef(PyExc_ValueError, func, "%zd dimensions, rsm supports at most %d", n,
                      RSM_MAX_NDIM);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *index = PyNumber_Index(PySequence_Fast_GET_ITEM(seq, i));
        if (index == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        shape[i] = PyLong_AsLongLong(index);
        Py_DECREF(index);
        if (shape[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (shape[i] < 0) {
            Py_DECREF(seq);
            rsm_py_raisef(PyExc_ValueError, func, "negative dimension %lld",
                          (long long)shape[i]);
            return -1;
        }
    }
    Py_DECREF(seq);
    return (int)n;
}

static PyObject *
rsm_py_alloc_common(PyObject *module, PyObject *args, PyObject *kwargs, const char *func,
                    int zero)
{
    static char *kwlist[] = {"shape", "dtype", NULL};
    PyObject *shape_obj, *dtype_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O", kwlist, &shape_obj, &dtype_obj)) {
        return NULL;
    }
    rsm_dtype dtype = RSM_F32;
    if (dtype_obj != NULL && rsm_parse_dtype(dtype_obj, func, &dtype) < 0) return NULL;
    int64_t shape[RSM_MAX_NDIM];
    int ndim = rsm_parse_shape(shape_obj, func, shape);
    if (ndim < 0) return NULL;
    return (PyObject *)rsm_py_tensor_new(module, dtype, ndim, shape, zero);
}

static PyObject *
rsm_py_empty(PyObject *module, PyObject *args, PyObject *kwargs)
{
    return rsm_py_alloc_common(module, args, kwargs, "empty", 0);
}

static PyObject *
rsm_py_zeros(PyObject *module, PyObject *args, PyObject *kwargs)
{
    return rsm_py_alloc_common(module, args, kwargs, "zeros", 1);
}

/* _tensor_arg(obj, dtype="float32", *, out=False): rsm_py_tensor_arg / rsm_py_tensor_out_arg as
 * the compute entry points see them; private, for the tests of argument conversion. */
static PyObject *
rsm_py_tensor_arg_hook(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "dtype", "out", NULL};
    PyObject *obj, *dtype_obj = NULL;
    int out = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$p:_tensor_arg", kwlist, &obj, &dtype_obj,
                                     &out)) {
        return NULL;
    }
    rsm_dtype dtype = RSM_F32;
    if (dtype_obj != NULL && rsm_parse_dtype(dtype_obj, "_tensor_arg", &dtype) < 0) return NULL;
    if (out) return (PyObject *)rsm_py_tensor_out_arg(module, obj, "_tensor_arg", "x", dtype);
    return (PyObject *)rsm_py_tensor_arg(module, obj, "_tensor_arg", "x", dtype);
}

static PyMethodDef rsm_tensor_functions[] = {
    {"_tensor_arg", (PyCFunction)(void (*)(void))rsm_py_tensor_arg_hook,
     METH_VARARGS | METH_KEYWORDS,
     "_tensor_arg(obj, dtype=\"float32\", *, out=False): argument conversion, for tests."},
    {"from_dlpack", (PyCFunction)(void (*)(void))rsm_py_from_dlpack,
     METH_VARARGS | METH_KEYWORDS,
     "from_dlpack(obj, /, *, copy=None) -> rsm.Tensor\n\n"
     "Zero-copy import of any DLPack producer (numpy, torch, jax, cupy, a capsule). The tensor "
     "keeps the producer alive; strides and read-only are kept. copy=True imports a private "
     "copy, copy=False never copies."},
    {"empty", (PyCFunction)(void (*)(void))rsm_py_empty, METH_VARARGS | METH_KEYWORDS,
     "empty(shape, dtype=\"float32\") -> uninitialised C-contiguous CPU tensor."},
    {"zeros", (PyCFunction)(void (*)(void))rsm_py_zeros, METH_VARARGS | METH_KEYWORDS,
     "zeros(shape, dtype=\"float32\") -> zero-filled C-contiguous CPU tensor."},
    {NULL, NULL, 0, NULL},
};

/* ---- the importer lent to rsm._cuda (dlpack_api.h) ----------------------------------------- */

static PyObject *
rsm_api_import_on(PyObject *module, PyObject *obj, const char *func, const char *argname,
                  int device_type, const rsm_tensor **view)
{
    rsm_py_tensor *t = rsm_py_tensor_on(module, obj, func, argname, device_type);
    *view = t ? &t->t : NULL;
    return (PyObject *)t;
}

static const rsm_dlpack_api rsm_dlpack_api_table = {
    .version = RSM_DLPACK_API_VERSION,
    .import_on = rsm_api_import_on,
    .dtype_name = rsm_dtype_name,
    .dtype_size = rsm_dtype_size,
    .dtype_to_dl = rsm_dtype_to_dl,
    .tensor_dtype = rsm_tensor_dtype,
    .tensor_numel = rsm_tensor_numel,
    .tensor_is_contiguous = rsm_tensor_is_contiguous,
    .fail = rsm_fail,
    .last_error = rsm_last_error,
    .path_coef_at = rsm_path_coef_at,
    .path_native_param = rsm_path_native_param,
};

int
rsm_py_tensor_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &rsm_tensor_spec, NULL);
    if (type == NULL) return -1;
    rsm_state(module)->tensor_type = (PyTypeObject *)type; /* the state owns this reference */
    if (PyModule_AddObjectRef(module, "Tensor", type) < 0) return -1;
    if (PyModule_AddFunctions(module, rsm_tensor_functions) < 0) return -1;
    /* the importer and the dtype table, lent to rsm._cuda (dlpack_api.h) */
    PyObject *api = PyCapsule_New((void *)&rsm_dlpack_api_table, RSM_DLPACK_API_NAME, NULL);
    if (api == NULL) return -1;
    int rc = PyModule_AddObjectRef(module, "_dlpack_api", api);
    Py_DECREF(api);
    return rc;
}
