"""The reward type: a user callable (black-box or differentiable) wrapped as `Reward`, which
checks what it returns (RewardError otherwise). Its own module, below rsm.rewards (the built-in
analytic rewards, and the image rewards forwarded lazily) and rsm.image_rewards, which both
build on it (tests/test_imports.py: no import circle)."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np


class RewardError(ValueError):
    """A reward callable returned something unusable (wrong shape, type, NaN/inf)."""


class Reward:
    """Wraps a Python callable as an rsm reward; validates what it returns.

    differentiable: the callable returns (rewards, grad) with grad = d r / d x0 [n, D].
    nonfinite: "raise" (default) turns NaN/inf rewards into RewardError; "skip" returns a mask
    so the rows are dropped from the update (counted in the history)."""

    def __init__(self, fn: Callable[..., Any], differentiable: bool = False, *, name: str | None = None,
                 nonfinite: str = "raise") -> None:
        if not callable(fn):
            raise TypeError(f"Reward(): fn must be callable, got {type(fn).__name__}")
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"Reward(): nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        check_signature(fn, self.name)
        self.fn = fn
        self.differentiable = bool(differentiable)
        self.nonfinite = nonfinite
        self.calls = 0

    def __repr__(self) -> str:
        kind = "differentiable" if self.differentiable else "black-box"
        extra = f", kind={self.kind!r}" if hasattr(self, "kind") else ""
        return f"Reward({self.name!r}, {kind}{extra}, nonfinite={self.nonfinite!r}, calls={self.calls})"

    def __call__(self, x0: Any, cond: Any = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(rewards float64 [n], grad [n, D] or None, valid mask [n])."""
        n, dim = x0.shape[0], x0.shape[1]
        out = self.fn(x0, cond)  # exceptions propagate unchanged
        self.calls += 1
        grad = None
        if self.differentiable:
            if not isinstance(out, tuple) or len(out) != 2:
                raise RewardError(f"reward {self.name!r} is differentiable and must return (rewards, grad), "
                                  f"got {type(out).__name__}")
            out, grad = out
            if grad is None:
                raise RewardError(f"reward {self.name!r} is differentiable and must return (rewards, grad) "
                                  f"with grad an array of shape ({n}, {dim}), got grad=None")
        rewards = _real_array(out, self.name, "rewards", (n,))
        valid = np.isfinite(rewards)
        if grad is not None:
            # validated like the rewards: shape, real dtype, finiteness
            grad = _real_array(grad, self.name, "grad", (n, dim))
            valid &= np.isfinite(grad).all(axis=1)
        if not valid.all() and self.nonfinite == "raise":
            bad = int(np.flatnonzero(~valid)[0])
            raise RewardError(f"reward {self.name!r} returned a non-finite value at row {bad} "
                              f"({rewards[bad]!r}); pass Reward(..., nonfinite='skip') to drop such rows")
        return rewards, grad, valid


def _real_array(value: Any, name: str, what: str, shape: tuple[int, ...]) -> np.ndarray:
    """A reward's output (`what`: "rewards" or "grad") as float64 of `shape`; RewardError naming
    the reward for another shape or a non-real dtype (bool, object, complex, strings)."""
    arr = _as_array(value, name, what)
    if arr.shape != shape:
        raise RewardError(f"reward {name!r} returned {what} of shape {arr.shape}, expected {shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise RewardError(f"reward {name!r} returned {what} of dtype {arr.dtype}, expected real numbers")
    return arr.astype(np.float64)


def _as_array(value: Any, name: str, what: str) -> np.ndarray:
    if hasattr(value, "__dlpack__") and not isinstance(value, np.ndarray):
        try:
            value = np.from_dlpack(value)
        except (TypeError, BufferError, RuntimeError):  # e.g. a GPU tensor: let numpy try
            pass
    if isinstance(value, (list, tuple)):
        raise RewardError(f"reward {name!r} returned {what} as a {type(value).__name__}; return an array "
                          "(numpy, torch, ...) of shape [n]")
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001
        raise RewardError(f"reward {name!r} returned {what} that is not an array: {exc}") from None


def check_signature(fn: Any, name: str) -> None:
    """A reward is called as fn(x0, cond): refuse, with the fix, a callable that cannot take
    two positional arguments (a signature that cannot be read is let through)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError:
        fname = name if name.isidentifier() else "reward"
        params = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise TypeError(
            f"reward {name!r} takes {sig}, but rsm calls rewards as reward(x0, cond) "
            f"(cond is None for an unconditional model). It takes {len(params)} positional "
            f"argument(s); define it as def {fname}(x0, cond=None): ... or wrap it: "
            f"rsm.Reward(lambda x0, cond: {fname}(x0))") from None
