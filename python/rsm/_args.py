"""Argument helpers shared by the Python layer: times, dtypes, names in error messages."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def as_times(t: Any, n: int, dtype: str, func: str, name: str = "t") -> np.ndarray:
    """A scalar or [n] array of times as a contiguous array of the model's dtype.

    Times are coordinates, not data, so any real dtype is accepted and converted; NaN, inf and
    values outside [0, 1] are rejected with a message that names the argument."""
    if t is None or isinstance(t, (str, bytes)):  # np.asarray(None, float) is NaN: say what it is
        raise TypeError(f"{func}(): {name} must be a float or an array of floats, got {type(t).__name__}")
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): {name} must be a float or an array of floats, got {type(t).__name__}") from None
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{func}(): {name} must be a scalar or have shape [{n}], got {tuple(arr.shape)}")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{func}(): {name}[{i}]={float(arr[i])!r}: times must be finite and in [0, 1] (t = 1 is noise, t = 0 is data)")
    return np.ascontiguousarray(arr, dtype=dtype)


#: The largest size (a dimension, a depth, a count of rows or parameters) rsm accepts: 2**40, the
#: bound csrc/checked.h states and explains (far above any real allocation, far below int64's
#: range). A larger int is refused here, naming the argument, before it reaches C.
MAX_SIZE = 2**40

#: Seeds key the Philox streams as 64-bit words: every seed is an int in [0, 2**64).
SEED_LIMIT = 2**64


def positive_int(value: Any, func: str, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}(): {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{func}(): {name}={value} must be >= {minimum}")
    if value > MAX_SIZE:
        raise ValueError(f"{func}(): {name}={value} is larger than any size rsm accepts (2**40)")
    return int(value)


def size_int(value: Any, func: str, name: str) -> int:
    """An int size whose range the core checks, with a message naming the argument (a model's
    dimensions): here only its type (the binding's conversion would take a bool or a numpy float
    and name nothing) and that the conversion can take it at all (|value| <= 2**40, the core's
    bound on every size)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}(): {name} must be an int, got {type(value).__name__}")
    if abs(value) > MAX_SIZE:
        raise ValueError(f"{func}(): {name}={value} is outside the sizes rsm accepts (|{name}| <= 2**40)")
    return int(value)


def seed_int(value: Any, func: str, name: str = "seed") -> int:
    """A seed: an int in [0, 2**64). Another kind (bool, float, str) is a TypeError, an int out of
    range a ValueError (a seed >= 2**64 would alias a smaller one in the 64-bit streams); never
    rounded or wrapped."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{func}(): {name}={value!r} must be an int in [0, 2**64), got {type(value).__name__}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{func}(): {name}={value} must be an int in [0, 2**64)")
    return int(value)


def float_arg(value: Any, func: str, name: str) -> float:
    """A float argument whose value the core checks, with a message naming it: here only the
    conversion (the binding's would raise a TypeError that names nothing)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): {name} must be a float, got {type(value).__name__}") from None


def finite_float(value: Any, func: str, name: str, minimum: float | None = None) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{func}(): {name} must be a float, got {type(value).__name__}") from None
    if not math.isfinite(out):
        raise ValueError(f"{func}(): {name}={out} must be finite")
    if minimum is not None and out < minimum:
        raise ValueError(f"{func}(): {name}={out} must be >= {minimum}")
    return out


def rows_of(x: Any, func: str, name: str = "x") -> int:
    shape = getattr(x, "shape", None)
    if shape is None:
        if not isinstance(x, (list, tuple)):  # None, a str, a number: not an array at all
            raise TypeError(f"{func}(): {name} must be an array of shape [n, d] (numpy, torch, "
                            f"rsm.Tensor, ...), got {type(x).__name__}")
        shape = np.shape(x)
    if len(shape) < 1:
        raise ValueError(f"{func}(): {name} must have shape [n, d], got a scalar")
    return int(shape[0])


def as_cond(cond: Any, n: int, cond_dim: int, dtype: str, func: str, *,
            num_classes: int | None = None, name: str = "cond") -> np.ndarray | None:
    """A condition argument as the C layout [n, cond_dim] of the model's dtype, or None.

    Accepted: None (unconditional), [n, cond_dim] vectors, or, for a model with cond_dim == 1
    (class-conditional: the DiT), class ids [n] (ints). With num_classes given, a condition of
    width 1 must hold integer class ids in 0..num_classes (num_classes is the null class of
    classifier-free guidance)."""
    if cond is None:
        return None
    if hasattr(cond, "__dlpack__") and not isinstance(cond, np.ndarray):
        cond = np.from_dlpack(cond)
    arr = np.asarray(cond)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise TypeError(f"{func}(): {name} must be class ids or condition vectors (numbers), got dtype {arr.dtype}")
    if cond_dim == 0:
        raise ValueError(f"{func}(): {name} was given but the model is unconditional (cond_dim=0)")
    if arr.ndim == 1 and cond_dim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape != (n, cond_dim):
        want = f"[{n}, {cond_dim}]" + (f" or class ids [{n}]" if cond_dim == 1 else "")
        raise ValueError(f"{func}(): {name} must have shape {want}, got {tuple(arr.shape)}")
    out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{func}(): {name} contains NaN or inf")
    if num_classes is not None and cond_dim == 1:
        ids = out[:, 0]
        bad = (ids != np.round(ids)) | (ids < 0) | (ids > num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{func}(): {name}[{i}]={ids[i]!r} is not a class id in 0..{num_classes} "
                             f"({num_classes} is the null class)")
    return out


def num_classes_of(model: Any) -> int | None:
    """The number of real classes of a class-conditional model (the null class of classifier-free
    guidance is this id): model.num_classes, or model.config["num_classes"] (rsm.DiT); None for a
    model without classes. A guided model (rsm.Guided) answers for its inner model."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(model, "scale"):
        model = inner
    k = getattr(model, "num_classes", None)
    if k is None:
        config = getattr(model, "config", None)
        if isinstance(config, dict):
            k = config.get("num_classes")
    return None if k is None else int(k)
