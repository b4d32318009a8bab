"""Rewards: user callables (black-box or differentiable) and built-in analytic toy rewards (C).

A reward is called once per batch as `reward(x0, cond)`, where x0 is an rsm.Tensor [n, D]
(np.from_dlpack / torch.from_dlpack give zero-copy views) and cond is None or [n, C]. It returns
rewards[n] (black-box) or, for `Reward(fn, differentiable=True)`, (rewards[n], grad[n, D])."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import _C

_KINDS = {"linear": 0, "quadratic": 1, "distance": 2, "gmm_logpdf": 3, "ring": 4}


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
        self.fn = fn
        self.differentiable = bool(differentiable)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.nonfinite = nonfinite
        self.calls = 0

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


class AnalyticReward(Reward):
    """A built-in toy reward evaluated in C, with its exact gradient (differentiable)."""

    def __init__(self, kind: str, params: Any, *, name: str | None = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"AnalyticReward(): kind must be one of {sorted(_KINDS)}, got {kind!r}")
        self.kind = kind
        self.params = np.ascontiguousarray(np.asarray(params, dtype=np.float64).ravel())
        code = _KINDS[kind]

        def evaluate(x0: Any, cond: Any = None) -> tuple[np.ndarray, np.ndarray]:
            r, g = _C.reward(code, self.params, x0, True)
            return np.from_dlpack(r), np.from_dlpack(g)

        super().__init__(evaluate, differentiable=True, name=name or kind)

    def value(self, x: Any) -> np.ndarray:
        r, _ = _C.reward(_KINDS[self.kind], self.params, np.ascontiguousarray(x), False)
        return np.from_dlpack(r)


def linear(c: Any, b: float = 0.0) -> AnalyticReward:
    """r(x) = c.x + b (RSM-SPEC §8.1 uses c = (-0.5, 0), b = 3)."""
    return AnalyticReward("linear", np.concatenate([np.asarray(c, np.float64).ravel(), [b]]))


def quadratic(center: Any, scale: float = 1.0) -> AnalyticReward:
    """r(x) = -scale |x - center|^2 / 2."""
    return AnalyticReward("quadratic", np.concatenate([np.asarray(center, np.float64).ravel(), [scale]]))


def distance(point: Any) -> AnalyticReward:
    """r(x) = -|x - point|."""
    return AnalyticReward("distance", np.asarray(point, np.float64).ravel())


def ring(radius: float = 1.0, scale: float = 1.0) -> AnalyticReward:
    """r(x) = -scale (|x| - radius)^2."""
    return AnalyticReward("ring", [radius, scale])


def gmm_logpdf(means: Any, stds: Any, weights: Any) -> AnalyticReward:
    """r(x) = log sum_k w_k N(x; mu_k, s_k^2 I)."""
    means = np.atleast_2d(np.asarray(means, np.float64))
    k = means.shape[0]
    stds = np.broadcast_to(np.asarray(stds, np.float64), (k,))
    weights = np.broadcast_to(np.asarray(weights, np.float64), (k,))
    return AnalyticReward("gmm_logpdf", np.concatenate([[k], means.ravel(), stds, weights / weights.sum()]))


def __getattr__(name: str):
    """The image rewards (rsm.image_rewards) are reachable here too: rsm.rewards.jpeg_compressibility,
    rsm.rewards.digit_probability, rsm.rewards.geneval, ... (imported on first use)."""
    from . import image_rewards

    if name in image_rewards.__all__:
        return getattr(image_rewards, name)
    raise AttributeError(f"module 'rsm.rewards' has no attribute {name!r}")
