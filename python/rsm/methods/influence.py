"""The per-timestep optimization strength of a preset (THEORY.md §4.3), read off the coefficient
rules themselves on synthetic rows: no model, no Trainer."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import conventions as _conv
from ..geometry import BatchGeometry, trained_steps, tree_split_steps
from ..objective import ROW_FIELDS, objective
from ..tree import depth_pruned_steps
from .batch import Batch, Row
from .coefficients import RULES
from .presets import get
from .setting import make_setting, resolve_path


def _rows_per_root(cfg: Any, steps: int) -> list[float]:
    """Trained rows per root at each step times the per-row multiplier (k_avg / k_i)."""
    if cfg["rollout"] == "tree":   # distinct transitions per root at each step (trained ones)
        splits = tree_split_steps(steps, cfg["split"], cfg.get("split_steps"))
        spec = trained_steps(cfg.get("train_steps", "all"), steps)
        spec = [i for i in spec if i not in depth_pruned_steps(cfg, splits, 0)]  # width: ignored
        return [float(cfg["branch"] ** sum(1 for s in splits if s <= i)) if i in spec else 0.0
                for i in range(steps)]
    if cfg["rollout"] == "refl":  # one trained step, uniform among the last late_steps
        late = cfg["late_steps"]
        return [1.0 / late if i >= steps - late else 0.0 for i in range(steps)]
    if cfg["rollout"] == "branch":
        budget = list(cfg["budget"]) + [0] * (steps - len(cfg["budget"]))
        active = [k for k in budget if k > 0]
        k_avg = sum(active) / len(active)
        return [k * (k_avg / k) if k > 0 else 0.0 for k in budget]
    if cfg.get("mix_window") is not None:   # MixGRPO: the window's rows, averaged over its cycle
        every, last = int(cfg["mix_interval"]), steps - 2
        windows = [_conv.mix_window(cfg, steps, k * every)
                   for k in range(last // int(cfg["mix_stride"]) + 1)]
        return [sum(b <= i < e for b, e in windows) / len(windows) for i in range(steps)]
    spec = cfg.get("train_steps", "all")
    # the released subset rules (rsm.conventions): trunks, one step per sample, stratified
    rule = cfg.get("timestep_subset")
    subset = _conv.expected_rows(rule, spec, steps)
    if subset is not None and (isinstance(spec, float) or rule == "one_per_sample"):
        return subset
    named = {"all": range(steps), "interior": range(1, steps), "no_last": range(steps - 1)}
    if isinstance(spec, str):
        trained = set(named[spec])
        return [1.0 if i in trained else 0.0 for i in range(steps)]
    if isinstance(spec, float):  # expected rows per step of a random subset of 0..S-2
        per_sample = cfg.get("timestep_subset") == "per_sample"   # DanceGRPO: int(f (S - 1))
        frac = _conv.subset_count(spec, steps, per_sample) / (steps - 1)
        return [frac] * (steps - 1) + [0.0]
    return [1.0 if i in spec else 0.0 for i in range(steps)]


def influence(method: str, path: Any = None, **overrides: Any) -> dict[str, np.ndarray]:
    """Per-timestep optimization strength of a preset, from the engine itself (THEORY.md §4.3):

      kappa_i  the factor between the unit estimator (A z = e for zeroth-order rows, g = e for
               first-order rows) and the cotangent dL/du the objective returns at theta = theta_old
               (u = u_old = u_ref), per row, in output space;
      n_i      trained rows per root at step i times the per-row multiplier (k_avg / k_i);
      h_i      kappa_i n_i / mean_j(kappa_j n_j)   (the normalized influence metric);
      c1, gamma, c2, conv
               the per-row coefficients the trainer hands the objective at step i (docs/THEORY.md
               §4.1: C1, gamma, the relative trust-region weight C2 — invariant under the change
               of output space — and the output-space conversion factor); NaN where the step
               is not trained;
      psi_scale
               first-order rows: |Psi_hat| per unit reward gradient g in the row's output space
               (the estimator's time weighting, e.g. lambda eta(t) for VGG-Flow); NaN otherwise.

    No models are evaluated: the rows are synthetic, the coefficients are the trainer's
    (rsm.methods.coefficients.RULES), on the Setting a Trainer of this preset would have."""
    if "sampler_steps" in overrides:   # the sampler's step count, as rsm.finetune names it
        overrides = {**overrides, "steps": overrides.pop("sampler_steps")}
    cfg = get(method, **overrides)
    path = resolve_path(cfg, path)
    s = make_setting(cfg, path, "float64")
    group = cfg["branch"] ** cfg["split"] if cfg["rollout"] == "tree" else 2
    BatchGeometry.from_method(cfg, 1, group, dim=1,   # the checks a Trainer would make
                              deterministic={i for i, c in enumerate(s.sde) if not c["std"] > 0})
    steps = cfg["steps"]
    rows_per_root = _rows_per_root(cfg, steps)
    kappa = np.zeros(steps)
    fields = {name: np.full(steps, np.nan) for name in ("c1", "gamma", "c2", "conv", "psi_scale")}
    one = np.ones((1, 1))
    for i in range(steps):
        if rows_per_root[i] == 0:
            continue  # not a training step of this method
        if cfg.through_sampler:
            kappa[i] = 1.0 if i >= steps - cfg["truncation"] else 0.0
            continue
        needs_density = cfg["family"] == "zeroth-order" or cfg["estimator"] in ("fo-residual", "fo-next")
        if needs_density and not s.sde[i]["std"] > 0:
            continue  # a deterministic step (std = 0) is never a training row of these methods
        batch = Batch(mask=np.ones(1, bool), valid=np.ones(1, bool), adv=np.ones(1),
                      grad=one.copy(), grad_rows=[one.copy()] * steps,
                      adjoint={j: one.copy() for j in range(steps)})
        row = Row(step=i, x=np.zeros((1, 1)), u_old=np.zeros((1, 1)), noise=one.copy(),
                  traj=np.zeros(1, dtype=np.int64), index=i)
        coef, form, extra = RULES[cfg["estimator"]](s, row, batch, 1)
        for name in ("c1", "gamma", "c2", "conv"):
            fields[name][i] = coef[0, list(ROW_FIELDS).index(name)]
        if form != "score_matching":
            # ratio forms (PPO, log-ratio, matching) carry C1 gamma inside kappa (their clipped
            # surrogate has no separate C1 and gamma); their trust region is the clip, C2 = 0
            fields["c1"][i] = fields["gamma"][i] = np.nan
            fields["c2"][i] = 0.0
        if cfg["family"] != "zeroth-order" and "psi" in extra:
            fields["psi_scale"][i] = abs(float(np.asarray(extra["psi"]).reshape(-1)[0]))
        extra.pop("anchor_current", None)   # ReFL: u = u_ref = 0 here anyway
        coef[:, list(ROW_FIELDS).index("kl")] = 0.0
        out = objective(form, np.zeros((1, 1)), coef, u_ref=np.zeros((1, 1)), normalizer=1.0,
                        mean_over_dims=False, linear_only=cfg.get("reweight") == "guard", **extra)
        kappa[i] = abs(float(np.from_dlpack(out["cotangent"])[0, 0]))
    strength = kappa * np.asarray(rows_per_root)
    mean = strength.mean()
    return {"t": np.asarray(s.ts[:-1]), "kappa": kappa, "rows_per_root": np.asarray(rows_per_root),
            "h": strength / mean if mean > 0 else strength, **fields}
