"""Sampling: ODE (Euler, Heun), Flow-GRPO's SDE, DDIM(eta) and DDPM, with exact transition
log-probabilities, stochastic windows and branching (THEORY.md §2; math in csrc/sampler*.c)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _C
from ._args import as_cond, finite_float, num_classes_of, positive_int, rows_of, seed_int

SAMPLERS = ("ode", "euler", "heun", "sde", "sde-const", "ddim", "ddpm")


def time_grid(steps: int, path: Any = None, grid: str = "uniform", shift: float = 3.0,
              num_train_steps: int = 1000) -> np.ndarray:
    """Decreasing times ts[steps + 1] from noise to data.

    grid:
      "uniform"  linspace(1, 0, steps + 1)
      "shift"    SD3's resolution shift t -> s t / (1 + (s - 1) t) of the uniform grid
      "sd3"      diffusers' FlowMatchEuler grid: shift(linspace(1, shift(1/T), steps)), then 0
                 (the SD3.5 training grid of THEORY.md §2.2 for steps = 10, shift = 3)
      "leading"  DDIM's "leading" spacing for discrete VP schedules with steps_offset 1:
                 k_i = (steps - 1 - i) (T // steps) + 1, then 0 (t = k / T; THEORY.md §2.1)
    """
    steps = positive_int(steps, "time_grid", "steps")

    def shifted(t: np.ndarray) -> np.ndarray:
        return shift * t / (1.0 + (shift - 1.0) * t)

    if grid == "uniform":
        return np.linspace(1.0, 0.0, steps + 1)
    if grid == "shift":
        return shifted(np.linspace(1.0, 0.0, steps + 1))
    if grid == "sd3":
        low = shifted(np.array(1.0 / num_train_steps))
        return np.concatenate([shifted(np.linspace(1.0, float(low), steps)), [0.0]])
    if grid == "leading":
        T = getattr(path, "num_train_steps", None) or num_train_steps
        ratio = T // steps
        ks = (np.arange(steps)[::-1] * ratio + 1).astype(np.float64)
        return np.concatenate([ks / T, [0.0]])
    raise ValueError(f"time_grid(): grid must be 'uniform', 'shift', 'sd3' or 'leading', got {grid!r}")


@dataclass
class Trajectory:
    """A sampling run. N = rows after branching, S = steps, D = data dimension.

    xs[S+1, N, D] states (xs[0] the prior draw at ts[0]), ts[S+1], means[S, N, D] transition means,
    stds[S], log_probs[S, N] exact Gaussian log-density of each taken transition summed over D
    (0 for deterministic steps), noises[S, N, D] the z used, outputs[S, N, D] the network outputs,
    rows[S+1] distinct states per time (branching), nfe network evaluations."""

    xs: np.ndarray
    ts: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    log_probs: np.ndarray
    noises: np.ndarray
    outputs: np.ndarray
    rows: np.ndarray
    nfe: int
    sampler: dict = field(default_factory=dict)
    reward: Any = None   # what sample(..., reward=fn) returned from fn(x)
    x_device: Any = None  # a device model's final states (a device rsm.Tensor has no indexing)

    @property
    def x(self) -> np.ndarray:
        return self.xs[-1] if self.x_device is None else self.x_device

    def __repr__(self) -> str:   # shapes only, not the arrays (rsm.display)
        from .display import trajectory_repr

        return trajectory_repr(self)

    def _repr_html_(self) -> str:
        from .display import trajectory_html

        return trajectory_html(self)

    @property
    def steps(self) -> int:
        return len(self.ts) - 1

    def nodes(self) -> np.ndarray:
        """nodes[S+1, N]: id of the distinct state each row is at, per time (shared prefixes of a
        branching run have the same id)."""
        n_final = self.xs.shape[1]
        out = np.empty((len(self.rows), n_final), dtype=np.int64)
        offset = 0
        for i, r in enumerate(self.rows):
            out[i] = offset + np.arange(n_final) // (n_final // int(r))
            offset += int(r)
        return out

    def log_prob_under(self, model: Any, path: Any, cond: Any = None) -> np.ndarray:
        """Recompute log_probs[S, N] of the recorded transitions under another model (the policy
        ratio primitive): same mean and density code as sampling, so the sampling model gives
        bitwise the recorded values. Deterministic steps give 0."""
        out = np.zeros_like(self.log_probs)
        cfg = self.sampler
        for i in range(self.steps):
            if not self.stds[i] > 0:
                continue
            lp, _, _ = _C.transition_log_prob(
                _core_of(model), path._core, cfg["kind"], self.ts, i, self.xs[i], self.xs[i + 1],
                cfg["noise_level"], cfg["eta"], _model_cond(model, cond, self.xs[i].shape[0]),
                cfg["window_begin"], cfg["window_end"], cfg.get("pcpo_weight", 0.0))
            out[i] = np.from_dlpack(lp)
        return out


def _host_view(t: Any) -> Any:
    """A result of the C loops: a numpy view when it is on the host; a device rsm.Tensor (a
    model on a device: DLPack, zero-copy into torch.cuda / CuPy / JAX) is returned as is."""
    if int(t.__dlpack_device__()[0]) == 1:
        return np.from_dlpack(t)
    return t


def _core_of(model: Any) -> Any:
    core = getattr(model, "_core", None)
    if core is None:
        raise TypeError(f"expected an rsm model (rsm.MLP, rsm.GaussianMixtureModel), got {type(model).__name__}")
    return core


def _model_cond(model: Any, cond: Any, n: int, func: str = "sample") -> Any:
    """A model's own condition format -> the core's [n, cond_dim] reals: models with a
    `_prepare_cond` hook (DiT, Guided) convert class ids themselves; a class-conditional MLP
    (cond_dim 1) takes class ids [n] too; anything else goes to the C checks unchanged."""
    if cond is None:
        return None
    prepare = getattr(model, "_prepare_cond", None)
    if prepare is not None:
        return prepare(cond, n)
    return _class_ids(model, cond, func)


def _class_ids(model: Any, cond: Any, func: str) -> Any:
    """Class ids [n] for a class-conditional model (cond_dim == 1) as the C layout [n, 1];
    anything else goes to the C checks unchanged."""
    if cond is None or getattr(model, "cond_dim", 0) != 1:
        return cond
    shape = getattr(cond, "shape", None)
    if shape is None:
        shape = np.shape(cond)
    if len(shape) != 1:
        return cond
    return as_cond(cond, int(shape[0]), 1, model.dtype, func, num_classes=num_classes_of(model))


def _path_core(path: Any, func: str) -> Any:
    core = getattr(path, "_core", None)
    if not isinstance(core, _C.PathCore):
        raise TypeError(f"{func}(): path must be an rsm path (rsm.FlowPath(), rsm.VPPath()), "
                        f"got {type(path).__name__}")
    return core


def _sampler_kind(sampler: str, eta: float | None, func: str = "sample") -> tuple[str, float]:
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"{func}(): sampler must be one of {SAMPLERS}, got {sampler!r}")
    if eta is not None:
        eta = finite_float(eta, func, "eta", 0.0)
    if sampler == "ode":
        return "euler", 0.0
    if sampler == "ddpm":
        return "ddim", 1.0
    if sampler == "ddim":
        return "ddim", 0.0 if eta is None else float(eta)
    return sampler, 0.0 if eta is None else float(eta)


def sample(model: Any, n: int, path: Any, sampler: str = "ode", steps: int = 20, *,
           noise_level: float = 0.7, eta: float | None = None, cond: Any = None, seed: int = 0,
           return_trajectory: bool = False, x_init: Any = None, grid: str | None = None,
           shift: float = 3.0, ts: Any = None, sde_window: tuple[int, int] | None = None,
           branch_steps: Sequence[int] | None = None, branch_factor: int = 1,
           pcpo_weight: float = 0.0, reward: Any = None, row_offset: int = 0) -> Any:
    """Draw n samples from `model` along `path`.

    sampler: "ode"/"euler" and "heun" (probability-flow ODE), "sde" (Flow-GRPO's SDE with noise
    level a = noise_level), "sde-const" (the same SDE with a constant s~ = noise_level:
    DanceGRPO's flux_step, its eta), "ddim" (eta, default 0) and "ddpm" (DDIM with eta = 1).
    ts (or grid/shift) sets the time grid (see time_grid; discrete VP schedules default to
    "leading"). sde_window=(i, j) keeps the steps i..j-1 stochastic and the rest deterministic.
    branch_steps/branch_factor split every row into branch_factor children before each listed step.
    pcpo_weight=w > 0 (DDIM/DDPM) replaces the step std by PCPO's (THEORY.md §6.3.6, times eta).
    reward: a callable fn(x) that the C sampling call invokes once, at its end, with the final
    samples x[N, D] (an rsm.Tensor over the returned buffer; the interpreter lock is held only
    during the call); what it returns is Trajectory.reward, or the second item of (x, reward)
    without return_trajectory; what it raises propagates unchanged.
    row_offset=a: these n rows are rows a .. a + n - 1 of a larger run with the same seed (their
    prior and step noise are those rows' draws): data-parallel shards (rsm.distributed).
    Returns x[N, D] (an rsm.Tensor), or a Trajectory with return_trajectory=True.
    """
    # Kept at the Python level on purpose (issue 12: one place per argument unless a Python
    # check says it better): these convert Python values with the API's one vocabulary (a bool or
    # a float where an int is meant is a TypeError, sizes above 2**40 are refused, seeds are ints
    # in [0, 2**64)), which the binding's argument parsing cannot (it truncates floats and wraps
    # seeds); the core still checks every value it uses (grid, window, branching) and names it.
    core = _core_of(model)
    path_core = _path_core(path, "sample")
    n = positive_int(n, "sample", "n")
    steps = positive_int(steps, "sample", "steps")
    seed = seed_int(seed, "sample")
    kind, eta_value = _sampler_kind(sampler, eta)
    noise_level = finite_float(noise_level, "sample", "noise_level", 0.0)
    branch_factor = positive_int(branch_factor, "sample", "branch_factor")
    pcpo_weight = finite_float(pcpo_weight, "sample", "pcpo_weight", 0.0)
    if ts is None:
        if grid is None:
            grid = "leading" if getattr(path, "discrete", False) else "uniform"
        ts = time_grid(steps, path, grid, shift)
    ts = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"sample(): ts must be a 1-d grid with >= 2 points, got shape {ts.shape}")
    window_begin, window_end = (0, ts.shape[0] - 1) if sde_window is None else sde_window
    branch = list(branch_steps) if branch_steps is not None else None
    cond = _model_cond(model, cond, n, "sample")
    # reward: checked by _C.sample ("sample(): reward must be callable or None, got ...")
    row_offset = positive_int(row_offset, "sample", "row_offset", minimum=0)
    out = _C.sample(core, path_core, n, kind, ts, float(noise_level), eta_value, int(seed),
                    x_init, cond, int(window_begin), int(window_end), branch, int(branch_factor),
                    bool(return_trajectory), float(pcpo_weight), reward, row_offset)
    if not return_trajectory:
        return out["x"] if reward is None else (out["x"], out["reward"])
    config = {"kind": kind, "noise_level": float(noise_level), "eta": eta_value,
              "window_begin": int(window_begin), "window_end": int(window_end),
              "branch_steps": branch or [], "branch_factor": int(branch_factor), "seed": int(seed),
              "pcpo_weight": float(pcpo_weight)}
    arrays = {k: _host_view(out[k]) for k in ("xs", "means", "stds", "log_probs", "noises", "outputs", "rows")}
    on_device = isinstance(arrays["xs"], _C.Tensor) and arrays["xs"].__dlpack_device__()[0] != 1
    return Trajectory(ts=np.asarray(ts), nfe=int(out["nfe"]), sampler=config,
                      reward=out["reward"], x_device=out["x"] if on_device else None, **arrays)


def log_prob(model: Any, path: Any, x: Any, x_next: Any, step: int, ts: Any, sampler: str = "sde",
             *, noise_level: float = 0.7, eta: float | None = None, cond: Any = None,
             sde_window: tuple[int, int] | None = None,
             pcpo_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """log pi_model(x_next | x) of transition `step` of the grid ts under `sampler`, per row, and
    the transition mean: the policy-ratio primitive (same code as sampling)."""
    core = _core_of(model)
    path_core = _path_core(path, "log_prob")
    kind, eta_value = _sampler_kind(sampler, eta, "log_prob")
    noise_level = finite_float(noise_level, "log_prob", "noise_level", 0.0)
    step = positive_int(step, "log_prob", "step", minimum=0)
    rows_of(x, "log_prob")  # None, a str, a scalar: a clear error before the C conversion
    cond = _model_cond(model, cond, rows_of(x, "log_prob"), "log_prob")
    ts = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"log_prob(): ts must be a 1-d grid with >= 2 points, got shape {ts.shape}")
    wb, we = (0, ts.shape[0] - 1) if sde_window is None else sde_window
    lp, mean, _ = _C.transition_log_prob(core, path_core, kind, ts, step, x,
                                         x_next, float(noise_level), eta_value, cond, int(wb), int(we),
                                         finite_float(pcpo_weight, "log_prob", "pcpo_weight", 0.0))
    return _host_view(lp), _host_view(mean)


def step_coefficients(path: Any, ts: Any, sampler: str = "sde", *, noise_level: float = 0.7,
                      eta: float | None = None, pcpo_weight: float = 0.0) -> list[dict]:
    """Per-step Gaussian coefficients (mu = A x + K u, std) of a sampler on a grid
    (pcpo_weight > 0: PCPO's DDIM std, THEORY.md §6.3.6)."""
    kind, eta_value = _sampler_kind(sampler, eta, "step_coefficients")
    ts = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    pcpo_weight = finite_float(pcpo_weight, "step_coefficients", "pcpo_weight", 0.0)
    return _C.step_coefficients(_path_core(path, "step_coefficients"), kind, ts, float(noise_level), eta_value,
                                0, -1, pcpo_weight)
