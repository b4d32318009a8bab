"""`Setting`: what a preset fixes on a path before any model is run, shared by rsm.Trainer and
rsm.methods.influence (which runs no model): the time grid, the path's stochastic and
deterministic samplers and their step coefficients, PCPO's std weight, the policy's dtype. The
coefficient rules (rsm.methods.coefficients) read the preset and these, nothing else."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..paths import FlowPath, VPPath
from ..sampling import step_coefficients, time_grid
from .presets import Preset


@dataclass(frozen=True)
class Setting:
    cfg: Preset
    path: Any
    ts: np.ndarray            # the time grid, steps + 1 points from t = 1 to 0
    stochastic: str           # the path's stochastic sampler: "sde" (flow) | "ddpm" (VP)
    deterministic: str        # "ode" (flow) | "ddim" (VP)
    sde: list                 # step coefficients of the stochastic sampler: w_i = |K_i| / std_i
    det_coef: list            # step coefficients of the deterministic sampler (DRaFT, VGG-Flow g_phi)
    pcpo_weight: float        # PCPO's DDPM std weight (THEORY.md §6.3.6); 0: the plain sampler
    dtype: str                # the policy's dtype (Psi is handed to the objective in it)


def resolve_path(cfg: Preset, path: Any) -> Any:
    """The path a preset runs on: `path`, or the preset's default (flow; VP linear), checked."""
    if path is None:
        path = FlowPath() if cfg["path"] == "flow" else VPPath("linear")
    if cfg["path"] not in ("any", path.kind):
        raise ValueError(f"method {cfg['name']!r} runs on the {cfg['path']} path; got {path!r}")
    return path


def make_setting(cfg: Preset, path: Any, dtype: str) -> Setting:
    """The Setting of preset `cfg` on `path` (resolved) for a policy of `dtype`."""
    ts = time_grid(cfg["steps"], path, cfg["grid"], cfg["shift"])
    stochastic = "sde" if path.kind == "flow" else "ddpm"
    deterministic = "ode" if path.kind == "flow" else "ddim"
    pcpo_weight = float(cfg.get("pcpo_weight", 0.0))
    return Setting(cfg=cfg, path=path, ts=ts, stochastic=stochastic, deterministic=deterministic,
                   sde=step_coefficients(path, ts, stochastic, noise_level=cfg["noise_level"],
                                         pcpo_weight=pcpo_weight),
                   det_coef=step_coefficients(path, ts, deterministic), pcpo_weight=pcpo_weight,
                   dtype=dtype)
