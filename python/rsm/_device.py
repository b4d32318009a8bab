"""rsm._device: where a model lives, the base layer under rsm.cuda and the models (rsm.models,
rsm.dit, rsm.training pick a device's backend table here without importing rsm.cuda, which
dispatches to them). rsm.cuda re-exports every public name."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._args import as_times


def _mod():
    """rsm._cuda, or RuntimeError with the reason CUDA is not usable."""
    from ._build import _cuda_status
    available, reason = _cuda_status()
    if not available:
        raise RuntimeError(f"rsm.cuda: CUDA is not available: {reason}")
    from . import _cuda
    return _cuda



def device_index(device: Any) -> int:
    if isinstance(device, str):
        if device == "cuda":
            return 0
        if device.startswith("cuda:") and device[5:].isdigit():
            return int(device[5:])
        raise ValueError(f"device must be 'cuda', 'cuda:N' or an int, got {device!r}")
    if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or device < 0:
        raise ValueError(f"device must be 'cuda', 'cuda:N' or an int >= 0, got {device!r}")
    return int(device)



def _dtype_of(array: Any) -> str:
    dtype = getattr(array, "dtype", None)
    return str(dtype).replace("torch.", "")


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)



def empty(shape: Any, dtype: str = "float32", device: Any = 0) -> _C.Tensor:
    """Uninitialised device tensor from rsm's caching allocator (no cudaMalloc once warm)."""
    return _C.from_dlpack(_mod().empty(_shape(shape), str(dtype), device_index(device)))



def to_device(array: Any, device: Any = 0, dtype: str | None = None) -> _C.Tensor:
    """A device copy of a host array (anything numpy accepts)."""
    host = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    t = empty(host.shape, host.dtype.name, device)
    if host.size:
        _mod().copy(t, host)
    return t


def to_host(array: Any) -> np.ndarray:
    """A numpy copy of a device array (waits for the work that writes it)."""
    shape = tuple(int(s) for s in array.shape)
    out = np.empty(shape, dtype=_dtype_of(array))
    if out.size:
        _mod().copy(out, array)
    return out



def require(device: Any, func: str) -> int:
    """The CUDA device index of `device` ("cuda", "cuda:N", N), or RuntimeError saying why CUDA
    cannot be used here (not built, no device, driver). `func` names the caller in messages."""
    index = device_index(device)
    from ._build import _cuda_status
    available, reason = _cuda_status()
    if not available:
        raise RuntimeError(f"{func}(): device={device!r} asks for CUDA, which is not available "
                           f"here: {reason}")
    count = _mod().device_count()[0]
    if index >= count:
        raise RuntimeError(f"{func}(): device={device!r}: this machine has {count} CUDA "
                           "device(s)")
    return index


def backend_table(device: Any = 0) -> Any:
    """The CUDA backend table of `device` (a capsule holding a const rsm_backend *, for the C
    loops: csrc/backend.h), or RuntimeError saying why there is none."""
    index = require(device, "backend_table")
    cuda = _mod()
    if not hasattr(cuda, "backend"):
        raise RuntimeError("backend_table(): this build of rsm._cuda has no backend table "
                           "(kernels/backend_cuda.cu was not compiled in)")
    return cuda.backend(index)


_device_index = device_index  # the name rsm.cuda used


# ---- a model's device (rsm.models, rsm.dit, rsm.training) ---------------------------------------


def _device_name(device: Any) -> str:
    """'cpu' for None / 'cpu', else 'cuda:N' (rsm.cuda's parsing: 'cuda', 'cuda:N', N)."""
    if device is None or device == "cpu":
        return "cpu"
    return f"cuda:{device_index(device)}"


def backend_of(device: Any, func: str) -> Any:
    """None for the CPU, else the CUDA backend table of `device` (rsm.cuda.backend_table: a
    RuntimeError saying why when CUDA cannot be used)."""
    if _device_name(device) == "cpu":
        return None
    return backend_table(device)


def _on_cuda(array: Any) -> bool:
    """Whether `array` is a DLPack CUDA array (device type 2)."""
    get = getattr(array, "__dlpack_device__", None)
    if get is None:
        return False
    try:
        return int(get()[0]) == 2
    except Exception:
        return False


def to_model_device(model: Any, array: Any, func: str) -> Any:
    """`array` where a device model's loops read it: None and device arrays as they are, a host
    array copied once to the model's device in its dtype (rsm.cuda.to_device)."""
    if array is None or model.device == "cpu" or _on_cuda(array):
        return array
    return to_device(np.asarray(array), model.device, model.dtype)


def times_for(model: Any, t: Any, n: int, func: str) -> Any:
    """t for a model's core: host times checked by as_times, moved to the model's device when the
    model is on one (a device array of times is passed as is; the binding checks it)."""
    device = getattr(model, "device", "cpu")  # models without one (rsm.external) are host models
    if device == "cpu":
        return as_times(t, n, model.dtype, func)
    if _on_cuda(t):
        return t
    return to_device(as_times(t, n, model.dtype, func), device, model.dtype)


def _host_only(model: Any, func: str) -> None:
    device = getattr(model, "device", "cpu")
    if device != "cpu":
        raise RuntimeError(f"{func}(): works on host arrays and the model is on {device}: "
                           f"move it first (model.to('cpu'))")


def copy_params(model: Any, other: Any) -> None:
    """model's trainable parameters into `other` (same configuration, any device): the binding's
    set_params copies host -> host, host -> device or device -> device; device -> host goes
    through to_host first."""
    src = model.params
    if model.device != "cpu" and other.device == "cpu":
        src = to_host(src)
    other._core.set_params(src)


def host_copy(array: Any) -> np.ndarray:
    """A numpy copy of a host or device array (to_host for a DLPack CUDA array)."""
    return to_host(array) if _on_cuda(array) else np.array(np.from_dlpack(array))
