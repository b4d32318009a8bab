"""The method presets: every fine-tuning method as a frozen, typed `Preset` of the one RSM
objective's hyper-parameters (RSM-SPEC §6, §12.6), with the source it follows.

A preset names its rollout (sampler, steps, noise level, branching budget), the estimator of the
value guidance Psi and how the objective weighs it (form, reweighting, clip threshold, KL anchor).
Every option can be overridden by keyword in rsm.finetune / rsm.Trainer / rsm.methods.get; a
preset only has the options its family uses (reading another one raises KeyError, overriding it
ValueError). `Preset` keeps the read access of the dicts it replaces: p["kl"], p.get("alpha"),
"discount" in p, dict(p) (sequence options read as lists there, as tuples as attributes)."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Any, Callable, Iterator

import numpy as np

from ..objective import FORMS
from ..tree import ADV_STDS, FUSIONS

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
}

_COMMON_FO = {
    "ema_decay": 0.0,
    "family": "first-order", "shift": 3.0, "noise_level": 0.7, "form": "score_matching",
    "reward_scale": 1.0, "kl": 0.0, "mean_over_dims": True, "inner_epochs": 1, "lr": 1e-3,
    "max_grad_norm": 1.0, "weight_decay": 0.0, "train_steps": "all", "accumulate": 1,
}

# the forward residual on DDPM rollouts (RSM-SPEC §6.3.3): the diffusion first-order redesign and
# Residual nabla-DB differ in kappa, a(t) and where g is taken
_RESIDUAL = {**_COMMON_FO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform", "reg": 1.0}

_PRESETS: dict[str, dict[str, Any]] = {
    # ---- zeroth order: full stochastic trajectories (Table 1 rows REINFORCE+KL, PPO/GRPO/PCPO)
    "flow-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                  "train_steps": "no_last", "form": "ppo", "reweight": "base", "clip_eps": 1e-4, "kl": 0.004,
                  "description": "Flow-GRPO: GRPO on Flow-GRPO's SDE, PPO ratio clip, KL beta"},
    "dance-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                   "form": "ppo", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
                   "shared_noise": True, "train_steps": 0.6,
                   "description": "DanceGRPO: no KL, one initial noise per group, timestep subsampling"},
    "ddpo": {**_COMMON_ZO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform",
             "form": "ppo", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
             "description": "DDPO (PPO on DDPM transitions, no KL)"},
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
                    # rsm.tree: reward fusion "mean" | "path_prob", depth-wise std "population" |
                    # "sample", depth pruning (child depths, sliding window), width pruning 0/1/2;
                    # defaults = the authors' released script (no weighting, no pruning)
                    "fusion": "mean", "adv_std": "population", "depth_pruning": [],
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
    "rsm-fo-diffusion": {**_RESIDUAL, "estimator": "fo-residual", "kappa": "sigma", "adaptive": "sigma",
                         "description": "RSM first-order redesign (diffusion): DDPM rollout, "
                                        "forward residual (s (mu - mu_ref)/s^2 - lambda s g)^2 "
                                        "+ reg |eps - eps_old|^2 with g = grad r(x0)"},
    "residual-ndb": {**_RESIDUAL, "estimator": "fo-next", "tweedie_model": "policy", "kappa": "one",
                     "adaptive": "alpha_bar_next",
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
    "refl": {"ema_decay": 0.0, "family": "pathwise", "path": "any", "rollout": "refl", "steps": 20,
             "grid": "uniform", "shift": 3.0, "noise_level": 0.7, "estimator": "refl",
             "form": "score_matching", "late_steps": 5, "reward_scale": 1.0, "kl": 0.0,
             "mean_over_dims": False, "inner_epochs": 1, "accumulate": 1, "lr": 1e-3,
             "max_grad_norm": 1.0, "weight_decay": 0.0,
             "description": "ReFL: ODE to a random step among the last late_steps, one Tweedie "
                            "jump x0_hat, loss -lambda r(x0_hat) back-propagated through that "
                            "single network call"},
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


class _Unset:
    """The value of an option a preset does not have."""

    def __repr__(self) -> str:
        return "<unset>"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()
_SEQUENCES = ("budget", "depth_pruning")   # stored as tuples (frozen), read as lists via p[...]


@dataclass(frozen=True, eq=True)
class Preset(Mapping):
    """One fine-tuning method: the validated options the Trainer reads (rsm.methods.get).

    Options a preset does not have hold UNSET and are absent from the mapping view."""

    name: str
    family: str = UNSET              # "zeroth-order" | "first-order" | "pathwise"
    path: str = UNSET                # "flow" | "vp" | "any"
    rollout: str = UNSET             # "sde" | "branch" | "tree" | "ode" | "refl"
    estimator: str = UNSET           # the value-guidance estimator (coefficient rule)
    form: str = UNSET                # the objective's form (csrc/objective.h)
    steps: int = UNSET
    grid: str = UNSET
    shift: float = UNSET
    noise_level: float = UNSET
    train_steps: Any = UNSET         # "all" | "interior" | "no_last" | fraction | list of steps
    lr: float = UNSET
    weight_decay: float = UNSET
    max_grad_norm: float = UNSET
    ema_decay: float = UNSET
    inner_epochs: int = UNSET
    accumulate: int = UNSET
    mean_over_dims: bool = UNSET
    kl: float = UNSET
    # zeroth order
    advantage: str = UNSET           # "group" | "center" (REINFORCE)
    adv_eps: float = UNSET
    adv_clip: float = UNSET
    reweight: str = UNSET            # the timestep weighting (coefficients.REWEIGHTS)
    clip_eps: float = UNSET
    alpha: float = UNSET
    shared_noise: bool = UNSET
    pcpo_weight: float = UNSET
    loss_weight: float = UNSET
    budget: tuple = UNSET
    kl_anchor: Any = UNSET           # float, or None: the preset's kl
    kl_anchor_weight: Any = UNSET    # "sampler" or a float
    kl_anchor_reduce: str = UNSET
    kl_anchor_max_ratio: Any = UNSET
    # Branch-GRPO trees (rsm.tree)
    split: int = UNSET
    branch: int = UNSET
    fusion: str = UNSET
    adv_std: str = UNSET
    depth_pruning: tuple = UNSET
    depth_pruning_slide: int = UNSET
    depth_pruning_stop: Any = UNSET
    width_pruning: int = UNSET
    width_pruning_ratio: float = UNSET
    # first order
    reward_scale: float = UNSET
    eta: str = UNSET                 # "linear" | "quad"
    reg: float = UNSET
    kappa: str = UNSET               # "sigma" | "one"
    adaptive: str = UNSET            # "sigma" | "alpha_bar_next"
    tweedie_model: str = UNSET       # "policy" | "ref"
    discount: float = UNSET
    # pathwise
    truncation: int = UNSET
    late_steps: int = UNSET
    # documentation
    description: str = UNSET
    source: str = UNSET

    def __post_init__(self) -> None:
        for key in _SEQUENCES:
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        for key in _OPTION_NAMES:   # every option typed and validated once, here
            value = getattr(self, key)
            if value is not UNSET:
                OPTIONS[key](f"method {self.name!r}: {key}", value)
        _check_combination(self)

    # ---- read access of the dicts presets were (compatibility) -------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _OPTION_SET:
            raise KeyError(key)
        value = getattr(self, key)
        if value is UNSET:
            raise KeyError(key)
        return list(value) if key in _SEQUENCES and isinstance(value, tuple) else value

    def __iter__(self) -> Iterator[str]:
        return (k for k in _OPTION_NAMES if getattr(self, k) is not UNSET)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def options(self) -> list[str]:
        """The option names this preset has (overridable), without name/description/source."""
        return [k for k in self if k not in _DOCUMENTATION]

    def replace(self, **overrides: Any) -> "Preset":
        """A copy with `overrides` applied; only options the preset has."""
        unknown = set(overrides) - set(self.options())
        if unknown:
            raise ValueError(_unknown_options_message(self, sorted(unknown)))
        if isinstance(overrides.get("budget"), str):
            profile = overrides["budget"]
            if profile not in BUDGETS:
                raise ValueError(f"unknown budget profile {profile!r}; known: {sorted(BUDGETS)}")
            overrides["budget"] = list(BUDGETS[profile])
        return dataclasses.replace(self, **overrides)

    def __repr__(self) -> str:
        return f"Preset({self.name!r}: {self.family}, {self.rollout}, {self.estimator})"


_DOCUMENTATION = ("name", "description", "source")
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Preset))
_OPTION_SET = frozenset(_OPTION_NAMES)


# ---- the vocabulary of checks: (label, value) -> None or raise ---------------------------------
# TypeError: the wrong kind of value (a string or a bool where a number is meant); ValueError:
# the right kind out of range or not one of the names. `label` names the option.
Check = Callable[[str, Any], None]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
    """A finite real number in the interval [low, high] (open ends as asked)."""
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    what = ("a finite number" + (f" in {lo}, {hi}" if low is not None and high is not None else
                                 f" > {low:g}" if low is not None and low_open else
                                 f" >= {low:g}" if low is not None else ""))

    def check(label: str, value: Any) -> None:
        if not _is_number(value):
            raise TypeError(f"{label}={value!r} must be {what}, got {type(value).__name__}")
        v = float(value)
        if (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
                or (high is not None and (v >= high if high_open else v > high))):
            raise ValueError(f"{label}={value!r} must be {what}")
    return check


def integer(minimum: int = 1) -> Check:
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"

    def check(label: str, value: Any) -> None:
        if not _is_int(value):
            raise TypeError(f"{label}={value!r} must be {what}, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{label}={value!r} must be {what}")
    return check


def one_of(*names: Any) -> Check:
    def check(label: str, value: Any) -> None:
        if isinstance(value, bool) or value not in names:
            hint = _suggest(value, [n for n in names if isinstance(n, str)]) if isinstance(value, str) else ""
            raise ValueError(f"{label}={value!r} must be one of {list(names)}{hint}")
    return check


def boolean(label: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{label}={value!r} must be True or False, got {type(value).__name__}")


def text(label: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a str, got {type(value).__name__}")


def optional(inner: Check) -> Check:
    """None, or what `inner` accepts."""
    def check(label: str, value: Any) -> None:
        if value is not None:
            inner(label, value)
    return check


def name_or(names: tuple, inner: Check) -> Check:
    """One of `names`, or what `inner` accepts."""
    def check(label: str, value: Any) -> None:
        if isinstance(value, str):
            one_of(*names)(label, value)
        else:
            inner(label, value)
    return check


def ints(minimum: int = 0) -> Check:
    """A list of ints >= minimum."""
    def check(label: str, value: Any) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{label}={value!r} must be a list of ints, got {type(value).__name__}")
        for v in value:
            if not _is_int(v):
                raise TypeError(f"{label}={list(value)!r} must be a list of ints >= {minimum}, "
                                f"got {type(v).__name__} {v!r}")
            if v < minimum:
                raise ValueError(f"{label}={list(value)!r} must be a list of ints >= {minimum}")
    return check


def _train_steps(label: str, value: Any) -> None:
    """A name, a fraction in (0, 1] (a random subset) or a list of step indices; the indices are
    checked against the steps by rsm.geometry (they depend on `steps`)."""
    if isinstance(value, str):
        one_of("all", "interior", "no_last")(label, value)
    elif _is_number(value) and not _is_int(value):
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"{label}={value!r} must be a fraction in (0, 1]")
    else:
        ints(0)(label, value)


FAMILIES = ("zeroth-order", "first-order", "pathwise")
ROLLOUT_KINDS = ("sde", "branch", "tree", "ode", "refl")
# estimator -> (its family, the rollout kinds that record what it reads)
ESTIMATORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zo-group": ("zeroth-order", ("sde",)),
    "zo-branch": ("zeroth-order", ("branch",)),
    "zo-tree": ("zeroth-order", ("tree",)),
    "fo-terminal": ("first-order", ("ode", "sde")),
    "fo-tweedie": ("first-order", ("ode", "sde")),
    "fo-residual": ("first-order", ("sde",)),     # divides by the step's std: stochastic rows
    "fo-next": ("first-order", ("sde",)),         # reads the sampled next state
    "fo-adjoint": ("first-order", ("sde",)),      # reads every state of the trajectory
    "refl": ("pathwise", ("refl",)),
    "pathwise": ("pathwise", ("ode",)),
}
# the objective forms each family's rules produce (csrc/objective.h; "pathwise": DRaFT's own)
FAMILY_FORMS = {"zeroth-order": ("ppo", "log_ratio", "matching"),
                "first-order": ("score_matching",), "pathwise": ("score_matching", "pathwise")}
REWEIGHT_NAMES = ("base", "fairclip2", "fairclip", "tempflow", "pcpo", "constant", "guard")
ETA_NAMES = ("linear", "quad")

OPTIONS: dict[str, Check] = {
    "name": text, "description": text, "source": text,
    "family": one_of(*FAMILIES), "path": one_of("flow", "vp", "any"),
    "rollout": one_of(*ROLLOUT_KINDS), "estimator": one_of(*ESTIMATORS),
    "form": one_of(*FORMS, "pathwise"),
    "steps": integer(1), "grid": one_of("uniform", "shift", "sd3", "leading"),
    "shift": number(0.0, low_open=True), "noise_level": number(0.0),
    "train_steps": _train_steps,
    "lr": number(0.0), "weight_decay": number(0.0), "max_grad_norm": number(0.0),  # 0: no clipping
    "ema_decay": number(0.0, 1.0, high_open=True),
    "inner_epochs": integer(1), "accumulate": integer(1), "mean_over_dims": boolean,
    "kl": number(0.0),
    "advantage": one_of("group", "center"), "adv_eps": number(0.0), "adv_clip": number(0.0),
    "reweight": one_of(*REWEIGHT_NAMES), "clip_eps": number(0.0, low_open=True),
    "alpha": number(0.0, low_open=True), "shared_noise": boolean,
    "pcpo_weight": number(0.0), "loss_weight": number(0.0, low_open=True),
    "budget": ints(0),
    "kl_anchor": optional(number(0.0)),
    "kl_anchor_weight": name_or(("sampler",), number(0.0, low_open=True)),
    "kl_anchor_reduce": one_of("k_avg", "mean"),
    "kl_anchor_max_ratio": optional(number(0.0, 1.0)),
    "split": integer(1), "branch": integer(2), "fusion": one_of(*FUSIONS),
    "adv_std": one_of(*ADV_STDS), "depth_pruning": ints(0), "depth_pruning_slide": integer(0),
    "depth_pruning_stop": optional(integer(0)), "width_pruning": one_of(0, 1, 2),
    "width_pruning_ratio": number(0.0, 1.0, low_open=True),
    "reward_scale": number(), "eta": one_of(*ETA_NAMES), "reg": number(0.0),
    "kappa": one_of("sigma", "one"), "adaptive": one_of("sigma", "alpha_bar_next"),
    "tweedie_model": one_of("policy", "ref"), "discount": number(0.0, 1.0),
    "truncation": integer(1), "late_steps": integer(1),
}
assert set(OPTIONS) == set(_OPTION_NAMES), set(OPTIONS) ^ set(_OPTION_NAMES)


def _check_combination(p: Preset) -> None:
    """Options that contradict each other; the message names both."""
    def refuse(a: str, b: str, why: str) -> None:
        raise ValueError(f"method {p.name!r}: {a}={p[a]!r} contradicts {b}={p[b]!r}: {why}")

    if p.estimator is UNSET:
        return
    family, rollouts = ESTIMATORS[p.estimator]
    if p.family is not UNSET and p.family != family:
        refuse("estimator", "family", f"the estimator belongs to the {family} family")
    if p.rollout is not UNSET and p.rollout not in rollouts:
        refuse("estimator", "rollout", f"the estimator reads what the rollouts {list(rollouts)} record")
    if p.form is not UNSET and p.form not in FAMILY_FORMS[family]:
        refuse("form", "estimator", f"{family} estimators train through the forms "
                                    f"{list(FAMILY_FORMS[family])}")
    if (p.estimator == "pathwise") != (p.form == "pathwise"):
        refuse("form", "estimator", "the form 'pathwise' is DRaFT's estimator 'pathwise' and only it")
    if p.advantage == "center" and p.alpha is UNSET:
        raise ValueError(f"method {p.name!r}: advantage='center' divides by alpha, which this "
                         "preset does not have")
    if p.reweight == "constant" and p.loss_weight is UNSET:
        raise ValueError(f"method {p.name!r}: reweight='constant' uses loss_weight, which this "
                         "preset does not have")
    if p.kl_anchor is not UNSET and p.kl_anchor != 0.0 and p.rollout != "branch":
        refuse("kl_anchor", "rollout", "KL-anchor rows exist in branch rollouts only")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_options_message(preset: Preset, unknown: list[str]) -> str:
    hint = _suggest(unknown[0], preset.options())
    return (f"method {preset.name!r} has no hyper-parameter(s) {unknown}{hint}; "
            f"it has {sorted(preset.options())}")


# Where each preset comes from (RSM-SPEC sections; the papers named there).
SOURCES: dict[str, str] = {
    "flow-grpo": "Flow-GRPO (Liu et al. 2025): GRPO on the flow SDE, KL beta 0.004; RSM-SPEC §6.3.5",
    "dance-grpo": "DanceGRPO (Xue et al. 2025): no KL, shared initial noise, timestep subsampling; "
                  "RSM-SPEC §6.3.5",
    "ddpo": "DDPO (Black et al. 2024): PPO on DDPM transitions; RSM-SPEC §6.3.5",
    "grpo-guard": "GRPO-Guard (Wang et al., arXiv 2510.22319): RatioNorm, 1/dt; RSM-SPEC §6.3.10",
    "pcpo": "PCPO-reweight, flow (the paper's code, sd3_train_shared.py): zeta dt; RSM-SPEC §6.3.7",
    "pcpo-base": "PCPO-base: clip on 1 + log rho; RSM-SPEC §6.3.5",
    "reinforce-kl": "REINFORCE + KL (DPOK-like); RSM-SPEC §6.3.4",
    "pcpo-diffusion": "PCPO-reweight, diffusion 'uw-sigma' (the paper's code, sd15_zeroth_order); "
                      "RSM-SPEC §6.3.6",
    "branch-grpo": "Branch-GRPO (Li et al., arXiv 2509.06040), the authors' released script's "
                   "defaults; RSM-SPEC §6.3.8",
    "tempflow-grpo": "TempFlow-GRPO (He et al., arXiv 2508.04324): branch sampler, budget base, "
                     "reweight tempflow; RSM-SPEC §6.3.9",
    "rsm-zo": "RSM zeroth-order redesign, flow (Lee et al., arXiv 2604.17415); RSM-SPEC §9.2",
    "rsm-zo-diffusion": "RSM zeroth-order redesign, diffusion (Lee et al., arXiv 2604.17415); "
                        "RSM-SPEC §9.3",
    "rsm-fo": "RSM first-order redesign, flow (Lee et al., arXiv 2604.17415); RSM-SPEC §9.4",
    "vgg-flow": "VGG-Flow, pruned (Liu et al., NeurIPS 2025); RSM-SPEC §6.3.1",
    "rsm-fo-diffusion": "RSM first-order redesign, diffusion (Lee et al., arXiv 2604.17415); "
                        "RSM-SPEC §9.5",
    "residual-ndb": "Residual nabla-DB, pruned (Nabla-GFlowNet, Liu et al., ICLR 2025); RSM-SPEC §6.3.3",
    "sqdf": "SQDF without consistency model / replay buffer (Kang et al., ICLR 2026, arXiv "
            "2512.04559); RSM-SPEC §6.3.2",
    "adjoint-matching": "Adjoint Matching, lean adjoint (Domingo-Enrich et al. 2024); RSM-SPEC §6.3.11",
    "draft": "DRaFT-K (Clark et al. 2024): pathwise; RSM-SPEC §6.3.11",
    "refl": "ReFL (Xu et al. 2023, ImageReward): one Tweedie jump; RSM-SPEC §6.3.11",
}

PRESETS: dict[str, Preset] = {name: Preset(name=name, source=SOURCES[name], **options)
                              for name, options in _PRESETS.items()}


def names() -> list[str]:
    """The preset names."""
    return sorted(PRESETS)


def get(name: str, **overrides: Any) -> Preset:
    """The preset `name` with overrides applied (unknown names and options are errors)."""
    if not isinstance(name, str) or name not in PRESETS:
        hint = _suggest(name, PRESETS) if isinstance(name, str) else ""
        raise ValueError(f"unknown method {name!r}{hint}; known: {names()}")
    return PRESETS[name].replace(**overrides)
