"""Branch-GRPO's tree bookkeeping (THEORY.md §6.3.8, §7.2): reward fusion from the leaves up,
depth-wise advantages, and the width / depth pruning that decides which transitions reach the loss.

Source: Li et al. 2025, "BranchGRPO: Stable and Efficient GRPO with Structured Branching in
Diffusion Models", arXiv 2509.06040; the formulas below are those of the authors' release,
github.com/Fredreic1849/BranchGRPO, fastvideo/train_branchgrpo_flux.py (read, not copied):
compute_node_rewards_from_leaves, compute_hierarchical_advantages_by_depth and the pruning block
of train_one_step_tree.

Layout (rsm.methods.rollouts.tree): every root grows the same tree; at depth d = 0..S (d = the
number of steps taken) the distinct nodes of all roots are numbered j = 0..distinct[d] - 1, root
major; the transition taken at step i leads into a node at depth i + 1, so a training row "node j
at depth i + 1" is that transition. A split step i gives node j at depth i the children
j * b .. j * b + b - 1 at depth i + 1 (b = distinct[i + 1] / distinct[i]); other steps give it the
single child j.

Fusion ("fusion"):
  "mean"       the reward of a node is the mean reward of its (valid) descendant leaves.
  "path_prob"  recursively from the leaves: a node with one child takes the child's reward; a node
               that splits takes sum_c softmax_c(lp_c) r_c over its children c, lp_c the recorded
               log-probability of the transition into c (per-element mean over the dimensions in
               the authors' code, temperature 1). Invalid children are left out of the softmax.
  The authors' README describes the method with path-probability weighting; their released
  training script runs with it off (--tree_prob_weighted false), i.e. "mean", rsm's default.

Depth-wise advantages: the nodes of one root at one depth form a group; A = clip((r - mean) /
(std + eps), +-adv_clip). The preset key adv_ddof (rsm.conventions) = 0: "population" (THEORY.md
§7.2, rsm's group statistics) or 1: "sample" (the authors' torch.std, Bessel-corrected). Zero-std groups (e.g. a lone root) get A = 0
and carry no signal. (The authors use eps = 1e-8 and call a std below 1e-6 zero.)

Zero-signal transitions (std 0, or below adv_zero_tol: the released 1e-6) have A = 0; with
zero_std "keep" (the release) they stay rows of the mean, with "mask" (rsm's earlier form) they
leave its normaliser.

Depth pruning ("depth_pruning": child depths d, i.e. steps d - 1): those transitions are dropped
from the loss; sampling and rewards are unchanged. With "depth_pruning_slide" = k > 0 the window
moves one depth shallower every k iterations (iteration n, counted from 0, shifts by (n + 1) // k,
the authors' counter starting at 1), at most until its shallowest depth reaches
"depth_pruning_stop" (default: the last split step).

Width pruning ("width_pruning", ratio "width_pruning_ratio") acts on the transitions after the last
split step (step > s_last), after depth pruning, ranked by advantage:
  1  per chain (the descendants of one node made by the last split) keep the best
     max(1, floor(n ratio)) of its n transitions;
  2  over the whole rollout keep the best keep // 2 and the worst keep - keep // 2 transitions,
     keep = max(2, floor(n ratio)).
Ties keep the authors' order (chain by chain, shallow to deep: their depth-first walk). Ranking
uses the clipped advantages; with groups of at most 26 nodes the clip at 5 never binds (a
z-score of n values is at most (n - 1) / sqrt(n)). Note: after the last split every node of a
chain carries its leaf's reward (either fusion) and each depth normalises the same set of values,
so the transitions of one chain tie: mode 1 keeps the shallowest max(1, floor(n ratio)) of every
chain, whatever the rewards; mode 2 ranks whole chains."""
from __future__ import annotations

from typing import Any

import numpy as np

from .objective import group_advantages

FUSIONS = ("mean", "path_prob")
ADV_STDS = ("population", "sample")


def check_options(cfg: Any, steps: int) -> None:
    """The Branch-GRPO tree option that depends on the grid: the pruned child depths within
    [1, steps]. (Each option's type and range are checked when the preset is built,
    rsm.methods.options.)"""
    depths = cfg.get("depth_pruning", [])
    if not all(1 <= d <= steps for d in depths):
        raise ValueError(f"finetune(): depth_pruning={list(depths)!r} must be a list of child depths "
                         f"(ints in [1, steps={steps}]: depth d is the transition of step d - 1)")


