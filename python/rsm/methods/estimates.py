"""After the reward: the advantages (zeroth order) or the reward-gradient estimates (first order,
pathwise) of a rollout, written into its Batch. ESTIMATES maps a preset's estimator to its
function `estimate(tr, batch)`; `tr` is the trainer (its reward, models, setting)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import conventions as _conv
from .._C import from_dlpack
from ..estimators import first_order_next
from ..objective import group_advantages
from ..tree import depth_advantages, fuse_rewards, width_kept
from .batch import Batch
from .pathwise import lean_adjoint


def tensor(x: np.ndarray) -> Any:
    """x as an rsm.Tensor (what a reward receives)."""
    return from_dlpack(np.ascontiguousarray(x))


def group(tr: Any, batch: Batch) -> None:
    """zo-group / zo-branch: advantages normalised within each group (batch.groups). Rows with an
    invalid reward get groups of their own, so they do not bias the statistics of the valid rows
    of their group; REINFORCE (advantage "center"): (r - mean_g) / alpha. The released-code
    conventions (rsm.conventions: batch std, ddof, DDPO's per-prompt tracker, zero-std rules)
    are computed in numpy; rsm's earlier ones by the C rsm_group_advantages, bitwise as before.
    A tracker is not changed here: batch["tracker_update"] is committed by Trainer.step."""
    cfg, valid = tr.cfg, batch.valid
    keys = np.asarray(batch.groups, dtype=np.int64).copy()
    keys[~valid] = -1 - np.flatnonzero(~valid)
    center = cfg.get("advantage") == "center"
    if not center and not _conv.is_legacy(cfg):
        batch["adv_keys"], batch["prompts"] = keys, tr._prompt_ids(len(keys))
        adv, mask, batch["tracker_update"] = _conv.group_advantages(
            batch.rewards, keys, valid, cfg, tr.tracker, batch["prompts"])
        batch.adv, batch.mask = adv, mask & valid
        return
    adv, mask = group_advantages(np.where(valid, batch.rewards, 0.0), keys, eps=cfg["adv_eps"],
                                 adv_clip=cfg["adv_clip"], center_only=center)
    if center:
        adv = adv / cfg["alpha"]
    batch.adv, batch.mask = adv, mask & valid


def tree(tr: Any, batch: Batch) -> None:
    """zo-tree, node advantages of a Branch-GRPO tree (rsm.tree): node rewards fused from the
    valid leaves ("fusion": mean of the descendant leaves, or the authors' path-probability
    weighting), normalised among the nodes of the same (root, depth) ("adv_ddof"; clipped,
    zero-std masked); then width pruning drops transitions after the last split from
    batch.rows. adv, mask and row_valid are over all nodes (ids offsets[d] + j)."""
    cfg, t, valid = tr.cfg, batch.tree, batch.valid
    node_r, node_ok = fuse_rewards(t["distinct"], np.where(valid, batch.rewards, 0.0), valid,
                                   cfg.get("fusion", "mean"), t["edge_log_prob"])
    adv, mask = depth_advantages(node_r, node_ok, t["roots"], eps=cfg["adv_eps"],
                                 adv_clip=cfg["adv_clip"],
                                 adv_std="sample" if cfg.get("adv_ddof", 0) else "population",
                                 zero_tol=float(cfg.get("adv_zero_tol", 0.0)))
    node_ok = np.concatenate(node_ok)
    rows = batch.rows
    if cfg.get("width_pruning", 0) and rows:
        keep = width_kept([r["step"] for r in rows],
                          [r["traj"] - t["offsets"][r["step"] + 1] for r in rows],
                          [adv[r["traj"]] for r in rows], max(t["splits"]),
                          cfg["width_pruning"], cfg.get("width_pruning_ratio", 0.5))
        pruned = []
        for r, k in zip(rows, keep):
            if k.all():
                pruned.append(r)
            elif k.any():
                pruned.append(r.replace(**{f: r[f][k] for f in
                                           ("x", "x_next", "u_old", "noise", "traj", "log_prob")},
                                        cond=None if r["cond"] is None else r["cond"][k]))
        batch.rows = pruned
    # zero_std "keep" (the released script): the zero-signal transitions (A = 0) stay rows of
    # the mean; "mask": they leave its normaliser
    keep = cfg.get("zero_std", "mask") == "keep"
    batch.adv, batch.mask, batch.row_valid = adv, (node_ok if keep else mask & node_ok), node_ok


def terminal(tr: Any, batch: Batch) -> None:
    """fo-terminal, fo-residual, refl, pathwise: the reward gradient at the samples, zero on the
    invalid ones."""
    batch.grad, batch.mask = np.where(batch.valid[:, None], batch.reward_grad, 0.0), batch.valid


def adjoint(tr: Any, batch: Batch) -> None:
    """fo-adjoint: the terminal gradient carried back by the lean adjoint (rsm.methods.pathwise)."""
    terminal(tr, batch)
    batch.adjoint, batch.adjoint_nfe = lean_adjoint(tr.ref, tr.setting, batch)


def next_state(tr: Any, batch: Batch) -> None:
    """fo-next (THEORY.md §7.1): g = grad_{x'} r(x0_hat(x')) at each row's sampled next state,
    through the Tweedie jump of the rollout policy (Residual nabla-DB) or of the reference (SQDF's
    training-free soft-Q); one reward call per trained step."""
    terminal(tr, batch)
    model = tr.ref if tr.cfg.get("tweedie_model", "policy") == "ref" else tr.policy
    # SQDF's last step (released sd_pipeline.py, timestep_gamma == 0): Q(x') = r(x') itself, x'
    # the sample; its gradient is the terminal one (with reward_reduce "sum", the released form)
    last_is_sample = tr.cfg.get("reward_reduce", "mean") == "sum"
    batch.grad_rows = []
    calls, evaluated = 1, 0
    for k, r in enumerate(batch.rows):
        r["index"] = k
        if last_is_sample and r["step"] == len(tr.ts) - 2:
            batch.grad_rows.append(batch.grad[r["traj"]])
            continue
        calls, evaluated = calls + 1, evaluated + len(r["traj"])
        g = first_order_next(model, tr.path, tr.reward, r["x"], tr.ts, r["step"],
                             x_next=r["x_next"], cond=r.get("cond"),
                             reward_cond=tr.reward_cond(r.get("cond")))
        ok = batch.valid[r["traj"]]
        batch.grad_rows.append(np.where(ok[:, None], g, 0.0))
    batch.reward_calls = calls
    batch.nfe += 2 * evaluated


def tweedie(tr: Any, batch: Batch) -> None:
    """fo-tweedie, VGG-Flow's current-state estimator: grad r at x0_hat(x_t) = x_t - t sg(v), one
    reward call for all (row, t) pairs of the batch."""
    terminal(tr, batch)
    x0_hat = [np.from_dlpack(tr.path.x0_hat(r["x"], r["u_old"], tr.ts[r["step"]]))
              for r in batch.rows]
    conds = [r["cond"] for r in batch.rows]
    cond_rows = None if conds[0] is None else np.concatenate(conds)
    _, g_rows, ok = tr.reward(tensor(np.concatenate(x0_hat)), tr.reward_cond(cond_rows))
    batch.reward_calls = 2
    sizes = np.cumsum([0] + [len(x) for x in x0_hat])
    batch.grad_rows = [np.where(ok[a:b, None], g_rows[a:b], 0.0)
                       for a, b in zip(sizes[:-1], sizes[1:])]
    for k, r in enumerate(batch.rows):
        r["index"] = k


ESTIMATES: dict[str, Callable[[Any, Batch], None]] = {
    "zo-group": group, "zo-branch": group, "zo-tree": tree,
    "fo-terminal": terminal, "fo-residual": terminal, "fo-adjoint": adjoint,
    "fo-next": next_state, "fo-tweedie": tweedie, "refl": terminal, "pathwise": terminal,
}
