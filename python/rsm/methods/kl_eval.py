"""The comparable KL column of a fine-tuning run ("kl_path", THEORY.md §11): KL(P_theta || P_ref)
of the whole discretised path of one fixed SDE, on fixed evaluation noise, every `kl_every`
iterations (rsm.kl does the computation; this is when, on what, with which seed)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import kl as _kl
from . import streams


class PathKL:
    """The trainer's path-KL evaluation settings and its conditions (condition j mod M for
    trajectory j, whatever the iteration). `seed`: one seed for every evaluation, common random
    numbers along the run and across methods, a stream of its own (the training run is bitwise
    the same with or without it)."""

    def __init__(self, policy: Any, ref: Any, path: Any, sampler: str, conditions: Any,
                 train_seed: int, default_samples: int, default_grid: np.ndarray,
                 default_noise_level: float, kl_every: Any, kl_samples: Any, kl_grid: Any,
                 kl_noise_level: Any) -> None:
        if isinstance(kl_every, bool) or not isinstance(kl_every, (int, np.integer)) or kl_every < 0:
            raise ValueError(f"Trainer(): kl_every={kl_every!r} must be a non-negative int "
                             "(evaluate kl_path every kl_every iterations; 0: never)")
        self.every = int(kl_every)
        if kl_samples is None:
            kl_samples = min(256, default_samples)
        self.samples = _kl.check_samples(kl_samples, "Trainer", "kl_samples")
        self.grid = default_grid if kl_grid is None else _kl.check_grid(kl_grid, "Trainer", "kl_grid")
        if kl_noise_level is None:
            kl_noise_level = default_noise_level
        self.noise_level = _kl.check_noise_level(kl_noise_level, "Trainer", "kl_noise_level")
        self.seed = streams.mix(train_seed, 0, streams.KL_EVAL)
        self.policy, self.ref, self.path, self.sampler = policy, ref, path, sampler
        self.conditions = conditions

    def _cond(self, n: int) -> np.ndarray | None:
        c = self.conditions
        return None if c is None else np.ascontiguousarray(c[np.arange(n) % c.shape[0]])

    def terms(self, n: int, seed: int | None = None, ts: Any = None,
              noise_level: float | None = None) -> tuple[np.ndarray, int]:
        """rsm.kl.path_kl_terms with these settings; None: the defaults."""
        return _kl.path_kl_terms(self.policy, self.ref, self.path, self.grid if ts is None else ts,
                                 n, sampler=self.sampler,
                                 noise_level=self.noise_level if noise_level is None else noise_level,
                                 seed=self.seed if seed is None else seed, cond=self._cond(n))

    def columns(self, iteration: int) -> dict[str, Any]:
        """The evaluation columns of iteration `iteration`'s history row."""
        if self.every == 0 or iteration % self.every:
            return {"kl_path": float("nan"), "eval_nfe": 0, "eval_seconds": 0.0}
        start = time.perf_counter()
        terms, nfe = self.terms(self.samples)
        return {"kl_path": float(terms.sum()), "eval_nfe": nfe, "eval_seconds": time.perf_counter() - start}
