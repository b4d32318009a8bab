"""Fine-tuning methods as presets of the one RSM objective (RSM-SPEC §6, §12.6).

A preset is a dict of hyper-parameters read by rsm.Trainer: the rollout (sampler, steps, noise
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

Released configurations (issue 15): "flow-grpo", "ddpo", "dance-grpo" and "refl" default to
their authors' released training scripts (rsm.conventions.SOURCES: repository, commit, files):
path, grid, SDE noise, trained steps, advantage statistics, zero-std rule, KL denominator, ReFL's
sampler and hinge. Every such convention is an explicit key (rsm.conventions: adv_std, adv_ddof,
adv_eps, adv_tracker, zero_std, kl_denominator, timestep_subset, sde_sigma, vp_schedule,
refl_sampler, reward_hinge) with one meaning across
presets; rsm's earlier (RSM-paper) forms stay available as values of those keys, and as the
variant preset "flow-grpo-exact" (the exact Gaussian KL, group std and the masked mean of
RSM-SPEC §9.2.3, on which the paper's comparisons were run).

Not yet here: SQDF's consistency-model refinement and replay buffer (auxiliary in RSM-SPEC §6.2).
"""
from __future__ import annotations

import copy

import numpy as np
from typing import Any

from . import conventions as _conv

_COMMON_ZO = {
    "ema_decay": 0.0,
    "family": "zeroth-order", "estimator": "zo-group", "advantage": "group", "adv_eps": 1e-4,
    "adv_clip": 5.0, "mean_over_dims": True, "train_steps": "all", "inner_epochs": 1,
    "max_grad_norm": 1.0, "weight_decay": 1e-4, "noise_level": 0.7, "shift": 3.0, "lr": 1e-3,
    "accumulate": 1,
    # ODE KL-anchor rows of branch rollouts (RSM-SPEC §9.2.5, §9.3): the root states at the
    # transitions the budget leaves at k_i = 0 (not the last one), trained only by the KL term
    # kl_anchor (w^2 / 2) mean|u - u_ref|^2. kl_anchor: its beta (None: the preset's "kl");
    # kl_anchor_weight: w, "sampler" (|K_i| / std_i of the step's SDE) or a constant;
    # kl_anchor_reduce: "k_avg" (each anchor row weighs k_avg in the masked mean, so an anchor
    # transition weighs what a trained one does) or "mean" (beta times the mean over the
    # micro-batch's anchor rows, added to the loss); kl_anchor_max_ratio: at most this fraction
    # of the micro-batch's transition rows, a seeded random subset (None: all of them)
    "kl_anchor": 0.0, "kl_anchor_weight": "sampler", "kl_anchor_reduce": "k_avg",
    "kl_anchor_max_ratio": None,
    # the released-code conventions (rsm.conventions), at rsm's earlier values; sde_sigma:
    # "flow-grpo" (s~ = a sqrt(t/(1-t))) or "constant" (s~ = a, DanceGRPO), the flow SDE's noise;
    # vp_schedule: the VPPath schedule a Trainer builds when no path is given
    **_conv.RSM_DEFAULTS, "sde_sigma": "flow-grpo", "vp_schedule": "linear",
}

_COMMON_FO = {
    "ema_decay": 0.0,
    "family": "first-order", "shift": 3.0, "noise_level": 0.7, "form": "score_matching",
    "reward_scale": 1.0, "kl": 0.0, "mean_over_dims": True, "inner_epochs": 1, "lr": 1e-3,
    "max_grad_norm": 1.0, "weight_decay": 0.0, "train_steps": "all", "accumulate": 1,
}

