"""Full SDE trajectories (Flow-GRPO, DDPO, DanceGRPO, GRPO-Guard, PCPO, the SDE first-order
methods): one C sampler run (rsm.sample) that calls the reward once on its end states; every
stochastic step is a training row."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._C import random as _random
from ...sampling import sample
from .. import streams
from ..batch import Batch
from .common import train_steps


def rollout(tr: Any) -> Batch:
    cfg, n, dim = tr.cfg, tr.batch_size * tr.group_size, tr.policy.dim
    cond = tr._cond_rows(tr.group_size)
    x_init = None
    if cfg.get("shared_noise", False):  # DanceGRPO: one initial noise per group
        z = np.from_dlpack(_random("normal", streams.mix(tr.seed, tr._draw, streams.SHARED_NOISE),
                                   0, 0, tr.batch_size * dim, tr.policy.dtype))
        x_init = np.repeat(z.reshape(tr.batch_size, dim), tr.group_size, axis=0)
    traj = sample(tr.policy, n, tr.path, tr.stochastic, ts=tr.ts, noise_level=cfg["noise_level"],
                  seed=streams.mix(tr.seed, tr._draw), cond=cond, x_init=x_init,
                  return_trajectory=True, pcpo_weight=tr.pcpo_weight, reward=tr._reward_hook(cond))
    rows = [{"step": i, "x": traj.xs[i], "x_next": traj.xs[i + 1], "u_old": traj.outputs[i],
             "noise": traj.noises[i], "traj": np.arange(n), "cond": cond, "weight": 1.0,
             "log_prob": traj.log_probs[i].astype(np.float64), "grid": tr.ts, "grid_step": i}
            for i in train_steps(tr, traj.steps) if traj.stds[i] > 0]
    return Batch(x0=traj.x, groups=np.arange(n) // tr.group_size, rows=rows, nfe=traj.nfe,
                 cond_x0=cond, states=traj.xs, scored=traj.reward)
