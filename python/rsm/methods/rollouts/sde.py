"""Full SDE trajectories (Flow-GRPO, DDPO, DanceGRPO, GRPO-Guard, PCPO, MixGRPO, the SDE
first-order methods): one C sampler run (rsm.sample) that calls the reward once on its end
states; every stochastic step is a training row (MixGRPO: only its window's steps are
stochastic)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..._C import random as _random
from ... import conventions as _conv
from ...sampling import sample
from .. import streams
from ..batch import Batch, Row
from .common import sample_steps, step_rows, train_steps


def rollout(tr: Any) -> Batch:
    first, groups = tr._groups()   # all groups, or a data-parallel rank's (rsm.dp_finetune)
    cfg, n, dim = tr.cfg, groups * tr.group_size, tr.policy.dim
    cond = tr._cond_rows(tr.group_size)
    x_init = None
    if cfg.get("shared_noise", False):  # DanceGRPO: one initial noise per group
        z = np.from_dlpack(_random("normal", streams.mix(tr.seed, tr._draw, streams.SHARED_NOISE),
                                   0, first * dim, groups * dim, tr.policy.dtype))
        x_init = np.repeat(z.reshape(groups, dim), tr.group_size, axis=0)
    # MixGRPO: the SDE inside this iteration's window, the ODE outside (its rows: the window's)
    window = _conv.mix_window(cfg, tr.ts.shape[0] - 1, tr.iteration)
    traj = sample(tr.policy, n, tr.path, tr.stochastic, ts=tr.ts, noise_level=cfg["noise_level"],
                  seed=streams.mix(tr.seed, tr._draw), cond=cond, x_init=x_init, sde_window=window,
                  return_trajectory=True, pcpo_weight=tr.pcpo_weight, reward=tr._reward_hook(cond),
                  row_offset=first * tr.group_size)
    # per-sample subsets (DanceGRPO, Nabla-GFlowNet, SQDF; keyed by the global sample index)
    chosen = sample_steps(tr, n, traj.steps, row_offset=first * tr.group_size)
    rows = []
    for i in (range(traj.steps) if chosen is not None else train_steps(tr, traj.steps)):
        sel = step_rows(chosen, i, n)
        if not traj.stds[i] > 0 or sel is None:
            continue
        idx, pick, count = sel
        rows.append(Row(step=i, x=pick(traj.xs[i]), x_next=pick(traj.xs[i + 1]),
                        u_old=pick(traj.outputs[i]), noise=pick(traj.noises[i]), traj=idx,
                        cond=None if cond is None else pick(cond), weight=count, count=count,
                        log_prob=pick(traj.log_probs[i]).astype(np.float64), grid=tr.ts,
                        grid_step=i))
    return Batch(x0=traj.x, groups=np.arange(n) // tr.group_size, rows=rows, nfe=traj.nfe,
                 cond_x0=cond, states=traj.xs, scored=traj.reward)