def fuse_rewards(distinct: list[int], rewards: np.ndarray, valid: np.ndarray,
                 fusion: str = "mean", edge_log_prob: list[np.ndarray] | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Node rewards and validity per depth d = 0..S (lists of [distinct[d]] arrays) from the leaf
    rewards [distinct[S]] (invalid entries ignored). edge_log_prob[i] [distinct[i + 1]]: the
    log-probability of the transition into each node at depth i + 1 ("path_prob" only)."""
    leaves = rewards.shape[0]
    depth = len(distinct) - 1
    node_r: list[np.ndarray] = [None] * (depth + 1)  # type: ignore[list-item]
    node_ok: list[np.ndarray] = [None] * (depth + 1)  # type: ignore[list-item]
    if fusion == "mean":
        for d, n_nodes in enumerate(distinct):
            per = leaves // n_nodes                        # leaves below each node at depth d
            ok = valid.reshape(n_nodes, per)
            count = ok.sum(1)
            total = np.where(ok, rewards.reshape(n_nodes, per), 0.0).sum(1)
            node_r[d] = np.where(count > 0, total / np.maximum(count, 1), 0.0)
            node_ok[d] = count > 0
        return node_r, node_ok
    if fusion != "path_prob":
        raise ValueError(f"fuse_rewards(): fusion must be one of {FUSIONS}, got {fusion!r}")
    node_r[depth] = np.where(valid, rewards, 0.0).astype(np.float64)
    node_ok[depth] = valid.astype(bool)
    for d in range(depth - 1, -1, -1):
        n_nodes, b = distinct[d], distinct[d + 1] // distinct[d]
        if b == 1:                                      # one child: its reward passes up
            node_r[d], node_ok[d] = node_r[d + 1], node_ok[d + 1]
            continue
        ok = node_ok[d + 1].reshape(n_nodes, b)
        logit = np.where(ok, np.asarray(edge_log_prob[d], np.float64).reshape(n_nodes, b), -np.inf)
        top = np.max(logit, axis=1, keepdims=True)
        weight = np.where(ok, np.exp(logit - np.where(np.isfinite(top), top, 0.0)), 0.0)
        total = weight.sum(1)
        fused = (weight * node_r[d + 1].reshape(n_nodes, b)).sum(1)
        node_ok[d] = ok.any(1)
        node_r[d] = np.where(node_ok[d], fused / np.where(total > 0, total, 1.0), 0.0)
    return node_r, node_ok


def depth_advantages(node_r: list[np.ndarray], node_ok: list[np.ndarray], roots: int, *,
                     eps: float, adv_clip: float, adv_std: str = "population",
                     zero_tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(adv, mask) over all nodes (depth-major, the ids offsets[d] + j): nodes of one root at one
    depth are a group; invalid nodes form groups of their own (A = 0, mask False). A group whose
    std is 0 or below zero_tol (the released 1e-6, with the same ddof) has no signal: A = 0,
    mask False."""
    keys, offset = [], 0
    for d, r in enumerate(node_r):
        n_nodes = r.shape[0]
        root = np.arange(n_nodes) // (n_nodes // roots)
        keys.append(np.where(node_ok[d], d * roots + root, -1 - (offset + np.arange(n_nodes))))
        offset += n_nodes
    rewards, keys = np.concatenate(node_r), np.concatenate(keys)
    if adv_std == "population" and zero_tol == 0.0:
        return group_advantages(rewards, keys, eps=eps, adv_clip=adv_clip)
    if adv_std not in ADV_STDS:
        raise ValueError(f"depth_advantages(): adv_std must be one of {ADV_STDS}, got {adv_std!r}")
    # the std per group here (Bessel-corrected for "sample"), the centred rewards from the engine
    centred, _ = group_advantages(rewards, keys, eps=eps, adv_clip=0.0, center_only=True)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sq = np.bincount(inverse, weights=centred**2)
    ddof = 1 if adv_std == "sample" else 0
    std = np.sqrt(sq / np.maximum(counts - ddof, 1))[inverse]
    mask = (counts[inverse] > 1) & (std > 0) & (std >= zero_tol)
    adv = np.where(mask, centred / np.where(mask, std + eps, 1.0), 0.0)
    if adv_clip > 0:
        adv = np.clip(adv, -adv_clip, adv_clip)
    return adv, mask


def depth_pruned_steps(cfg: dict, splits: list[int], iteration: int) -> set[int]:
    """The steps whose transitions depth pruning drops at `iteration` (see the module docstring)."""
    depths = sorted(int(d) for d in cfg.get("depth_pruning", []))
    if not depths:
        return set()
    slide = int(cfg.get("depth_pruning_slide", 0))
    shift = 0
    if slide > 0:
        stop = cfg.get("depth_pruning_stop")
        stop = max(splits) if stop is None else int(stop)
        shift = min((int(iteration) + 1) // slide, max(0, depths[0] - stop))
    return {d - shift - 1 for d in depths}


def width_kept(steps: list[int], nodes: list[np.ndarray], adv_of: list[np.ndarray],
               last_split: int, mode: int, ratio: float) -> list[np.ndarray]:
    """Which transitions width pruning keeps: for every training row (step steps[k], child nodes
    nodes[k] at depth steps[k] + 1 numbered within the depth, their advantages adv_of[k]) a
    boolean [len(nodes[k])]. Rows at steps <= last_split are kept whole."""
    keep = [np.ones(len(n), dtype=bool) for n in nodes]
    late = [k for k, i in enumerate(steps) if i > last_split]
    if mode == 0 or not late:
        return keep
    for k in late:
        keep[k][:] = False
    # the transitions after the last split in the authors' order: chain by chain, shallow to deep
    entries = sorted(((int(j), steps[k], k, pos) for k in late for pos, j in enumerate(nodes[k])),
                     key=lambda e: (e[0], e[1]))
    if mode == 1:
        chains: dict[int, list] = {}
        for e in entries:
            chains.setdefault(e[0], []).append(e)
        for chain in chains.values():
            order = sorted(chain, key=lambda e: -adv_of[e[2]][e[3]])      # stable: ties keep order
            for _, _, k, pos in order[:max(1, int(len(chain) * ratio))]:
                keep[k][pos] = True
        return keep
    order = sorted(entries, key=lambda e: -adv_of[e[2]][e[3]])
    count = max(2, int(len(order) * ratio))
    best = count // 2
    for _, _, k, pos in order[:best] + order[len(order) - (count - best):]:
        keep[k][pos] = True
    return keep
