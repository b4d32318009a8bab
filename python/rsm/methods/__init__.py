"""Fine-tuning methods as presets of the one RSM objective (THEORY.md §6, §12.6).

A preset (rsm.methods.Preset, frozen and typed) holds the hyper-parameters rsm.Trainer reads: the rollout (sampler, steps, noise
level, branching budget), the estimator of the value guidance Psi, and how the objective weighs it
(form, reweighting, clip threshold, KL anchor). Every key can be overridden by keyword in
rsm.finetune / rsm.Trainer.

Families: "zeroth-order" (black-box rewards: group advantages times the injected noise, through
the PPO / log-ratio / matching forms of the objective), "first-order" (reward gradients: the RSM
score-matching form onto s_ref + gamma Psi), "pathwise" (DRaFT: reward back-propagated through the
sampler, DRaFT-K and ReFL; baselines outside RSM).

Rollouts: "sde" (full stochastic trajectories), "branch" (ODE root + single-step SDE branches with
a budget k_i), "tree" (Branch-GRPO: SDE everywhere, every node splits into `branch` children at
`split` evenly spaced steps; node advantages from the rewards of the node's leaves, fused by their
mean or by path probability, normalised per (root, depth); width/depth pruning, see rsm.tree),
"ode" (first-order), "refl" (ODE down to a random late step, one Tweedie jump).

Not yet here: SQDF's consistency-model refinement and replay buffer (auxiliary in THEORY.md §6.2).

The package, one concept per module:
  presets      Preset, the preset table, BUDGETS, names / get
  options      the option checks (one vocabulary) and the contradictions between options
  batch        Batch, what a rollout returns
  rollouts/    one module per rollout kind (sde, branch, tree, ode, refl), each -> Batch
  estimates    after the reward: advantages (zeroth order) or reward-gradient estimates
  coefficients the coefficient rules, one pure function per estimator (RULES), REWEIGHTS
  pathwise     DRaFT-K's backward through the sampler, Adjoint Matching's lean adjoint
  update       the blocks of the C update and the step statistics
  setting      Setting: the grid, samplers and step coefficients a preset fixes on a path
  kl_eval      the comparable path-KL column (kl_path)
  influence    the per-timestep strength of a preset, from the rules, without a Trainer
  streams      the random streams' seeds and salts
rsm.Trainer (rsm/trainer.py) runs one iteration through them."""
from __future__ import annotations

from typing import Any

import numpy as np

from .batch import Batch
from .influence import influence
from .presets import BUDGETS, PRESETS, SOURCES, Preset, get, names

__all__ = ["Batch", "BUDGETS", "PRESETS", "SOURCES", "Preset", "get", "influence", "names", "table"]


def table(path: Any = None, with_influence: bool = True) -> Any:
    """One row per preset: estimator, objective form, reweighting, clip, KL (and the beta of the
    ODE KL-anchor rows), rollout/branching, and per timestep t (for the preset's own path unless
    `path` is given and matches), read off the engine (rsm.methods.influence): C1, gamma, the relative trust-region weight C2, the
    first-order estimator's weight |Psi_hat|/|g| ("psi_scale"), and the normalized influence h(t)
    (THEORY.md §4.3). Untrained steps hold None. The list prints as a table (plain text, or HTML
    in a notebook, via pandas when installed); .to_pandas() gives a DataFrame."""
    rows = []
    for name in names():
        p = PRESETS[name]
        rows.append({"method": name, "family": p["family"], "path": p["path"],
                     "estimator": p["estimator"], "form": p["form"],
                     "reweight": p.get("reweight", "-"), "clip": p.get("clip_eps", 0.0),
                     "kl": p.get("kl", 0.0),
                     "kl_anchor": p.get("kl", 0.0) if p.get("kl_anchor", 0.0) is None
                     else p.get("kl_anchor", 0.0),
                     "rollout": p["rollout"],
                     "branching": p["rollout"] in ("branch", "tree")})
        if with_influence:
            use = path if path is not None and p["path"] in ("any", path.kind) else None
            info = influence(name, path=use)
            rows[-1]["t"] = [round(float(v), 4) for v in info["t"]]
            rows[-1]["h"] = [round(float(v), 4) for v in info["h"]]
            for key, name in (("C1", "c1"), ("gamma", "gamma"), ("C2", "c2"), ("psi_scale", "psi_scale")):
                rows[-1][key] = [None if not np.isfinite(v) else float(f"{v:.6g}") for v in info[name]]
    from ..display import Table   # a list of the row dicts that prints as a table

    return Table(rows, columns=[k for k in rows[0] if k not in ("t", "h", "C1", "gamma", "C2", "psi_scale")])
