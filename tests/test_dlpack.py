"""rsm.Tensor and DLPack exchange (csrc/python/tensor_py.c): dtypes, zero-copy, strides, read-only,
capsule kinds, copy/stream/device keywords, lifetimes and malformed producers."""
import ctypes
import gc
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

import rsm
from rsm import _C

# ---- ctypes view of the DLPack ABI (independent of rsm's C declarations) -------------------

_capi = ctypes.pythonapi
_capi.PyCapsule_GetName.restype = ctypes.c_char_p
_capi.PyCapsule_GetName.argtypes = [ctypes.py_object]
_capi.PyCapsule_IsValid.restype = ctypes.c_int
_capi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_capi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capi.PyCapsule_New.restype = ctypes.py_object
_capi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", DELETER),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


READ_ONLY = 1
IS_COPIED = 2
kDLCPU, kDLCUDA = 1, 2

# Capsule names must outlive the capsules that point at them.
_NAME_VERSIONED = ctypes.create_string_buffer(b"dltensor_versioned")
_NAME_LEGACY = ctypes.create_string_buffer(b"dltensor")


def capsule_name(capsule):
    return _capi.PyCapsule_GetName(capsule).decode()


def managed_versioned(capsule):
    ptr = _capi.PyCapsule_GetPointer(capsule, b"dltensor_versioned")
    return DLManagedTensorVersioned.from_address(ptr)


def managed_legacy(capsule):
    ptr = _capi.PyCapsule_GetPointer(capsule, b"dltensor")
    return DLManagedTensor.from_address(ptr)


