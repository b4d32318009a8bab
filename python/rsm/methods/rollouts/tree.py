"""Branch-GRPO's tree (THEORY.md §6.3.8, §7.2): SDE steps everywhere; before each split step (the
listed `split_steps`, or `split` evenly spaced ones) every node splits into `branch` children,
which share the node's state (the C sampler's branching, or with split_noise_scale != 1 one
sampler call per step: the released children drawn with c times the step's std), and the reward
is called once on the leaves. Training rows are the
distinct transitions (node at t_i -> child at t_{i+1}) of the trained steps less the
depth-pruned ones (rsm.tree); row["traj"] indexes the child nodes, whose advantages
rsm.methods.estimates derives from their descendant leaves."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from ..._C import from_dlpack, random as _random
from ...geometry import tree_split_steps
from ...sampling import log_prob, sample
from ...tree import depth_pruned_steps
from .. import streams
from ..batch import Batch, Row
from .common import train_steps


def _scaled_tree(tr: Any, splits: list[int], leaves: int, cond_leaf: Any) -> SimpleNamespace:
    """The tree grown one step at a time (one sampler call per step) so that the children of a
    split step are drawn as the released Branch-GRPO draws them (flux_step_with_split with
    tree_split_noise_scale c): x' = mean + c std z, while the step's density, and so every
    log-probability and ratio, keeps the step's own std. The stored noise is (x' - mean) / std
    (= c z), the deviation the objective reads. Returns the fields of rsm.sampling.Trajectory
    the rollout reads, at leaf resolution (a node's values repeated over its leaves)."""
    cfg, roots, dim = tr.cfg, tr.batch_size, tr.policy.dim
    scale, b, S = float(cfg["split_noise_scale"]), cfg["branch"], tr.ts.shape[0] - 1
    base = streams.mix(tr.seed, tr._draw, streams.TREE_STEPS)
    x = np.from_dlpack(_random("normal", streams.mix(base, S), 0, 0, roots * dim,
                               tr.policy.dtype)).reshape(roots, dim).astype(np.float64)
    xs, outputs, noises, log_probs, stds, distinct = [x], [], [], [], [], [roots]
    nfe = 0
    for i in range(S):
        kids = b if i in splits else 1
        n = x.shape[0]
        cond = None if cond_leaf is None else cond_leaf[np.arange(n) * (leaves // n)]
        step = sample(tr.policy, n, tr.path, tr.stochastic, ts=tr.ts[i:i + 2],
                      noise_level=cfg["noise_level"], seed=streams.mix(base, i), cond=cond,
                      x_init=np.ascontiguousarray(x, dtype=tr.policy.dtype),
                      branch_steps=[0] if kids > 1 else None, branch_factor=kids,
                      return_trajectory=True)
        nfe += int(step.nfe)
        mean, std = step.means[0].astype(np.float64), float(step.stds[0])
        z = step.noises[0].astype(np.float64) * (scale if kids > 1 else 1.0)
        if kids > 1 and std > 0:
            # the states as stored (the policy's dtype), and their log-probability by the C
            # transition log-prob on the full grid: the one the update and check_on_policy
            # recompute, so that the ratio at the rollout parameters is exactly 1 (a log-prob
            # formed here from z differed from it by ~1e-14)
            x_next = (mean + std * z).astype(tr.policy.dtype)
            lp, _ = log_prob(tr.policy, tr.path, step.xs[0], x_next, i, tr.ts, tr.stochastic,
                             noise_level=cfg["noise_level"],
                             cond=None if cond is None else np.repeat(cond, kids, axis=0))
            x_next = x_next.astype(np.float64)
        else:
            x_next = step.xs[1].astype(np.float64)
            lp = step.log_probs[0] if std > 0 else np.zeros(x_next.shape[0])
        per = leaves // x_next.shape[0]     # leaves below each child (children consecutive)
        outputs.append(np.repeat(step.outputs[0], per, axis=0))
        noises.append(np.repeat(z, per, axis=0).astype(tr.policy.dtype))
        log_probs.append(np.repeat(lp, per))
        stds.append(std)
        x = x_next
        xs.append(x)
        distinct.append(x.shape[0])
    xs = [np.repeat(v, leaves // v.shape[0], axis=0).astype(tr.policy.dtype) for v in xs]
    hook = tr._reward_hook(cond_leaf)
    return SimpleNamespace(xs=xs, x=xs[-1], outputs=outputs, noises=noises, log_probs=log_probs,
                           stds=np.asarray(stds), rows=np.asarray(distinct), steps=S, nfe=nfe,
                           reward=None if hook is None else hook(from_dlpack(xs[-1])))


def rollout(tr: Any) -> Batch:
    cfg, roots = tr.cfg, tr.batch_size
    splits = tree_split_steps(cfg["steps"], cfg["split"], cfg.get("split_steps"))
    leaves = roots * cfg["branch"] ** len(splits)
    cond_leaf = tr._cond_rows(leaves // roots)
    if cfg.get("split_noise_scale", 1.0) != 1.0:
        traj = _scaled_tree(tr, splits, leaves, cond_leaf)
    else:   # one C call: the sampler's own branching
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
        rows.append(Row(step=i, x=traj.xs[i][idx], x_next=traj.xs[i + 1][idx],
                        u_old=traj.outputs[i][idx], noise=traj.noises[i][idx],
                        traj=offsets[i + 1] + np.arange(n_nodes),
                        cond=None if cond_leaf is None else cond_leaf[idx],
                        log_prob=traj.log_probs[i][idx].astype(np.float64), grid=tr.ts,
                        grid_step=i))
    return Batch(x0=traj.x, rows=rows, nfe=traj.nfe, cond_x0=cond_leaf, scored=traj.reward,
                 tree={"distinct": distinct, "offsets": offsets, "roots": roots,
                       "splits": splits, "edge_log_prob": edge_log_prob, "states": traj.xs})
