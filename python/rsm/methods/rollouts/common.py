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
    (a seeded random subset per rollout, as DanceGRPO's timestep subsampling) or a list."""
    spec = trained_steps(tr.cfg.get("train_steps", "all"), steps)
    if isinstance(spec, float):
        count = _conv.subset_count(spec, steps, per_sample=False)
        u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.TRAIN_STEPS),
                                   0, 0, steps, "float64"))
        # DanceGRPO-style subsampling among the trainable steps (not the last one)
        return sorted(int(i) for i in np.argsort(u[: steps - 1])[:count])
    return spec


def sample_steps(tr: Any, n: int, steps: int, row_offset: int = 0) -> np.ndarray | None:
    """timestep_subset "per_sample" with a fractional train_steps f (DanceGRPO): a boolean
    [n, steps] selection, each sample its own int(f (S - 1)) steps among 0..S-2 (the first
    entries of a per-sample random permutation, from the rollout's own stream); None otherwise
    (every sample trains the steps of train_steps). row_offset: the global index of the first
    sample (a data-parallel rank's shard draws what the single process draws for its rows)."""
    spec = trained_steps(tr.cfg.get("train_steps", "all"), steps)
    if not isinstance(spec, float) or tr.cfg.get("timestep_subset") != "per_sample":
        return None
    count = _conv.subset_count(spec, steps, per_sample=True)
    u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.SAMPLE_STEPS),
                               0, row_offset * (steps - 1), n * (steps - 1),
                               "float64")).reshape(n, steps - 1)
    chosen = np.zeros((n, steps), dtype=bool)
    chosen[np.arange(n)[:, None], np.argsort(u, axis=1, kind="stable")[:, :count]] = True
    return chosen
