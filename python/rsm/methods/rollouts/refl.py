"""ReFL: the ancestral sampler (refl_sampler "stochastic", the released ReFL) or the ODE from
t = 1 down to a random step i among the last `late_steps` (one i per rollout, seeded), then one Tweedie jump x0_hat(x_{t_i}, u(x_{t_i})); the reward is taken at x0_hat
(by Trainer.rollout, after this) and the training row is that single network call."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._C import random as _random
from ...sampling import sample
from .. import streams
from ..batch import Batch, Row


def rollout(tr: Any) -> Batch:
    cfg, n = tr.cfg, tr.batch_size * tr.group_size
    steps, late = cfg["steps"], cfg["late_steps"]
    u01 = float(np.from_dlpack(_random("uniform", streams.mix(tr.seed, tr._draw, streams.REFL_STEP),
                                       0, 0, 1, "float64"))[0])
    i = steps - late + min(int(u01 * late), late - 1)
    cond = tr._cond_rows(tr.group_size)
    # refl_sampler: "stochastic" (the released ReFL: DDPMScheduler.step, ancestral) or
    # "deterministic" (the path's ODE / DDIM)
    sampler = tr.stochastic if cfg.get("refl_sampler") == "stochastic" else tr.deterministic
    traj = sample(tr.policy, n, tr.path, sampler, ts=tr.ts[: i + 1], cond=cond,
                  noise_level=cfg["noise_level"], seed=streams.mix(tr.seed, tr._draw),
                  return_trajectory=True)
    x = np.ascontiguousarray(traj.x)
    u = np.from_dlpack(tr.policy.forward(x, tr.ts[i], cond))
    x0_hat = np.from_dlpack(tr.path.x0_hat(x, u, np.full(n, tr.ts[i])))
    rows = [Row(step=i, x=x, u_old=u, traj=np.arange(n), cond=cond)]
    return Batch(x0=np.ascontiguousarray(x0_hat), rows=rows, nfe=traj.nfe + n, cond_x0=cond)
