"""ODE trajectories (the first-order flow methods, DRaFT): one C sampler run that calls the
reward once on its end states; the states of every trained step are training rows."""
from __future__ import annotations

from typing import Any

from ...sampling import sample
from .. import streams
from ..batch import Batch, Row
from .common import sample_steps, step_rows, train_steps


def rollout(tr: Any) -> Batch:
    n = tr.batch_size * tr.group_size
    cond = tr._cond_rows(tr.group_size)
    traj = sample(tr.policy, n, tr.path, tr.deterministic, ts=tr.ts, cond=cond,
                  seed=streams.mix(tr.seed, tr._draw), return_trajectory=True,
                  reward=tr._reward_hook(cond))
    chosen = sample_steps(tr, n, traj.steps)   # VGG-Flow's per-sample trunks, or None
    rows = []
    for i in (range(traj.steps) if chosen is not None else train_steps(tr, traj.steps)):
        sel = step_rows(chosen, i, n)
        if sel is None:
            continue
        idx, pick, count = sel
        rows.append(Row(step=i, x=pick(traj.xs[i]), u_old=pick(traj.outputs[i]), traj=idx,
                        cond=None if cond is None else pick(cond), weight=count, count=count))
    return Batch(x0=traj.x, rows=rows, nfe=traj.nfe, cond_x0=cond, states=traj.xs,
                 scored=traj.reward)
