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
"ode" (first-order), "refl" (the ancestral sampler, or the ODE, down to a random late step, one
Tweedie jump).

Released configurations (issue 15): "flow-grpo", "ddpo", "dance-grpo", "branch-grpo", "mixgrpo"
(MixGRPO's sliding SDE window: mix_window, mix_interval, mix_stride) and "refl" default to
their authors' released training scripts (rsm.conventions.SOURCES: repository, commit, files;
docs/RELEASED.md): path, grid, SDE noise, trained steps, advantage statistics, zero-std rule, KL
denominator, ReFL's sampler and hinge. Each such convention is an explicit option with one
meaning across presets (adv_std, adv_ddof, adv_eps, adv_tracker, zero_std, kl_denominator,
timestep_subset, sde_sigma, vp_schedule, refl_sampler, reward_hinge); rsm's earlier
(RSM-paper) forms stay available as values of those options, and as the variant preset
"flow-grpo-exact" (exact Gaussian KL, group std, the masked mean of THEORY.md §9.2.3) and
"branch-grpo-rsm" (rsm's earlier Branch-GRPO tree). TempFlow-GRPO, GRPO-Guard and PCPO have no
release that could be read: rsm.conventions.UNVERIFIED, shown in their source.
The first-order and pathwise presets "vgg-flow", "residual-ndb", "sqdf", "adjoint-matching" and
"draft" (DRaFT-1 as AlignProp's script) follow their released code too (per-sample step subsets
timestep_subset "trunks" / "trunks_min1" / "one_per_sample" / "stratified", SQDF's KL
kl_denominator "std2" and reward_reduce, Adjoint Matching's am_loss), their earlier forms as the
variants "vgg-flow-rsm", "residual-ndb-rsm", "sqdf-rsm", "adjoint-matching-rsm", "draft-rsm"; the
RSM redesigns "rsm-fo" and "rsm-fo-diffusion" carry none of them.

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


# the released-code conventions table() shows ("-": an option the preset does not have)
_TABLE_CONVENTIONS = ("adv_std", "adv_ddof", "adv_eps", "adv_tracker", "zero_std",
                      "kl_denominator", "train_steps", "timestep_subset", "sde_sigma", "grid",
                      "steps", "vp_schedule", "refl_sampler", "reward_hinge", "split_steps",
                      "split_noise_scale", "adv_zero_tol", "mix_window", "mix_interval",
                      "mix_stride", "am_loss", "am_adjoint", "reward_reduce", "truncation")
_PRINTED_CONVENTIONS = ("adv_std", "zero_std", "kl_denominator")


def table(path: Any = None, with_influence: bool = True) -> Any:
    """One row per preset: estimator, objective form, reweighting, clip, KL (and the beta of the
    ODE KL-anchor rows), rollout/branching, the released-code conventions (rsm.conventions) and
    the source the preset follows, and per timestep t (for the preset's own path unless
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
                     "branching": p["rollout"] in ("branch", "tree"),
                     **{k: p.get(k, "-") for k in _TABLE_CONVENTIONS},
                     "source": p["source"]})
        if with_influence:
            use = path if path is not None and p["path"] in ("any", path.kind) else None
            info = influence(name, path=use)
            rows[-1]["t"] = [round(float(v), 4) for v in info["t"]]
            rows[-1]["h"] = [round(float(v), 4) for v in info["h"]]
            for key, name in (("C1", "c1"), ("gamma", "gamma"), ("C2", "c2"), ("psi_scale", "psi_scale")):
                rows[-1][key] = [None if not np.isfinite(v) else float(f"{v:.6g}") for v in info[name]]
    from ..display import Table   # a list of the row dicts that prints as a table

    # the per-timestep lists, the source and most conventions stay in the row dicts, out of the
    # printed columns (a line under 200 characters); table()[i][key] reads every one
    hidden = ("t", "h", "C1", "gamma", "C2", "psi_scale", "source") + tuple(
        k for k in _TABLE_CONVENTIONS if k not in _PRINTED_CONVENTIONS)
    return Table(rows, columns=[k for k in rows[0] if k not in hidden])
