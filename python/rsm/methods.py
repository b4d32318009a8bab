"""Fine-tuning methods as presets of the one RSM objective (RSM-SPEC §6, §12.6).

A preset is a dict of hyper-parameters read by rsm.Trainer: the rollout (sampler, steps, noise
level, branching budget), the estimator of the value guidance Psi, and how the objective weighs it
(form, reweighting, clip threshold, KL anchor). Every key can be overridden by keyword in
rsm.finetune / rsm.Trainer.

Implemented so far (flow path): "flow-grpo" (PPO ratio clip on full SDE rollouts, zeroth order),
"rsm-zo" (the paper's zeroth-order redesign: ODE root + single-step SDE branches with a budget,
matching hinge with timestep-fair clipping), "rsm-fo" (the first-order redesign: terminal reward
gradient, velocity regression with lambda (1 - t)). The rest of RSM-SPEC §12.6 is tracked in the
RSM-objective issue.
"""
from __future__ import annotations

import copy
from typing import Any

_PRESETS: dict[str, dict[str, Any]] = {
    "flow-grpo": {
        "family": "zeroth-order", "path": "flow", "rollout": "sde", "sampler": "sde", "steps": 10,
        "grid": "sd3", "shift": 3.0, "noise_level": 0.7, "estimator": "zo-group",
        "advantage": "group", "adv_eps": 1e-4, "adv_clip": 5.0, "form": "ppo", "reweight": "base",
        "clip_eps": 1e-4, "kl": 0.004, "mean_over_dims": True, "train_steps": "all",
        "inner_epochs": 1, "lr": 1e-3, "max_grad_norm": 1.0, "weight_decay": 1e-4,
        "description": "Flow-GRPO: GRPO on Flow-GRPO's SDE, PPO ratio clip, KL to the reference",
    },
    "rsm-zo": {
        "family": "zeroth-order", "path": "flow", "rollout": "branch", "sampler": "sde", "steps": 10,
        "grid": "sd3", "shift": 3.0, "noise_level": 0.7, "estimator": "zo-branch",
        "advantage": "group", "adv_eps": 1e-4, "adv_clip": 5.0, "form": "matching",
        "reweight": "fairclip2", "clip_eps": 1e-4, "kl": 0.004, "mean_over_dims": True,
        "budget": [6, 6, 8, 10, 0, 0, 0, 0, 0], "inner_epochs": 1, "lr": 1e-3,
        "max_grad_norm": 1.0, "weight_decay": 1e-4,
        "description": "RSM zeroth-order redesign: stochasticity localised at single SDE steps from an "
                       "ODE root, low-SNR budget (lowsnr2), timestep-fair matching hinge",
    },
    "rsm-fo": {
        "family": "first-order", "path": "flow", "rollout": "ode", "sampler": "ode", "steps": 20,
        "grid": "uniform", "shift": 3.0, "noise_level": 0.7, "estimator": "fo-terminal",
        "form": "score_matching", "reward_scale": 1.0, "eta": "linear", "kl": 0.0,
        "mean_over_dims": True, "inner_epochs": 1, "lr": 1e-3, "max_grad_norm": 1.0,
        "weight_decay": 0.0, "train_steps": "all",
        "description": "RSM first-order redesign: grad r(x0) at the end of the rollout reused at every "
                       "t; v_target = v_ref - lambda (1 - t) g",
    },
}


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
    preset["name"] = name
    return preset


def table() -> list[dict[str, Any]]:
    """One row per preset: estimator, objective form, reweighting, clip, KL, rollout/branching."""
    rows = []
    for name in names():
        p = _PRESETS[name]
        rows.append({"method": name, "family": p["family"], "estimator": p["estimator"],
                     "form": p["form"], "reweight": p.get("reweight", "-"),
                     "clip": p.get("clip_eps", 0.0), "kl": p.get("kl", 0.0),
                     "rollout": p["rollout"], "branching": p["rollout"] == "branch"})
    return rows
