"""Probability paths: rectified flow and VP diffusion (THEORY.md §2).

    x_t = alpha(t) x0 + sigma(t) eps,   t = 1 noise, t = 0 data.

A path knows its coefficients, its native network parameterization (velocity for flow, eps for VP)
and converts predictions among eps / velocity / score / Tweedie x0-hat (all computed in C)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._args import as_times, rows_of

PARAMETERIZATIONS = ("eps", "velocity", "x0", "score")


def _real_dtype(x: Any, func: str, name: str) -> str:
    """'float32' or 'float64' from x's dtype; anything else is a TypeError naming the argument
    (matching on the end of the name: "64" in "int64" must not pick float64)."""
    dtype = str(getattr(x, "dtype", "float32"))
    for real in ("float64", "float32"):
        if dtype.endswith(real):
            return real
    raise TypeError(f"{func}(): {name} must be a float32 or float64 array, got dtype {dtype}")


class Path:
    """Base class; use :class:`FlowPath` or :class:`VPPath`."""

    kind: str
    native: str

    def __init__(self, core: "_C.PathCore") -> None:
        self._core = core

    def coef(self, t: float) -> dict:
        """alpha, sigma, their time derivatives and alpha_bar = alpha^2 at time t."""
        return self._core.coef(float(t))

    def alpha(self, t: float) -> float:
        return self.coef(t)["alpha"]

    def sigma(self, t: float) -> float:
        return self.coef(t)["sigma"]

    def snr(self, t: float) -> float:
        """alpha^2 / sigma^2 (inf at t = 0)."""
        c = self.coef(t)
        return c["alpha"] ** 2 / c["sigma"] ** 2 if c["sigma"] > 0 else float("inf")

    def convert(self, x: Any, u: Any, t: Any, src: str, dst: str) -> _C.Tensor:
        """Express the prediction `u` (given in parameterization `src`) of the states x[n, d] at
        times t in parameterization `dst` ('eps', 'velocity', 'x0', 'score')."""
        for name, value in (("src", src), ("dst", dst)):
            if value not in PARAMETERIZATIONS:
                raise ValueError(f"convert(): {name} must be one of {PARAMETERIZATIONS}, got {value!r}")
        n = rows_of(x, "convert")
        dtype = _real_dtype(x, "convert", "x")
        return self._core.convert(src, dst, x, u, as_times(t, n, dtype, "convert"), dtype)

    def x0_hat(self, x: Any, u: Any, t: Any) -> _C.Tensor:
        """Tweedie's E[x0 | x_t] from a native prediction u."""
        return self.convert(x, u, t, self.native, "x0")

    def score(self, x: Any, u: Any, t: Any) -> _C.Tensor:
        """grad log p_t(x_t) = -eps_hat / sigma from a native prediction u."""
        return self.convert(x, u, t, self.native, "score")

    def noise(self, x0: Any, eps: Any, t: Any) -> _C.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps for x0, eps [n, d] and t a scalar or [n] (in C)."""
        dtype = _real_dtype(x0, "noise", "x0")
        n = rows_of(x0, "noise")
        return self._core.noise(x0, eps, as_times(t, n, dtype, "noise"), dtype)


class FlowPath(Path):
    """Rectified flow: x_t = (1 - t) x0 + t eps; the network predicts the velocity eps - x0."""

    kind = "flow"
    native = "velocity"

    def __init__(self) -> None:
        super().__init__(_C.PathCore("flow"))

    def __repr__(self) -> str:
        return "FlowPath()"


class VPPath(Path):
    """Variance-preserving diffusion: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; eps-prediction.

    schedule:
      "linear"         continuous VP-SDE, beta(t) = beta_min + t (beta_max - beta_min) (0.1, 20)
      "cosine"         Nichol & Dhariwal's abar(t) (t scaled by 0.999 so abar(1) > 0)
      "scaled_linear"  discrete table, betas = linspace(sqrt(b0), sqrt(b1), T)^2 (SD1.5:
                       b0 = 0.00085, b1 = 0.012, T = 1000), abar(k / T) = prod_{j<=k} (1 - beta_j)
      "ddpm_linear"    discrete table, betas = linspace(b0, b1, T) (DDPM: 1e-4, 0.02, 1000)
      "discrete"       your own `betas`
    """

    kind = "vp"
    native = "eps"

    def __init__(self, schedule: str = "linear", *, beta_min: float = 0.1, beta_max: float = 20.0,
                 num_train_steps: int = 1000, beta_start: float | None = None,
                 beta_end: float | None = None, betas: Any = None) -> None:
        self.schedule = schedule
        self.num_train_steps = None
        if schedule in ("linear", "cosine"):
            core = _C.PathCore("vp", schedule, beta_min, beta_max)
        elif schedule in ("scaled_linear", "ddpm_linear", "discrete"):
            if schedule == "scaled_linear":
                b0 = 0.00085 if beta_start is None else beta_start
                b1 = 0.012 if beta_end is None else beta_end
                betas = np.linspace(np.sqrt(b0), np.sqrt(b1), num_train_steps, dtype=np.float64) ** 2
            elif schedule == "ddpm_linear":
                b0 = 1e-4 if beta_start is None else beta_start
                b1 = 0.02 if beta_end is None else beta_end
                betas = np.linspace(b0, b1, num_train_steps, dtype=np.float64)
            elif betas is None:
                raise ValueError("VPPath(): schedule='discrete' needs betas")
            betas = np.ascontiguousarray(betas, dtype=np.float64)
            if betas.ndim != 1:
                raise ValueError(f"VPPath(): betas must be 1-d, got shape {betas.shape}")
            self.num_train_steps = int(betas.shape[0])
            core = _C.PathCore("vp", "discrete", 0.1, 20.0, betas)
        else:
            raise ValueError(
                "VPPath(): schedule must be 'linear', 'cosine', 'scaled_linear', 'ddpm_linear' or "
                f"'discrete', got {schedule!r}")
        super().__init__(core)

    @property
    def discrete(self) -> bool:
        return self.num_train_steps is not None

    def __repr__(self) -> str:
        return f"VPPath(schedule={self.schedule!r})"


def get(name: str, **kwargs: Any) -> Path:
    """A path by name: 'flow' or 'vp' (kwargs go to VPPath)."""
    if name == "flow":
        return FlowPath()
    if name == "vp":
        return VPPath(**kwargs)
    raise ValueError(f"unknown path {name!r}: expected 'flow' or 'vp'")
