"""What the rollout kinds share: the trained steps of a rollout. A rollout kind is a function
`rollout(tr) -> Batch` of the trainer `tr` (rsm.Trainer: its policy, setting, seed, current draw
index, conditions and reward hook)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._C import random as _random
from ...geometry import trained_steps
from .. import streams


def train_steps(tr: Any, steps: int) -> list[int]:
    """The trained transitions: "all", "interior" (all but the first), "no_last", a fraction
    (a seeded random subset per rollout, as DanceGRPO's timestep subsampling) or a list."""
    spec = trained_steps(tr.cfg.get("train_steps", "all"), steps)
    if isinstance(spec, float):
        count = max(1, int(round(spec * (steps - 1))))
        u = np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.TRAIN_STEPS),
                                   0, 0, steps, "float64"))
        # DanceGRPO-style subsampling among the trainable steps (not the last one)
        return sorted(int(i) for i in np.argsort(u[: steps - 1])[:count])
    return spec