_PRESETS: dict[str, dict[str, Any]] = {
    # ---- zeroth order: full stochastic trajectories (Table 1 rows REINFORCE+KL, PPO/GRPO/PCPO)
    # released train_sd3.py + config/grpo.py (geneval_sd3): global std, samples with A = 0
    # dropped (KL rows too), KL / (2 s~^2) with beta 0.04, the first int(0.99 S) steps
    "flow-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                  "train_steps": "no_last", "form": "ppo", "reweight": "base", "clip_eps": 1e-4,
                  "kl": 0.04, "adv_std": "batch", "zero_std": "drop", "kl_denominator": "released",
                  "description": "Flow-GRPO as released: GRPO on Flow-GRPO's SDE, group mean / "
                                 "batch std advantages, zero-advantage samples dropped, PPO ratio "
                                 "clip, KL beta |mu - mu_ref|^2 / (2 s~^2)"},
    # the paper's / rsm's earlier form: exact Gaussian KL (its beta 0.004 ~ 0.04 dt on the
    # 10-step grid), group std, the masked mean of RSM-SPEC §9.2.3 (zero-std groups keep their
    # KL rows); the Figs. 3-6 runs of docs/RESULTS.md used it
    "flow-grpo-exact": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                        "train_steps": "no_last", "form": "ppo", "reweight": "base",
                        "clip_eps": 1e-4, "kl": 0.004,
                        "description": "Flow-GRPO in rsm's exact form: group std, masked mean, "
                                       "exact Gaussian KL |mu - mu_ref|^2 / (2 std^2)"},
    # released train_grpo_flux.py + finetune_flux_grpo.sh: s~ = eta = 0.3 constant on the shifted
    # grid (16 steps), per-sample random 0.6 of the steps 0..S-2, torch.std (ddof 1) + 1e-8
    "dance-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 16, "grid": "shift",
                   "form": "ppo", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
                   "shared_noise": True, "train_steps": 0.6, "timestep_subset": "per_sample",
                   "sde_sigma": "constant", "noise_level": 0.3, "adv_ddof": 1, "adv_eps": 1e-8,
                   "zero_std": "keep",
                   "description": "DanceGRPO as released: constant s~ = eta SDE, no KL, one "
                                  "initial noise per group, per-sample timestep subsets"},
    # released scripts/train.py + config/dgx.py (compressibility): SD1.x scaled_linear table on
    # the leading grid (every step stochastic), eta = 1, per-prompt tracker (16, 16), std + 1e-6
    "ddpo": {**_COMMON_ZO, "path": "vp", "rollout": "sde", "steps": 50, "grid": "leading",
             "vp_schedule": "scaled_linear", "form": "ppo", "reweight": "base", "clip_eps": 1e-4,
             "kl": 0.0, "adv_tracker": "per_prompt", "adv_buffer_size": 16, "adv_min_count": 16,
             "adv_eps": 1e-6, "zero_std": "keep",
             "description": "DDPO as released (PPO on DDPM transitions of SD1.x's scaled_linear "
                            "table, leading grid, per-prompt reward tracker, no KL)"},
    "grpo-guard": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                   "train_steps": "no_last", "form": "ppo", "reweight": "guard", "clip_eps": 1e-4, "kl": 0.0,
                   "description": "GRPO-Guard: RatioNorm (linear part of log rho, x std), 1/dt"},
    "pcpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
             "train_steps": "no_last", "form": "ppo", "reweight": "pcpo", "clip_eps": 1e-4, "kl": 0.0,
             "description": "PCPO-reweight (flow): log-ratio weight zeta dt (proportional credit)"},
    "pcpo-base": {**_COMMON_ZO, "path": "any", "rollout": "sde", "steps": 10, "grid": "uniform",
                  "form": "log_ratio", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
                  "description": "PCPO-base: clip on 1 + log rho instead of rho"},
    "reinforce-kl": {**_COMMON_ZO, "path": "any", "rollout": "sde", "steps": 10, "grid": "uniform",
                     "form": "log_ratio", "reweight": "base", "clip_eps": 1e30, "kl": 1.0,
                     "advantage": "center", "alpha": 1.0, "adv_clip": 0.0,
                     "description": "REINFORCE + KL (DPOK-like): -(r - b)/alpha log pi + KL"},
    "pcpo-diffusion": {**_COMMON_ZO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform",
                       "form": "matching", "reweight": "constant", "pcpo_weight": 4.5,
                       "loss_weight": 4.5 / 8.70575076181, "clip_eps": 1e-4, "kl": 0.0,
                       "description": "PCPO-reweight (diffusion, 'uw-sigma'): DDPM with PCPO's "
                                      "step std (w = 4.5), noise-matching hinge with the constant "
                                      "log-ratio weight w' = 4.5 / 8.70575 (h = 1)"},
    # ---- zeroth order with branching and stochasticity localisation
    "branch-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "tree", "steps": 10, "grid": "sd3",
                    "estimator": "zo-tree", "train_steps": "no_last", "form": "ppo",
                    "reweight": "base", "clip_eps": 1e-4, "kl": 0.0, "split": 3, "branch": 2,
                    # rsm.tree: reward fusion "mean" | "path_prob", depth-wise std with adv_ddof
                    # 0 (population) | 1 (sample), depth pruning (child depths, sliding window),
                    # width pruning 0/1/2; defaults = the authors' released script (no
                    # weighting, no pruning)
                    "fusion": "mean", "adv_ddof": 0, "depth_pruning": [],
                    "depth_pruning_slide": 0, "depth_pruning_stop": None, "width_pruning": 0,
                    "width_pruning_ratio": 0.5,
                    "description": "Branch-GRPO: SDE tree (split points x branch children, shared "
                                   "prefixes), node rewards fused from the leaves (mean or path-"
                                   "probability weighted), advantages normalised per (root, depth), "
                                   "optional width/depth pruning, PPO on the node transitions"},
    "tempflow-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "branch", "steps": 10, "grid": "sd3",
                      "estimator": "zo-branch", "form": "ppo", "reweight": "tempflow",
                      "clip_eps": 1e-4, "kl": 0.004, "budget": [6] * 9,
                      "description": "TempFlow-GRPO: ODE root + single-step SDE branches (budget base), "
                                     "noise-aware weight 2.25 s~ sqrt(dt), PPO"},
    "rsm-zo": {**_COMMON_ZO, "path": "flow", "rollout": "branch", "steps": 10, "grid": "sd3",
               "estimator": "zo-branch", "form": "matching", "reweight": "fairclip2",
               "clip_eps": 1e-4, "kl": 0.004, "budget": [6, 6, 8, 10, 0, 0, 0, 0, 0],
               # §9.2.5: loss = policy + beta (KL_sde + KL_anchor), anchor rows weigh k_avg
               "kl_anchor": None,
               "description": "RSM zeroth-order redesign (flow): localised stochasticity, low-SNR "
                              "budget (lowsnr2), timestep-fair matching hinge, KL on the branch "
                              "rows and ODE-anchor rows at the untrained steps"},
    # RSM-SPEC §9.3: the branches' single stochastic step uses PCPO's std (w = 4.5, §6.3.6),
    # which also sets the step's mean coefficient K and so the KL weight |K|/std; the hinge
    # uses PCPO's constant log-ratio weight w' = 4.5 / 8.70575 (reweight "base" would use
    # |K|/std of that step instead)
    "rsm-zo-diffusion": {**_COMMON_ZO, "path": "vp", "rollout": "branch", "steps": 20,
                         "grid": "uniform", "estimator": "zo-branch", "form": "matching",
                         "reweight": "constant", "pcpo_weight": 4.5,
                         "loss_weight": 4.5 / 8.70575076181, "clip_eps": 1e-4, "kl": 0.0,
                         "budget": [4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0],
                         # §9.3: + 8e-5 mean_anchor (1/2) mean(4.5^2 (eps - eps_ref)^2) over at
                         # most 10% as many anchor rows as transition rows (the constant 4.5,
                         # without the 1 / 8.70575 of the hinge)
                         "kl_anchor": 8e-5, "kl_anchor_weight": 4.5, "kl_anchor_reduce": "mean",
                         "kl_anchor_max_ratio": 0.1,
                         "description": "RSM zeroth-order redesign (diffusion): DDIM root, 4 "
                                        "single-step branches at 5 steps with PCPO's std "
                                        "(w = 4.5), noise-matching hinge with PCPO's constant "
                                        "weight w' = 4.5 / 8.70575, ODE KL anchor at the "
                                        "untrained steps"},
    # ---- first order
    "rsm-fo": {**_COMMON_FO, "path": "flow", "rollout": "ode", "steps": 20, "grid": "uniform",
               "estimator": "fo-terminal", "eta": "linear",
               "description": "RSM first-order redesign (flow): grad r(x0) at the rollout end "
                              "reused at every t; v_target = v_ref - lambda (1 - t) g"},
    "vgg-flow": {**_COMMON_FO, "path": "flow", "rollout": "ode", "steps": 20, "grid": "uniform",
                 "estimator": "fo-tweedie", "eta": "quad",
                 "description": "VGG-Flow (pruned, no value network): g = grad r at Tweedie "
                                "x0_hat = x_t - t sg(v), v_target = v_ref - lambda (1 - t)^2 g"},
    "rsm-fo-diffusion": {**_COMMON_FO, "path": "vp", "rollout": "sde", "steps": 20,
                         "grid": "uniform", "estimator": "fo-residual", "reg": 1.0,
                         "kappa": "sigma", "adaptive": "sigma",
                         "description": "RSM first-order redesign (diffusion): DDPM rollout, "
                                        "forward residual (s (mu - mu_ref)/s^2 - lambda s g)^2 "
                                        "+ reg |eps - eps_old|^2 with g = grad r(x0)"},
    "residual-ndb": {**_COMMON_FO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform",
                     "estimator": "fo-next", "tweedie_model": "policy", "reg": 1.0,
                     "kappa": "one", "adaptive": "alpha_bar_next",
                     "description": "Residual nabla-DB (pruned): DDPM rollout, forward residual "
                                    "(kappa (mu - mu_ref)/s^2 - lambda abar' g)^2 + reg |eps - eps_old|^2"
                                    " with g = grad_{x'} r(x0_hat(x')) at the next state (FO-next)"},
    "sqdf": {**_COMMON_FO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform",
             "estimator": "fo-next", "tweedie_model": "ref", "alpha": 1.0, "discount": 1.0,
             "description": "SQDF (without consistency model / replay buffer): alpha KL_i - "
                            "gamma_d Q(x') with Q(x') = r(x0_hat_ref(x')) at the reparameterised "
                            "next state, gamma_d = discount^(S-1-i)"},
    "adjoint-matching": {**_COMMON_FO, "path": "flow", "rollout": "sde", "steps": 40,
                         "grid": "shift", "noise_level": 2.0 ** 0.5, "estimator": "fo-adjoint",
                         "alpha": 1.0, "train_steps": "interior",
                         "description": "Adjoint Matching (lean adjoint): memoryless SDE rollouts "
                                        "(a = sqrt 2), Psi = discrete lean adjoint of r(x0)/alpha "
                                        "through the reference drift's Jacobian, score regression "
                                        "onto s_ref + Psi with weight g^2 = 2t/(1-t); on target"},
    # ---- pathwise baselines (not RSM; for comparison)
    "draft": {"ema_decay": 0.0, "family": "pathwise", "path": "flow", "rollout": "ode", "steps": 20,
              "grid": "uniform", "shift": 3.0, "noise_level": 0.7, "estimator": "pathwise",
              "form": "pathwise", "truncation": 1, "kl": 0.0, "mean_over_dims": True,
              "inner_epochs": 1, "accumulate": 1, "lr": 1e-3, "max_grad_norm": 1.0,
              "weight_decay": 0.0,
              "description": "DRaFT-K: backpropagate the reward through the last K ODE steps"},
    # released ImageReward/ReFL.py: 40 DDPM steps of SD1.x's table on the leading grid, the
    # ancestral sampler down to a random step among the last 10, hinge relu(2 - r)
    "refl": {"ema_decay": 0.0, "family": "pathwise", "path": "any", "rollout": "refl", "steps": 40,
             "grid": "leading", "vp_schedule": "scaled_linear", "refl_sampler": "stochastic",
             "reward_hinge": 2.0, "shift": 3.0, "noise_level": 0.7, "estimator": "refl",
             "form": "score_matching", "late_steps": 10, "reward_scale": 1.0, "kl": 0.0,
             "mean_over_dims": False, "inner_epochs": 1, "accumulate": 1, "lr": 1e-3,
             "max_grad_norm": 1.0, "weight_decay": 1e-2,   # ReFL.py adam_weight_decay
             "description": "ReFL as released: ancestral sampling to a random step among the "
                            "last late_steps, one Tweedie jump x0_hat, loss lambda relu(h - "
                            "r(x0_hat)) back-propagated through that single network call"},
}


