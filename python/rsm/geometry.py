"""The batch geometry of one fine-tuning iteration as one validated object (THEORY.md §9.2.6,
§9.3, §9.5): conditions x group size x trained timesteps x inner epochs x gradient accumulation.

    rollout micro-batch   `conditions` prompts/roots, each with `group_size` samples (or a
                          branching budget / a tree), trained at `timesteps` transitions
    update                `accumulate` micro-batches (each its own rollout), their gradients
                          summed under one masked-mean normalizer, then one optimizer step
    iteration             `inner_epochs` such optimizer steps on the same rollouts (PPO-style)

An impossible combination is rejected before any work, with a message naming the numbers that
conflict (`BatchGeometry.from_method`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# rows x D of one sampler call must stay addressable by the C core (int32-safe DLPack shapes)
_MAX_ELEMENTS = 1 << 31


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"finetune(): {name}={value!r} must be a positive int")
    return int(value)


def trained_steps(spec: Any, steps: int) -> list[int] | float:
    """The trained transitions of a `train_steps` spec on a grid of `steps` transitions: a list,
    or the fraction for a per-iteration random subset (DanceGRPO). Raises on impossible specs."""
    if spec == "all":
        return list(range(steps))
    if spec == "interior" or spec == "no_last":
        if steps < 2:
            raise ValueError(f"finetune(): train_steps={spec!r} drops one of the steps={steps} "
                             "transitions and leaves none to train; use steps >= 2")
        return list(range(1, steps)) if spec == "interior" else list(range(steps - 1))
    if isinstance(spec, float):
        if not 0.0 < spec <= 1.0:
            raise ValueError(f"finetune(): train_steps={spec} must be a fraction in (0, 1]")
        if steps < 2:
            raise ValueError(f"finetune(): train_steps={spec} subsamples among the steps - 1 = "
                             f"{steps - 1} trainable transitions of steps={steps}; use steps >= 2")
        return spec
    if isinstance(spec, str):
        raise ValueError(f"finetune(): train_steps={spec!r} must be 'all', 'interior', 'no_last', "
                         "a fraction or a list of step indices")
    listed = [int(i) for i in spec]
    bad = [i for i in listed if not 0 <= i < steps]
    if not listed or bad or len(set(listed)) != len(listed):
        raise ValueError(f"finetune(): train_steps={listed} must be distinct indices in "
                         f"[0, steps={steps}) (offending: {bad or 'duplicates/empty'})")
    return sorted(listed)


def tree_split_steps(steps: int, split: int, points: Any = None) -> list[int]:
    """Branch-GRPO's split points: the listed steps `points` (the released script's
    --tree_split_points, e.g. 0,3,6,9 of 20) or, without them, `split` evenly spaced steps from
    the first one (the toy's {389 - (389 // #split) j}, THEORY.md §8.4), i.e. j * (steps // split)."""
    if points is not None:
        pts = sorted(int(p) for p in points)
        if len(pts) != split or len(set(pts)) != len(pts) or not all(0 <= p < steps for p in pts):
            raise ValueError(f"finetune(): split_steps={list(points)!r} must be split={split} "
                             f"distinct steps in [0, steps - 1 = {steps - 1}]")
        return pts
    stride = steps // split
    return [j * stride for j in range(split)]


@dataclass(frozen=True)
class BatchGeometry:
    """A validated batch geometry (see the module docstring). `rows_per_rollout` counts training
    rows (state, timestep) of one micro-batch, `samples_per_rollout` the terminal samples that are
    scored by the reward."""

    conditions: int
    group_size: int
    timesteps: int
    inner_epochs: int = 1
    accumulate: int = 1
    rows_per_rollout: int = 0
    samples_per_rollout: int = 0

    @property
    def rows_per_update(self) -> int:
        return self.rows_per_rollout * self.accumulate

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps per iteration."""
        return self.inner_epochs

    def __str__(self) -> str:
        return (f"{self.conditions} conditions x {self.group_size} samples x {self.timesteps} "
                f"timesteps ({self.rows_per_rollout} rows/rollout) x accumulate {self.accumulate}"
                f" x {self.inner_epochs} inner epochs")

    @classmethod
    def from_method(cls, cfg: dict, batch_size: Any, group_size: Any, dim: int = 1,
                    deterministic: Any = ()) -> "BatchGeometry":
        """The geometry of a method preset `cfg` (rsm.methods.get) with `batch_size` conditions
        and `group_size` samples each; raises ValueError naming the conflicting numbers.
        `deterministic`: steps whose stochastic sampler has std = 0 (VP's last step into t = 0):
        stochastic rollouts ("sde", "tree") record no training row there, and a branching budget
        ("branch") may not branch there."""
        name = cfg.get("name", "?")
        conditions = _positive_int(batch_size, "batch_size")
        group = _positive_int(group_size, "group_size")
        steps = _positive_int(cfg["steps"], "steps")
        inner = _positive_int(cfg.get("inner_epochs", 1), "inner_epochs")
        accumulate = _positive_int(cfg.get("accumulate", 1), "accumulate")
        family, rollout = cfg["family"], cfg["rollout"]
        if family == "zeroth-order" and rollout == "sde" and group < 2:
            raise ValueError(f"finetune(): method {name!r} normalises rewards within groups: "
                             f"group_size={group} must be >= 2")
        if family == "pathwise" and inner > 1:
            raise ValueError(f"finetune(): method {name!r} back-propagates the reward through its "
                             f"own rollout, valid only at the rollout's parameters: inner_epochs="
                             f"{inner} must be 1 (use accumulate or more iterations)")
        if rollout == "branch":
            budget = list(cfg["budget"])
            if len(budget) > steps:
                raise ValueError(f"finetune(): budget has {len(budget)} entries but the grid has "
                                 f"steps={steps} transitions")
            if any(k < 0 for k in budget) or not any(k >= 2 for k in budget):
                raise ValueError(f"finetune(): budget {budget} needs non-negative entries and at "
                                 "least one transition with >= 2 children (a group)")
            if any(k == 1 for k in budget):
                raise ValueError(f"finetune(): budget {budget}: a transition with 1 child has a "
                                 "zero-variance group and gives no signal; use 0 or >= 2")
            flat = [i for i, k in enumerate(budget) if k > 0 and i in set(deterministic)]
            if flat:
                raise ValueError(f"finetune(): budget {budget} branches at step(s) {flat}, where the "
                                 "stochastic sampler has std 0 (VP's step into t = 0: no density, "
                                 "no signal); set those entries to 0")
            timesteps = sum(1 for k in budget if k > 0)
            rows = conditions * sum(budget)
            samples = rows
        elif rollout == "tree":
            split, branch = cfg["split"], cfg["branch"]
            split = _positive_int(split, "split")
            branch = _positive_int(branch, "branch")
            if branch < 2:
                raise ValueError(f"finetune(): branch={branch}: a tree needs >= 2 children per split")
            if split > steps:
                raise ValueError(f"finetune(): split={split} split points do not fit into the "
                                 f"steps={steps} transitions of the grid")
            from .tree import check_options

            check_options(cfg, steps)
            leaves = branch ** split
            if group != leaves:
                raise ValueError(f"finetune(): method {name!r} grows branch={branch} ** split="
                                 f"{split} = {leaves} leaves per root, but group_size={group}; "
                                 f"pass group_size={leaves}")
            spec = trained_steps(cfg.get("train_steps", "all"), steps)
            trained = [i for i in (spec if isinstance(spec, list) else range(steps))
                       if i not in set(deterministic)]
            splits = tree_split_steps(steps, split, cfg.get("split_steps"))
            rows = conditions * sum(branch ** sum(1 for s in splits if s <= i) for i in trained)
            timesteps, samples = len(trained), conditions * leaves
        elif rollout == "refl":
            late = _positive_int(cfg["late_steps"], "late_steps")
            if late > steps - 1:
                raise ValueError(f"finetune(): late_steps={late} must leave at least one ODE step "
                                 f"before the trained one: late_steps <= steps - 1 = {steps - 1}")
            timesteps, rows = 1, conditions * group
            samples = rows
        else:
            spec = trained_steps(cfg.get("train_steps", "all"), steps)
            if family == "pathwise":
                trunc = _positive_int(cfg.get("truncation", 1), "truncation")
                if trunc > steps:
                    raise ValueError(f"finetune(): truncation={trunc} exceeds the steps={steps} "
                                     "transitions of the rollout")
                spec = list(range(steps - trunc, steps))
            if isinstance(spec, list) and rollout == "sde":
                spec = [i for i in spec if i not in set(deterministic)]
            rule = cfg.get("timestep_subset", "per_rollout")
            if rule == "one_per_sample":     # SQDF: one random step per sample
                timesteps = 1
            elif isinstance(spec, float) and rule in ("trunks", "trunks_min1", "stratified"):
                from .conventions import stratified_count, trunk_number

                timesteps = (stratified_count(spec, steps) if rule == "stratified"
                             else trunk_number(spec, steps) + 1)
            elif isinstance(spec, float):
                from .conventions import subset_count

                per_sample = rule == "per_sample"
                timesteps = subset_count(spec, steps, per_sample)
                if timesteps < 1:
                    raise ValueError(f"finetune(): train_steps={spec} with timestep_subset="
                                     f"'per_sample' trains int({spec} x {steps - 1}) = 0 steps "
                                     "per sample; raise train_steps or steps")
            else:
                timesteps = len(spec)
            rows = conditions * group * timesteps
            samples = conditions * group
        if samples * dim >= _MAX_ELEMENTS:
            raise ValueError(f"finetune(): {samples} samples x dim {dim} per rollout exceed the "
                             f"{_MAX_ELEMENTS} elements one sampler call can address")
        return cls(conditions, group, timesteps, inner, accumulate, rows, samples)
