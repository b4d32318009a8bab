"""ODE trajectories (the first-order flow methods, DRaFT): one C sampler run that calls the
reward once on its end states; the states of every trained step are training rows."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...sampling import sample
from .. import streams
from ..batch import Batch, Row
from .common import train_steps


def rollout(tr: Any) -> Batch:
    n = tr.batch_size * tr.group_size
    cond = tr._cond_rows(tr.group_size)
    traj = sample(tr.policy, n, tr.path, tr.deterministic, ts=tr.ts, cond=cond,
                  seed=streams.mix(tr.seed, tr._draw), return_trajectory=True,
                  reward=tr._reward_hook(cond))
    rows = [Row(step=i, x=traj.xs[i], u_old=traj.outputs[i], traj=np.arange(n), cond=cond)
            for i in train_steps(tr, traj.steps)]
    return Batch(x0=traj.x, rows=rows, nfe=traj.nfe, cond_x0=cond, scored=traj.reward)
