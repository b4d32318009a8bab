"""The vocabulary of option checks and the option table of rsm.methods.Preset: every option is
typed and validated once, when a Preset is built (presets.py), by the check OPTIONS names for it.

TypeError: the wrong kind of value (a string or a bool where a number is meant); ValueError: the
right kind out of range, not one of the names, or contradicting another option (check_combination,
the message naming both). Messages name the option and what it accepts; unknown names get a
"did you mean" (difflib)."""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable

import numpy as np

from .. import conventions as _conv
from ..objective import FORMS
from ..tree import FUSIONS


class _Unset:
    """The value of an option a preset does not have."""

    def __repr__(self) -> str:
        return "<unset>"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


# ---- the checks: (label, value) -> None or raise; `label` names the option ------------------
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
            hint = suggest(value, [n for n in names if isinstance(n, str)]) if isinstance(value, str) else ""
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
    # DRaFT-K: the ODE (rsm's earlier form) or the reparameterised DDPM / flow SDE (AlignProp's
    # sampling with eta = 1), the noises held fixed in the backward pass
    "pathwise": ("pathwise", ("ode", "sde")),
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
    "depth_pruning": ints(0), "depth_pruning_slide": integer(0),
    "depth_pruning_stop": optional(integer(0)), "width_pruning": one_of(0, 1, 2),
    "width_pruning_ratio": number(0.0, 1.0, low_open=True),
    "reward_scale": number(), "eta": one_of(*ETA_NAMES), "reg": number(0.0),
    "kappa": one_of("sigma", "one"), "adaptive": one_of("sigma", "alpha_bar_next"),
    "tweedie_model": one_of("policy", "ref"), "discount": number(0.0, 1.0),
    "truncation": integer(1), "late_steps": integer(1),
    # rsm.conventions (issue 15): the released code's conventions
    "adv_std": one_of(*_conv.ADV_STD), "adv_ddof": one_of(0, 1),
    "adv_tracker": one_of(*_conv.ADV_TRACKER), "adv_buffer_size": integer(1),
    "adv_min_count": integer(1), "zero_std": one_of(*_conv.ZERO_STD),
    "kl_denominator": one_of(*_conv.KL_DENOMINATOR), "timestep_subset": one_of(*_conv.TIMESTEP_SUBSET),
    "sde_sigma": one_of(*_conv.SDE_SIGMA), "vp_schedule": one_of(*_conv.VP_SCHEDULES),
    "refl_sampler": one_of(*_conv.REFL_SAMPLER), "reward_hinge": optional(number()),
    "adv_zero_tol": number(0.0), "split_steps": optional(ints(0)),
    "split_noise_scale": number(0.0, low_open=True),
    "mix_window": optional(integer(1)), "mix_interval": integer(1), "mix_stride": integer(1),
    "am_loss": one_of(*_conv.AM_LOSS), "am_adjoint": one_of(*_conv.AM_ADJOINT),
    "reward_reduce": one_of(*_conv.REWARD_REDUCE),
}


def check_combination(p: Any) -> None:
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
    # the released-code conventions (rsm.conventions)
    if p.adv_tracker == "per_prompt":
        if p.adv_std == "batch":
            refuse("adv_std", "adv_tracker", "the tracker normalises by each prompt's buffered std")
        if p.zero_std is not UNSET and p.zero_std != "keep":
            refuse("zero_std", "adv_tracker", "DDPO's tracker has no zero-std case: use "
                                              "zero_std='keep'")
        if p.advantage == "center":
            refuse("advantage", "adv_tracker", "REINFORCE centres without statistics")
    # the first-order conventions (rsm.conventions)
    if p.kl_denominator == "std2" and p.estimator != "fo-next":
        refuse("kl_denominator", "estimator", "'std2' is SQDF's KL of the soft-Q loss")
    if p.estimator == "fo-next" and p.kl_denominator == "released":
        refuse("kl_denominator", "estimator", "'released' is Flow-GRPO's KL over 2 s~^2; the "
                                              "soft-Q loss has 'exact' or 'std2'")
    if p.reward_reduce == "sum" and p.mean_over_dims is False:
        refuse("reward_reduce", "mean_over_dims", "the released SQDF loss adds one reward scalar "
                                                 "per sample to a per-element-mean KL")
    if p.timestep_subset in ("trunks", "trunks_min1", "stratified"):
        if p.train_steps is UNSET or isinstance(p.train_steps, (str, list, tuple)):
            refuse("timestep_subset", "train_steps", "its steps are drawn from a fraction f of the "
                                                    "S steps: give train_steps a fraction")
        if p.timestep_subset == "stratified" and p.rollout not in ("sde", "ode"):
            refuse("timestep_subset", "rollout", "the stratified steps are drawn per rollout")
    if p.timestep_subset == "one_per_sample" and p.train_steps not in (UNSET, "all"):
        refuse("timestep_subset", "train_steps", "SQDF draws one step among all of them: keep "
                                                "train_steps='all'")
    if p.rollout in ("branch", "tree"):
        for key, allowed in (("adv_tracker", (None,)), ("adv_std", ("group",)),
                             ("zero_std", ("mask", "keep") if p.rollout == "tree" else ("mask",))):
            if getattr(p, key) is not UNSET and getattr(p, key) not in allowed:
                refuse(key, "rollout", f"its advantages are per (root, step) / (root, depth); "
                                       f"{key} must be one of {list(allowed)}")
    if p.split_steps is not UNSET and p.split_steps is not None and p.split is not UNSET \
            and len(p.split_steps) != p.split:
        refuse("split_steps", "split", "split counts the listed split steps")
    if p.mix_window is not UNSET and p.mix_window is not None:
        if p.rollout != "sde":
            refuse("mix_window", "rollout", "MixGRPO's window mixes the steps of one SDE "
                                            "trajectory")
        if p.train_steps != "all":
            refuse("mix_window", "train_steps", "the window's steps are the trained ones: use "
                                                "train_steps='all'")


def suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
