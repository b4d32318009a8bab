"""Rewards: user callables (black-box or differentiable) and built-in analytic toy rewards (C).

A reward is called once per batch as `reward(x0, cond)`, where x0 is an rsm.Tensor [n, D]
(np.from_dlpack / torch.from_dlpack give zero-copy views) and cond is None or [n, C]. It returns
rewards[n] (black-box) or, for `Reward(fn, differentiable=True)`, (rewards[n], grad[n, D])."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._reward import Reward, RewardError  # noqa: F401  (rsm.rewards.Reward)

_KINDS = {"linear": 0, "quadratic": 1, "distance": 2, "gmm_logpdf": 3, "ring": 4}


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
    """r(x) = c.x + b (THEORY.md §8.1 uses c = (-0.5, 0), b = 3)."""
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
