"""Branch-GRPO's tree (THEORY.md §6.3.8, §7.2): SDE steps everywhere; before each of the `split`
evenly spaced split steps every node splits into `branch` children, which share the node's state
(the C sampler's branching), and the reward is called once on the leaves. Training rows are the
distinct transitions (node at t_i -> child at t_{i+1}) of the trained steps less the
depth-pruned ones (rsm.tree); row["traj"] indexes the child nodes, whose advantages
rsm.methods.estimates derives from their descendant leaves."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...geometry import tree_split_steps
from ...sampling import sample
from ...tree import depth_pruned_steps
from .. import streams
from ..batch import Batch
from .common import train_steps


def rollout(tr: Any) -> Batch:
    cfg, roots = tr.cfg, tr.batch_size
    splits = tree_split_steps(cfg["steps"], cfg["split"], cfg.get("split_steps"))
    leaves = roots * cfg["branch"] ** len(splits)
    cond_leaf = tr._cond_rows(leaves // roots)
    traj = sample(tr.policy, roots, tr.path, tr.stochastic, ts=tr.ts,
                  noise_level=cfg["noise_level"], seed=streams.mix(tr.seed, tr._draw),
                  cond=tr.cond, branch_steps=splits, branch_factor=cfg["branch"],
                  return_trajectory=True, pcpo_weight=tr.pcpo_weight,
                  reward=tr._reward_hook(cond_leaf))
    assert traj.x.shape[0] == leaves
    distinct = [int(r) for r in traj.rows]          # distinct states at each t_d
    offsets = np.concatenate([[0], np.cumsum(distinct)])  # node ids: offsets[d] + j
    pruned = depth_pruned_steps(cfg, splits, tr.iteration)
    # log-probability of the transition into every node at depth i + 1 (path-probability
    # fusion), per element when the preset averages over the dimensions
    per_dim = tr.policy.dim if cfg["mean_over_dims"] else 1
    # one representative leaf row per node at depth i + 1
    reps = [np.arange(distinct[i + 1]) * (leaves // distinct[i + 1]) for i in range(traj.steps)]
    edge_log_prob = [traj.log_probs[i][idx].astype(np.float64) / per_dim
                     for i, idx in enumerate(reps)]
    rows = []
    for i in train_steps(tr, traj.steps):
        if not traj.stds[i] > 0 or i in pruned:
            continue
        n_nodes, idx = distinct[i + 1], reps[i]
        rows.append({"step": i, "x": traj.xs[i][idx], "x_next": traj.xs[i + 1][idx],
                     "u_old": traj.outputs[i][idx], "noise": traj.noises[i][idx],
                     "traj": offsets[i + 1] + np.arange(n_nodes),
                     "cond": None if cond_leaf is None else cond_leaf[idx], "weight": 1.0,
                     "log_prob": traj.log_probs[i][idx].astype(np.float64), "grid": tr.ts,
                     "grid_step": i})
    return Batch(x0=traj.x, rows=rows, nfe=traj.nfe, cond_x0=cond_leaf, scored=traj.reward,
                 tree={"distinct": distinct, "offsets": offsets, "roots": roots,
                       "splits": splits, "edge_log_prob": edge_log_prob})
