"""What the rollout kinds share: the trained steps of a rollout. A rollout kind is a function
`rollout(tr) -> Batch` of the trainer `tr` (rsm.Trainer: its policy, setting, seed, current draw
index, conditions and reward hook)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._C import random as _random
from ... import conventions as _conv
from ...geometry import trained_steps
from .. import streams


def train_steps(tr: Any, steps: int) -> list[int]:
    """The trained transitions: "all", "interior" (all but the first), "no_last", a fraction
    (a seeded random subset per rollout, as DanceGRPO's timestep subsampling, or Adjoint
    Matching's stratified one with timestep_subset "stratified") or a list."""
    spec = trained_steps(tr.cfg.get("train_steps", "all"), steps)
    if isinstance(spec, float):
        u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.TRAIN_STEPS),
                                   0, 0, steps, "float64"))
        if tr.cfg.get("timestep_subset") == "stratified":
            return _conv.stratified_steps(u, list(range(steps)), _conv.stratified_count(spec, steps))
        count = _conv.subset_count(spec, steps, per_sample=False)
        # DanceGRPO-style subsampling among the trainable steps (not the last one)
        return sorted(int(i) for i in np.argsort(u[: steps - 1])[:count])
    return spec


def sample_steps(tr: Any, n: int, steps: int, row_offset: int = 0) -> np.ndarray | None:
    """Per-sample trained steps with a fractional train_steps f: a [n, steps] selection from the
    rollout's own stream, or None (every sample trains the steps of train_steps). row_offset:
    the global index of the first sample (a data-parallel rank's shard draws what the single
    process draws for its rows). timestep_subset
      "per_sample"      (DanceGRPO) bool: int(f (S - 1)) steps among 0..S-2 each, the first
                        entries of a per-sample random permutation;
      "trunks", "trunks_min1" (Nabla-GFlowNet, VGG-Flow) int counts: the last step and one
                        random step per trunk (rsm.conventions.trunk_counts);
      "one_per_sample"  (SQDF) int counts: one uniformly random step among all S."""
    spec = trained_steps(tr.cfg.get("train_steps", "all"), steps)
    rule = tr.cfg.get("timestep_subset")
    if rule in ("trunks", "trunks_min1", "one_per_sample"):
        # "one_per_sample" reads no fraction: SQDF draws its step whatever train_steps says
        if rule == "one_per_sample":
            spec, width = 1.0, 1
        elif not isinstance(spec, float):
            return None
        else:
            width = _conv.trunk_number(spec, steps)
        u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.SAMPLE_STEPS),
                                   0, row_offset * width, n * width, "float64")).reshape(n, width)
        if rule == "one_per_sample":
            counts = np.zeros((n, steps), dtype=np.int64)
            counts[np.arange(n), np.minimum((u[:, 0] * steps).astype(np.int64), steps - 1)] = 1
            return counts
        return _conv.trunk_counts(u, steps, spec, min_step=1 if rule == "trunks_min1" else 0)
    if not isinstance(spec, float) or rule != "per_sample":
        return None
    count = _conv.subset_count(spec, steps, per_sample=True)
    u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.SAMPLE_STEPS),
                               0, row_offset * (steps - 1), n * (steps - 1),
                               "float64")).reshape(n, steps - 1)
    chosen = np.zeros((n, steps), dtype=bool)
    chosen[np.arange(n)[:, None], np.argsort(u, axis=1, kind="stable")[:, :count]] = True
    return chosen


def step_rows(chosen: np.ndarray | None, i: int, n: int) -> tuple[np.ndarray, Any, Any] | None:
    """The samples that train step i under a per-sample selection (sample_steps): (indices, a
    picker of their rows, their multiplicity: 1.0 or, with counts above 1, a float array); None
    when no sample trains step i."""
    if chosen is None:
        return np.arange(n), (lambda a: a), 1.0
    if not chosen[:, i].any():
        return None
    idx = np.flatnonzero(chosen[:, i])
    pick = (lambda a, idx=idx: np.ascontiguousarray(a[idx]))
    counts = chosen[idx, i]
    many = counts.dtype != bool and counts.max() > 1
    return idx, pick, (counts.astype(np.float64) if many else 1.0)