# Branching budgets k_0..k_8 of RSM-SPEC §9.2.4 (10-step SD3 grid; transition i = 0 is the noisiest).
BUDGETS: dict[str, list[int]] = {
    "base": [6, 6, 6, 6, 6, 6, 6, 6, 6],
    "highsnr": [3, 3, 4, 5, 6, 7, 7, 8, 11],
    "highsnr2": [4, 5, 5, 6, 7, 8, 9, 10, 0],
    "base2": [7, 7, 7, 7, 7, 7, 6, 6, 0],
    "lowsnr": [6, 6, 8, 10, 11, 13, 0, 0, 0],
    "lowsnr2": [6, 6, 8, 10, 0, 0, 0, 0, 0],
}


# the released-code conventions shown by table() ("-": not a zeroth-order preset)
_TABLE_CONVENTIONS = ("adv_std", "adv_ddof", "adv_eps", "adv_tracker", "zero_std",
                      "kl_denominator", "train_steps", "timestep_subset", "sde_sigma", "grid",
                      "steps", "vp_schedule", "refl_sampler", "reward_hinge")


def names() -> list[str]:
    """The preset names."""
    return sorted(_PRESETS)


def get(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of a preset with overrides applied (unknown keys are errors)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown method {name!r}; known: {names()}")
    preset = copy.deepcopy(_PRESETS[name])
    unknown = set(overrides) - set(preset)
    if unknown:
        raise ValueError(f"method {name!r} has no hyper-parameter(s) {sorted(unknown)}; "
                         f"it has {sorted(k for k in preset if k != 'description')}")
    preset.update(overrides)
    _conv.check(preset, name)
    if isinstance(preset.get("budget"), str):
        if preset["budget"] not in BUDGETS:
            raise ValueError(f"unknown budget profile {preset['budget']!r}; known: {sorted(BUDGETS)}")
        preset["budget"] = list(BUDGETS[preset["budget"]])
    preset["name"] = name
    preset["source"] = _conv.source_of(name)
    return preset


def table(path: Any = None, with_influence: bool = True) -> list[dict[str, Any]]:
    """One row per preset: estimator, objective form, reweighting, clip, KL (and the beta of the
    ODE KL-anchor rows), rollout/branching, and per timestep t (for the preset's own path unless
    `path` is given and matches), read off the engine (rsm.finetune.influence): C1, gamma, the relative trust-region weight C2, the
    first-order estimator's weight |Psi_hat|/|g| ("psi_scale"), and the normalized influence h(t)
    (RSM-SPEC §4.3). Untrained steps hold None."""
    from .finetune import influence

    rows = []
    for name in names():
        p = _PRESETS[name]
        rows.append({"method": name, "family": p["family"], "path": p["path"],
                     "estimator": p["estimator"], "form": p["form"],
                     "reweight": p.get("reweight", "-"), "clip": p.get("clip_eps", 0.0),
                     "kl": p.get("kl", 0.0),
                     "kl_anchor": p.get("kl", 0.0) if p.get("kl_anchor", 0.0) is None
                     else p.get("kl_anchor", 0.0),
                     "rollout": p["rollout"],
                     "branching": p["rollout"] in ("branch", "tree"),
                     **{k: p.get(k, "-") for k in _TABLE_CONVENTIONS},
                     "source": _conv.source_of(name)})
        if with_influence:
            use = path if path is not None and p["path"] in ("any", path.kind) else None
            info = influence(name, path=use)
            rows[-1]["t"] = [round(float(v), 4) for v in info["t"]]
            rows[-1]["h"] = [round(float(v), 4) for v in info["h"]]
            for key, name in (("C1", "c1"), ("gamma", "gamma"), ("C2", "c2"), ("psi_scale", "psi_scale")):
                rows[-1][key] = [None if not np.isfinite(v) else float(f"{v:.6g}") for v in info[name]]
    return rows
