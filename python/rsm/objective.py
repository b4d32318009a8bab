"""The RSM objective (C engine) from Python: one loss, its cotangent on the model output, and the
clipped ratio forms it subsumes (THEORY.md §4-§5). See csrc/objective.h for the formulas."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import _C

ROW_FIELDS = ("conv", "space", "c1", "gamma", "c2", "adv", "w", "ratio_scale", "term_scale",
              "post", "clip_eps", "kl", "w_kl", "weight")
FORMS = ("score_matching", "ppo", "log_ratio", "matching")
_DEFAULTS = {"conv": 1.0, "space": 1.0, "c1": 1.0, "gamma": 1.0, "c2": 0.0, "adv": 0.0, "w": 1.0,
             "ratio_scale": 1.0, "term_scale": 1.0, "post": 1.0, "clip_eps": 0.0, "kl": 0.0,
             "w_kl": None, "weight": 1.0}


def row_coefficients(rows: int, **fields: Any) -> np.ndarray:
    """A [rows, 14] float64 matrix of per-row coefficients; each field a scalar or [rows] array.
    Unknown names raise; w_kl defaults to w."""
    unknown = set(fields) - set(ROW_FIELDS)
    if unknown:
        raise ValueError(f"row_coefficients(): unknown fields {sorted(unknown)}; known: {ROW_FIELDS}")
    coef = np.empty((rows, len(ROW_FIELDS)), dtype=np.float64)
    for j, name in enumerate(ROW_FIELDS):
        value = fields.get(name, _DEFAULTS[name])
        if value is None:  # w_kl
            value = fields.get("w", _DEFAULTS["w"])
        coef[:, j] = np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,))
    if not np.all(np.isfinite(coef)):
        raise ValueError("row_coefficients(): coefficients must be finite")
    return coef


def objective(form: str, u: Any, coef: np.ndarray, *, u_old: Any = None, u_ref: Any = None,
              psi: Any = None, noise: Any = None, anchor_old: bool = False,
              linear_only: bool = False, mean_over_dims: bool = False,
              normalizer: float = 1.0) -> Mapping[str, Any]:
    """Loss and cotangent dL/du of the RSM objective (form 'score_matching') or of a clipped ratio
    form ('ppo', 'log_ratio', 'matching'). Returns dict(loss, cotangent, log_ratio, active,
    clip_fraction, kl)."""
    if form not in FORMS:
        raise ValueError(f"objective(): form must be one of {FORMS}, got {form!r}")
    return _C.objective(form, u, u_old, u_ref, psi, noise, np.ascontiguousarray(coef, np.float64),
                        bool(anchor_old), bool(linear_only), bool(mean_over_dims), float(normalizer))


def group_advantages(rewards: Any, keys: Any = None, *, eps: float = 1e-4, adv_clip: float = 5.0,
                     center_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GRPO advantages A = clip((r - mean_g) / (std_g + eps), +-adv_clip) per group key (population
    std); zero-std groups get A = 0 and mask False. center_only: A = r - mean_g."""
    rewards = np.ascontiguousarray(np.asarray(rewards, dtype=np.float64))
    if keys is not None:
        keys = np.ascontiguousarray(np.asarray(keys, dtype=np.int64))
    adv, mask = _C.group_advantages(rewards, keys, float(eps), float(adv_clip), bool(center_only))
    return np.from_dlpack(adv), np.from_dlpack(mask)
