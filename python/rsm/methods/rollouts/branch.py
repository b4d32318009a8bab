"""Branch rollouts (TempFlow-GRPO, the zeroth-order redesigns rsm-zo / rsm-zo-diffusion): an ODE
root per condition, then k_i single-step SDE branches from the root state at t_i, each continued
by the ODE to t = 0 (stochasticity localisation, THEORY.md §9.2.1): one C call
(csrc/train/rollout.h), which calls the reward once on every branch end. The one stochastic step
is the method's (PCPO's std when pcpo_weight > 0: the SD1.5 redesign, THEORY.md §9.3), the same
step Setting.sde[i] weighs in the loss. Also the ODE KL-anchor rows at the untrained steps."""
from __future__ import annotations

from typing import Any

import numpy as np

from ... import _C
from ...sampling import _core_of, _model_cond, _path_core, _sampler_kind
from .. import streams
from ..batch import Batch, Row
from ..coefficients import anchor_beta


def rollout(tr: Any) -> Batch:
    first, roots = tr._groups()   # all roots, or a data-parallel rank's (rsm.dp_finetune)
    cfg, cond_root = tr.cfg, tr.cond
    steps = cfg["steps"]
    budget = list(cfg["budget"]) + [0] * (steps - len(cfg["budget"]))
    active = [k for k in budget if k > 0]
    k_avg = sum(active) / len(active)
    cond_rows = {k: tr._cond_rows(k) for k in set(active)}   # None when unconditional
    cond_x0 = None if cond_root is None else np.concatenate([cond_rows[k] for k in active])
    det_kind, det_eta = _sampler_kind(tr.deterministic, None)
    sto_kind, sto_eta = _sampler_kind(tr.stochastic, None)
    out = _C.branch_rollout(_core_of(tr.policy), _path_core(tr.path, "finetune"),
                            np.ascontiguousarray(tr.ts),
                            roots, det_kind, sto_kind, np.asarray(budget, dtype=np.int64),
                            np.array([streams.mix(tr.seed, tr._draw, i + 1) for i in range(steps)],
                                     dtype=np.uint64),
                            seed=streams.mix(tr.seed, tr._draw), root_eta=det_eta,
                            branch_eta=sto_eta, noise_level=float(cfg["noise_level"]),
                            pcpo_weight=tr.pcpo_weight,
                            cond=_model_cond(tr.policy, cond_root, roots, "finetune"),
                            reward=tr._reward_hook(cond_x0), row_offset=first)
    root_xs = np.from_dlpack(out["root_xs"])
    x_next, u_old, noise, log_prob = (np.from_dlpack(out[k]) for k in
                                      ("x_next", "outputs", "noises", "log_probs"))
    keys, rows = [], []
    offset = 0
    for i, k in enumerate(budget):
        if k == 0:
            continue
        n_rows = roots * k
        sel = slice(offset, offset + n_rows)
        keys.append(np.arange(n_rows) // k + i * roots)   # group = (root, t_i)
        rows.append(Row(step=i, x=np.repeat(root_xs[i], k, axis=0), x_next=x_next[sel],
                        u_old=u_old[sel], noise=noise[sel], traj=offset + np.arange(n_rows),
                        cond=cond_rows[k], weight=k_avg / k,
                        log_prob=log_prob[sel].astype(np.float64),
                        grid=tr.ts[i:], grid_step=0, window=(0, 1)))
        offset += n_rows
    return Batch(x0=np.from_dlpack(out["x0"]), groups=np.concatenate(keys), rows=rows,
                 nfe=int(out["nfe"]), cond_x0=cond_x0, scored=out["reward"],
                 anchor_rows=kl_anchor_rows(tr, root_xs, budget, offset, k_avg))


def kl_anchor_rows(tr: Any, root_xs: np.ndarray, budget: list, transition_rows: int,
                   k_avg: float) -> list:
    """The ODE KL-anchor rows of a branch rollout (THEORY.md §9.2.5, §9.3): the root states
    x_{t_i} at the budget's k_i = 0 transitions (i < len(preset budget), never the last
    transition), which no branch trains. With kl_anchor_max_ratio r, at most
    max(1, int(r * transition_rows)) (root, step) pairs, a random subset drawn from the
    rollout's own stream. One row per anchor step; "weight" is the per-row weight of
    kl_anchor_reduce "k_avg" (the "mean" weight needs the update's normalizer)."""
    cfg = tr.cfg
    if anchor_beta(cfg) == 0.0:
        return []
    last = min(len(cfg["budget"]), cfg["steps"] - 1)
    steps = [i for i in range(last) if budget[i] == 0 and tr.sde[i]["std"] > 0]
    keep = np.ones((len(steps), tr._groups()[1]), dtype=bool)   # (anchor step, root)
    ratio = cfg.get("kl_anchor_max_ratio")
    if ratio is not None and keep.size:
        target = max(int(transition_rows * ratio), 1) if ratio > 0 else 0
        if target < keep.size:
            u = np.from_dlpack(_C.random("uniform", streams.mix(tr.seed, tr._draw, streams.KL_ANCHOR_ROWS),
                                         0, 0, keep.size, "float64"))
            keep = np.zeros(keep.size, dtype=bool)
            keep[np.argsort(u, kind="stable")[:target]] = True
            keep = keep.reshape(len(steps), tr.batch_size)
    cond = tr.cond
    rows = []
    for i, roots in zip(steps, keep):
        if not roots.any():
            continue
        rows.append(Row(step=i, x=np.ascontiguousarray(root_xs[i][roots]),
                        cond=None if cond is None else np.ascontiguousarray(cond[roots]),
                        weight=k_avg, anchor=True))
    return rows