class FakeProducer:
    """A hand-built DLPack producer over a numpy buffer, with a counting deleter. The capsule has
    no destructor, so the deleter runs only if the consumer calls it."""

    def __init__(self, array, *, versioned=True, major=1, minor=1, code=None, bits=None,
                 lanes=1, device=(kDLCPU, 0), flags=0):
        self.array = array
        self.deleted = 0
        self.shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
        self.strides = (ctypes.c_int64 * max(array.ndim, 1))(
            *[s // array.itemsize for s in array.strides])
        self.deleter = DELETER(self._delete)
        kind = {"f": 2, "i": 0, "u": 1, "b": 6, "c": 5}[array.dtype.kind]
        dl = DLTensor(
            data=array.ctypes.data, device=DLDevice(*device), ndim=array.ndim,
            dtype=DLDataType(kind if code is None else code,
                             array.itemsize * 8 if bits is None else bits, lanes),
            shape=self.shape, strides=self.strides, byte_offset=0)
        if versioned:
            self.managed = DLManagedTensorVersioned(
                version=DLPackVersion(major, minor), manager_ctx=None, deleter=self.deleter,
                flags=flags, dl_tensor=dl)
        else:
            self.managed = DLManagedTensor(dl_tensor=dl, manager_ctx=None, deleter=self.deleter)
        self.versioned = versioned
        self.device = device

    def _delete(self, ptr):
        assert ptr == ctypes.addressof(self.managed)
        self.deleted += 1

    def capsule(self):
        name = _NAME_VERSIONED if self.versioned else _NAME_LEGACY
        return _capi.PyCapsule_New(ctypes.addressof(self.managed), name, None)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        return self.capsule()

    def __dlpack_device__(self):
        return self.device


NUMPY_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
                np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def sample(dtype, shape=(3, 5), seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    a = rng.standard_normal(shape).astype(dtype)
    a.flat[0] = np.inf
    a.flat[1] = -0.0
    a.flat[2] = np.nan
    return a


def bits_equal(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- dtypes and round trips ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_numpy_to_rsm_to_numpy(dtype):
    a = sample(dtype)
    t = rsm.from_dlpack(a)
    assert isinstance(t, rsm.Tensor)
    assert t.dtype == np.dtype(dtype).name
    assert t.shape == a.shape and t.ndim == 2 and t.size == a.size and len(t) == 3
    assert t.strides == (5, 1)
    assert t.device == "cpu" and not t.readonly
    assert t.__dlpack_device__() == (kDLCPU, 0)
    b = t.numpy()
    assert bits_equal(a, b)
    assert np.shares_memory(a, b)
    assert bits_equal(np.asarray(t), a)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_rsm_to_numpy_to_rsm(dtype):
    name = np.dtype(dtype).name
    t = _C.empty((4, 3), dtype=name)
    view = np.from_dlpack(t)
    assert view.dtype == dtype and view.flags.writeable
    ref = sample(dtype, (4, 3), seed=1)
    view[...] = ref
    back = rsm.from_dlpack(view)
    assert back.dtype == name
    assert bits_equal(back.numpy(), ref)
    assert np.shares_memory(back.numpy(), view)


def test_dtype_spellings_and_zeros():
    assert _C.zeros(3).dtype == "float32"
    assert _C.zeros((2, 2), np.float64).dtype == "float64"
    assert _C.zeros((2, 2), dtype=np.dtype("int32")).dtype == "int32"
    z = _C.zeros((5, 7), "int64")
    assert not z.numpy().any()
    assert _C.empty(()).shape == () and _C.empty(()).size == 1
    bf = _C.zeros((2,), "bfloat16")
    assert bf.dtype == "bfloat16" and "bfloat16" in repr(bf)
    with pytest.raises(TypeError, match="unsupported dtype"):
        _C.zeros(3, "complex64")
    with pytest.raises(ValueError, match="negative"):
        _C.empty((2, -1))


def test_repr_shows_shape_dtype_device_values():
    t = rsm.from_dlpack(np.arange(10, dtype=np.float64))
    r = repr(t)
    assert r.startswith("rsm.Tensor([0.0, 1.0, 2.0")
    assert "..." in r and "shape=(10,)" in r and "dtype=float64" in r and "device=cpu" in r
    assert repr(rsm.from_dlpack(np.array([True, False]))).startswith("rsm.Tensor([True, False]")
    # float16 -> float in C: normals, subnormals, signed zero, inf, nan, as numpy converts them
    halves = np.array([0x3E00, 0xC000, 0x03EE, 0x0001, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7BFF,
                       0x0400, 0x83FF], dtype=np.uint16).view(np.float16)
    for h in halves:
        assert repr(rsm.from_dlpack(np.array([h]))).startswith(
            "rsm.Tensor([%r]" % float(h))
    # strided: values in row-major order
    assert "[0, 3, 1, 4, 2, 5]" in repr(rsm.from_dlpack(np.arange(6).reshape(2, 3).T))
    with pytest.raises(TypeError):
        len(_C.zeros(()))


def test_tensor_type_is_not_instantiable_and_supports_weakrefs():
    with pytest.raises(TypeError):
        rsm.Tensor()
    t = _C.zeros(3)
    r = weakref.ref(t)
    assert r() is t
    del t
    assert r() is None


# ---- zero-copy ------------------------------------------------------------------------------


def test_write_through_numpy_to_rsm():
    a = np.zeros((2, 3), np.float32)
    t = rsm.from_dlpack(a)
    a[1, 2] = 7.0
    assert t.numpy()[1, 2] == 7.0
    t.numpy()[0, 0] = -1.0
    assert a[0, 0] == -1.0
    assert np.shares_memory(a, t.numpy())


def test_write_through_rsm_to_numpy():
    t = _C.zeros((4,), "float64")
    a = np.from_dlpack(t)
    a[2] = 3.5
    b = t.numpy()
    assert b[2] == 3.5 and np.shares_memory(a, b)
    c = rsm.from_dlpack(a)
    c.numpy()[0] = 1.0
    assert a[0] == 1.0


# ---- strides and shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda a: a.T,
    lambda a: a[::2, 1::3],
    lambda a: a[::-1],
    lambda a: a[:, ::-2],
    lambda a: a[::-2, ::-3],
    lambda a: a[1:, 2],
], ids=["transposed", "step", "neg_rows", "neg_cols_step", "neg_both", "column"])
def test_strided_imports_stay_strided_views(make):
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    a = make(base)
    t = rsm.from_dlpack(a)
    assert t.shape == a.shape
    assert t.strides == tuple(s // a.itemsize for s in a.strides)
    assert t.is_contiguous == a.flags.c_contiguous or a.ndim == 1 and a.strides[0] == 8
    back = t.numpy()
    assert np.array_equal(back, a) and back.strides == a.strides
    assert np.shares_memory(back, base)
    assert np.array_equal(np.asarray(t), a)
    # argument conversion makes a C-contiguous copy only when needed
    c = _C._tensor_arg(a, "float64")
    assert c.is_contiguous and np.array_equal(c.numpy(), a)
    assert np.shares_memory(c.numpy(), base) == a.flags.c_contiguous


def test_zero_d_size_zero_and_32_d():
    s = np.array(3.25, np.float32)
    t = rsm.from_dlpack(s)
    assert t.shape == () and t.ndim == 0 and t.size == 1 and t.strides == ()
    assert t.numpy()[()] == 3.25 and "3.25" in repr(t)

    for shape in [(0,), (0, 3), (3, 0), (2, 0, 4)]:
        e = np.empty(shape, np.float32)
        t = rsm.from_dlpack(e)
        assert t.shape == shape and t.size == 0
        assert t.numpy().shape == shape
        z = _C.zeros(shape)
        assert np.from_dlpack(z).shape == shape

    shape = (1,) * 29 + (2, 1, 3)
    big = np.arange(6, dtype=np.int32).reshape(shape)
    t = rsm.from_dlpack(big)
    assert t.ndim == 32 and t.shape == shape
    assert np.array_equal(t.numpy(), big)
    z = _C.zeros(shape, "int32")
    assert np.from_dlpack(z).shape == shape
    with pytest.raises(ValueError):
        _C.zeros((1,) * 65)


# ---- read-only ------------------------------------------------------------------------------


def test_readonly_numpy_imports_readonly():
    a = np.arange(4, dtype=np.float32)
    a.flags.writeable = False
    t = rsm.from_dlpack(a)
    assert t.readonly and "readonly=True" in repr(t)
    v = t.numpy()
    assert not v.flags.writeable and np.shares_memory(v, a)
    assert not np.asarray(t).flags.writeable
    cap = t.__dlpack__(max_version=(1, 1))
    m = managed_versioned(cap)
    assert m.flags & READ_ONLY and not m.flags & IS_COPIED
    with pytest.raises(BufferError, match="read-only"):
        t.__dlpack__()
    # a copy is writable and may be exported either way
    cap = t.__dlpack__(copy=True)
    assert capsule_name(cap) == "dltensor"
    with pytest.raises(ValueError, match="read-only"):
        _C._tensor_arg(a, out=True)
    assert _C._tensor_arg(a).readonly  # inputs may be read-only


def test_legacy_capsules_import_writable():
    a = np.arange(3, dtype=np.float64)
    p = FakeProducer(a, versioned=False)
    t = rsm.from_dlpack(p)
    assert not t.readonly and np.shares_memory(t.numpy(), a)
    del t
    assert p.deleted == 1


# ---- capsule kinds and keywords ---------------------------------------------------------------


def test_capsule_kinds_and_names():
    t = rsm.from_dlpack(np.arange(6, dtype=np.float32).reshape(2, 3))
    legacy = t.__dlpack__()
    assert capsule_name(legacy) == "dltensor"
    assert _capi.PyCapsule_IsValid(legacy, b"dltensor") == 1
    legacy2 = t.__dlpack__(max_version=None)
    assert capsule_name(legacy2) == "dltensor"
    old = t.__dlpack__(max_version=(0, 8))
    assert capsule_name(old) == "dltensor"
    v = t.__dlpack__(max_version=(1, 0))
    assert capsule_name(v) == "dltensor_versioned"
    assert _capi.PyCapsule_IsValid(v, b"dltensor_versioned") == 1
    m = managed_versioned(v)
    assert (m.version.major, m.version.minor) == (1, 1)
    assert m.flags == 0
    dl = m.dl_tensor
    assert dl.ndim == 2 and dl.device.device_type == kDLCPU and dl.device.device_id == 0
    assert (dl.dtype.code, dl.dtype.bits, dl.dtype.lanes) == (2, 32, 1)
    assert [dl.shape[i] for i in range(2)] == [2, 3]
    assert [dl.strides[i] for i in range(2)] == [3, 1]
    assert dl.data == t.numpy().ctypes.data
    # shape and strides live in the same allocation, right after the managed struct
    assert ctypes.addressof(dl.shape.contents) >= ctypes.addressof(m) + ctypes.sizeof(m)
    assert ctypes.addressof(dl.shape.contents) - ctypes.addressof(m) < ctypes.sizeof(m) + 16
    lm = managed_legacy(legacy)
    assert lm.dl_tensor.ndim == 2
    # consumers (numpy) rename the capsule; rsm consumes raw capsules too
    cap = t.__dlpack__(max_version=(1, 1))
    u = rsm.from_dlpack(cap)
    assert capsule_name(cap) == "used_dltensor_versioned"
    assert np.shares_memory(u.numpy(), t.numpy())
    with pytest.raises(BufferError, match="already consumed"):
        rsm.from_dlpack(cap)
    cap = np.arange(3.0).__dlpack__()
    assert np.array_equal(rsm.from_dlpack(cap).numpy(), [0, 1, 2])
    assert capsule_name(cap) == "used_dltensor"


def test_bad_keyword_values():
    t = _C.zeros(3)
    with pytest.raises(TypeError):
        t.__dlpack__(None)  # keyword-only
    with pytest.raises(TypeError):
        t.__dlpack__(max_version=1)
    with pytest.raises(TypeError):
        t.__dlpack__(copy=1)
    with pytest.raises(TypeError):
        rsm.from_dlpack(np.zeros(3), copy="yes")


def test_copy_semantics_export():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = rsm.from_dlpack(a.T)
    v = t.__dlpack__(max_version=(1, 1), copy=True)
    m = managed_versioned(v)
    assert m.flags == IS_COPIED
    assert m.dl_tensor.data != t.numpy().ctypes.data
    assert [m.dl_tensor.strides[i] for i in range(2)] == [2, 1]
    c = np.from_dlpack(t, copy=True)
    assert np.array_equal(c, a.T) and not np.shares_memory(c, a)
    n = np.from_dlpack(t, copy=False)
    assert np.shares_memory(n, a)
    v = t.__dlpack__(max_version=(1, 1), copy=False)
    assert managed_versioned(v).dl_tensor.data == t.numpy().ctypes.data


def test_copy_semantics_import():
    a = np.arange(5, dtype=np.int64)
    assert np.shares_memory(rsm.from_dlpack(a).numpy(), a)
    assert np.shares_memory(rsm.from_dlpack(a, copy=False).numpy(), a)
    c = rsm.from_dlpack(a, copy=True)
    assert not np.shares_memory(c.numpy(), a) and np.array_equal(c.numpy(), a)
    r = a.copy()
    r.flags.writeable = False
    rc = rsm.from_dlpack(r, copy=True)
    assert not rc.readonly  # a private copy is writable
    t = rsm.from_dlpack(a)
    assert rsm.from_dlpack(t) is t
    assert rsm.from_dlpack(t, copy=False) is t
    t2 = rsm.from_dlpack(t, copy=True)
    assert t2 is not t and not np.shares_memory(t2.numpy(), a)
    # an old producer cannot copy on request: rsm copies itself
    old = OldProducer(a)
    oc = rsm.from_dlpack(old, copy=True)
    assert not np.shares_memory(oc.numpy(), a) and np.array_equal(oc.numpy(), a)


def test_stream_must_be_none_on_cpu():
    t = _C.zeros(3)
    with pytest.raises(ValueError, match="stream"):
        t.__dlpack__(stream=1)
    with pytest.raises(ValueError, match="stream"):
        t.__dlpack__(stream=1, max_version=(1, 1))
    capsule = t.__dlpack__(stream=None)
    assert capsule_name(capsule) == "dltensor"


def test_dl_device():
    t = _C.zeros(3)
    assert capsule_name(t.__dlpack__(dl_device=(kDLCPU, 0))) == "dltensor"
    assert np.from_dlpack(t, device="cpu").shape == (3,)
    for bad in [(kDLCUDA, 0), (kDLCPU, 1), (13, 0)]:
        with pytest.raises(BufferError):
            t.__dlpack__(dl_device=bad, max_version=(1, 1))
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(kDLCUDA, 0), copy=False)


# ---- lifetimes ------------------------------------------------------------------------------


class Sub(np.ndarray):
    pass


def test_view_keeps_producer_alive():
    base = np.arange(8, dtype=np.float32)
    sub = base.view(Sub)
    ref = weakref.ref(sub)
    before = sys.getrefcount(sub)
    t = rsm.from_dlpack(sub)
    assert sys.getrefcount(sub) == before + 1  # numpy's manager_ctx
    del sub
    gc.collect()
    assert ref() is not None
    assert np.array_equal(t.numpy(), np.arange(8))
    del t
    gc.collect()
    assert ref() is None


def test_export_keeps_tensor_alive():
    t = _C.zeros((3,), "float64")
    ref = weakref.ref(t)
    a = np.from_dlpack(t)
    before = sys.getrefcount(a)
    del t
    gc.collect()
    assert ref() is not None
    a[0] = 1.0
    assert ref().numpy()[0] == 1.0
    b = rsm.from_dlpack(a)  # rsm -> numpy -> rsm: a chain of owners
    assert sys.getrefcount(a) == before + 1
    del a
    assert ref() is not None
    assert b.numpy()[0] == 1.0
    del b
    gc.collect()
    assert ref() is None


def test_unconsumed_capsules_release_their_tensor():
    t = _C.zeros(4)
    before = sys.getrefcount(t)
    caps = [t.__dlpack__(), t.__dlpack__(max_version=(1, 1)), t.__dlpack__(copy=True)]
    assert sys.getrefcount(t) == before + 2
    del caps
    assert sys.getrefcount(t) == before


class ProducerFromCapsule:
    """An object whose __dlpack__ hands out a capsule of another array."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return self.array.__dlpack__(stream=stream, max_version=max_version, copy=copy)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


def test_capsule_producer_refcounts():
    base = np.arange(10, dtype=np.float32)
    before = sys.getrefcount(base)
    p = ProducerFromCapsule(base)
    ref = weakref.ref(p)
    t = rsm.from_dlpack(p)
    assert sys.getrefcount(base) == before + 2  # p.array and the managed tensor
    del p
    assert ref() is None  # the view keeps the array, not the wrapper
    assert sys.getrefcount(base) == before + 1
    del t
    assert sys.getrefcount(base) == before


def test_many_imports_and_exports_do_not_leak():
    base = np.arange(64, dtype=np.float64).reshape(8, 8)
    t0 = _C.zeros((8, 8), "float64")

    def churn():
        for _ in range(200):
            t = rsm.from_dlpack(base[::2, ::-1])
            a = np.from_dlpack(t)
            rsm.from_dlpack(a, copy=True)
            t.__dlpack__()
            t.__dlpack__(max_version=(1, 1), copy=True)
            rsm.from_dlpack(t0.__dlpack__(max_version=(1, 1)))
            np.from_dlpack(t0)
            np.asarray(t0, dtype=np.float32)
            _C._tensor_arg(base.T, "float64")
            repr(t)
            try:
                rsm.from_dlpack(np.zeros(2, np.complex64))
            except TypeError:
                pass

    churn()
    gc.collect()
    ref_base, ref_t0 = sys.getrefcount(base), sys.getrefcount(t0)
    tracemalloc.start()
    try:
        churn()
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            churn()
        gc.collect()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second - first < 16 * 1024
    assert sys.getrefcount(base) == ref_base and sys.getrefcount(t0) == ref_t0


# ---- errors and malformed producers --------------------------------------------------------


def test_unsupported_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="complex64"):
        rsm.from_dlpack(np.zeros(3, np.complex64))
    with pytest.raises(TypeError, match="complex128"):
        _C._tensor_arg(np.zeros(3, np.complex128))


def test_objects_without_dlpack_are_type_errors():
    for obj in [[1.0, 2.0], 3.0, "abc", object()]:
        with pytest.raises(TypeError, match="must be an array supporting DLPack"):
            rsm.from_dlpack(obj)
    with pytest.raises(TypeError, match=r"_tensor_arg\(\): x must be an array supporting DLPack "
                                        r"\(numpy, torch, \.\.\.\), got list"):
        _C._tensor_arg([1.0])


def test_tensor_arg_dtype_and_output_rules():
    a = np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"_tensor_arg\(\): x has dtype float64, expected "
                                        r"float32 \(convert it first: x\.astype\(\"float32\"\) in numpy or "
                                        r"JAX, x\.to\(torch\.float32\) in torch"):
        _C._tensor_arg(a)
    t = _C._tensor_arg(a, "float64")
    assert np.shares_memory(t.numpy(), a)  # contiguous: zero-copy
    o = _C._tensor_arg(a, "float64", out=True)
    assert np.shares_memory(o.numpy(), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C._tensor_arg(a.T, "float64", out=True)
    r = _C.zeros(3)
    assert _C._tensor_arg(r) is r


def test_newer_major_version_is_rejected_and_deleted():
    a = np.arange(4, dtype=np.float32)
    p = FakeProducer(a, major=2, minor=0)
    with pytest.raises(BufferError, match="DLPack 2.0"):
        rsm.from_dlpack(p)
    assert p.deleted == 1
    cap = p.capsule()
    with pytest.raises(BufferError):
        rsm.from_dlpack(cap)
    assert p.deleted == 2
    assert capsule_name(cap) == "used_dltensor_versioned"


def test_fake_producer_deleter_runs_once_when_view_dies():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    p = FakeProducer(a)
    t = rsm.from_dlpack(p)
    assert p.deleted == 0
    assert t.strides == (4, 2) and np.array_equal(t.numpy(), a)
    del t
    gc.collect()
    assert p.deleted == 1


def test_fake_producer_flags_and_bad_dtypes():
    a = np.arange(4, dtype=np.float32)
    p = FakeProducer(a, flags=READ_ONLY)
    t = rsm.from_dlpack(p)
    assert t.readonly
    del t
    assert p.deleted == 1
    p = FakeProducer(a, lanes=4)
    with pytest.raises(TypeError, match="float32x4"):
        rsm.from_dlpack(p)
    assert p.deleted == 1
    p = FakeProducer(a, code=3)  # opaque handle
    with pytest.raises(TypeError):
        rsm.from_dlpack(p)
    assert p.deleted == 1


def test_null_strides_mean_row_major():
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    p = FakeProducer(a)
    p.managed.dl_tensor.strides = None
    t = rsm.from_dlpack(p)
    assert t.strides == (3, 1) and np.array_equal(t.numpy(), a)


def test_cuda_tensors_are_refused_without_a_device():
    """Without a usable CUDA device (or without rsm._cuda), a CUDA tensor is refused with the
    reason; CPU compute entry points refuse it in any build, naming the argument. (With a device,
    tests/test_cuda_dlpack.py covers the zero-copy import.)"""
    if rsm.cuda_available():
        pytest.skip("a CUDA device is available: from_dlpack accepts CUDA tensors")
    a = np.arange(4, dtype=np.float32)
    p = FakeProducer(a, device=(kDLCUDA, 0))
    with pytest.raises(BufferError, match=r"obj is on cuda:0, but (CUDA is not available|this build)"):
        rsm.from_dlpack(p)
    assert p.deleted == 0  # refused from __dlpack_device__, before any export
    with pytest.raises(ValueError, match="x is on cuda:0; this function runs on the CPU"):
        _C._tensor_arg(p)
    assert p.deleted == 0
    # a raw capsule is checked on import, and then deleted
    with pytest.raises(BufferError, match="cuda:0"):
        rsm.from_dlpack(p.capsule())
    assert p.deleted == 1


def test_cpu_entry_points_refuse_cuda_tensors_in_any_build():
    p = FakeProducer(np.arange(4, dtype=np.float32), device=(kDLCUDA, 0))
    with pytest.raises(ValueError, match="x is on cuda:0; this function runs on the CPU"):
        _C._tensor_arg(p, out=True)
    assert p.deleted == 0


class OldProducer:
    """Pre-1.0 signature: no max_version, no copy; returns a legacy capsule."""

    def __init__(self, array):
        self.array = array
        self.calls = 0

    def __dlpack__(self, stream=None):
        self.calls += 1
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class NoDeviceProducer:
    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)


def test_old_signature_producer():
    a = np.arange(6, dtype=np.uint8)
    p = OldProducer(a)
    t = rsm.from_dlpack(p)
    assert np.shares_memory(t.numpy(), a) and not t.readonly
    assert p.calls == 1  # the TypeError of the first attempt is raised before the body runs
    t2 = rsm.from_dlpack(NoDeviceProducer(a))
    assert np.shares_memory(t2.numpy(), a)


def test_producer_errors_propagate():
    class Broken:
        def __dlpack__(self, **kwargs):
            raise RuntimeError("boom")

        def __dlpack_device__(self):
            return (kDLCPU, 0)

    with pytest.raises(RuntimeError, match="boom"):
        rsm.from_dlpack(Broken())

    class NotCapsule:
        def __dlpack__(self, **kwargs):
            return 42

    with pytest.raises(TypeError, match="capsule"):
        rsm.from_dlpack(NotCapsule())


# ---- other producers and consumers, where installed ------------------------------------------


def test_torch_round_trip():
    torch = pytest.importorskip("torch")
    for dt in [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
               torch.int32, torch.int8, torch.uint8, torch.bool]:
        x = (torch.arange(12) % 2).to(dt).reshape(3, 4)
        t = rsm.from_dlpack(x)
        assert t.shape == (3, 4)
        y = torch.from_dlpack(t)
        assert y.dtype == dt and torch.equal(x, y)
        assert y.data_ptr() == x.data_ptr()
    x = torch.arange(20.0).reshape(4, 5).t()
    t = rsm.from_dlpack(x)
    assert t.strides == (1, 5)
    assert torch.equal(torch.from_dlpack(t), x)
