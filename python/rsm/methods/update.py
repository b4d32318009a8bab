"""The update blocks: every training row of a rollout as one block of the C update
(csrc/train/update.h, one `_C.train_update` call over all blocks, the GIL released), each a
`_C.UpdateBlock` built and checked here once and read by the binding as the core's struct: the states,
the per-row objective coefficients the preset's rule gives (rsm.methods.coefficients) and what
the form reads; then the step statistics from the per-block results."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _C
from .. import conventions as _conv
from ..sampling import _model_cond
from .batch import Row
from .coefficients import RULES, anchor_kl_weight, kl_anchor
from .setting import Setting


def signal_rows(batch: Any) -> float:
    """The trained rows that carry a signal (valid reward, non-zero-std group); a (sample, step)
    pair drawn twice by a per-sample subset (rsm.conventions.trunk_counts) counts twice."""
    return sum(float((batch["mask"][row["traj"]] * row.get("count", 1.0)).sum())
               for row in batch["rows"])


def training_rows(batch: Any) -> list[Row]:
    """The rows of `batch` the update trains, the KL-anchor rows (branch rollouts) last. Rows
    (and batches) built as dicts, by code written before rsm.methods.batch, keep working: their
    rows become Rows here, once, in the batch itself, so the reference outputs' buffer the rows
    carry lasts across calls."""
    out = []
    for key in ("rows", "anchor_rows"):
        rows = batch.get(key) or []
        if not all(type(r) is Row for r in rows):
            rows = batch[key] = [Row.of(r) for r in rows]
        out += rows
    return out


def blocks(policy: Any, s: Setting, batch: Any, normalizer: float = 1.0,
           n_batches: int = 1) -> list:
    """The blocks of the C update (`_C.UpdateBlock`, checked when built), one per training row of
    `batch` and then one per KL-anchor row (branch rollouts). The reference outputs' buffer lives
    in the row, so the reference is evaluated once per rollout however many inner epochs and
    calls follow."""
    rule = RULES[s.cfg["estimator"]]
    out = []
    for row in training_rows(batch):
        i = row.step
        x = np.ascontiguousarray(row.x, dtype=policy.dtype)
        n = x.shape[0]
        if row.anchor:
            coef, form, extra = kl_anchor(s, row, batch, n, normalizer, n_batches)
        else:
            coef, form, extra = rule(s, row, batch, n)
        if row.u_ref is None:
            row.u_ref, row.u_ref_ready = np.empty_like(x), False
        c = s.sde[i]
        # the train-time KL of this step (history "kl"; THEORY.md §11): per sample
        # (1/2) w^2 |u - u_ref|^2, w = |K| / std, on the trained rows only (kl_path is the
        # comparable whole-path KL)
        if row.anchor:
            w = anchor_kl_weight(s, i)
        else:
            w = abs(c["K"]) / c["std"] if c["std"] > 0 else 0.0
        out.append(_C.UpdateBlock(form=form, t=float(s.ts[i]), x=x,
                                  cond=_model_cond(policy, row.cond, n, "finetune"), coef=coef,
                                  u_old=extra.get("u_old"), psi=extra.get("psi"),
                                  noise=extra.get("noise"), u_ref=row.u_ref,
                                  ref_ready=bool(row.u_ref_ready),
                                  # ReFL anchors on the current outputs themselves (stop-gradient)
                                  anchor_current=bool(extra.get("anchor_current", False)),
                                  kl_report=0.5 * w * w))
    return out


def run(policy: Any, ref: Any, optimizer: Any, s: Setting, batches: list, normalizer: float,
        epochs: int) -> tuple[list, dict]:
    """One C call over the training rows of all `batches`: the gradient (epochs = 0) or
    `epochs` optimizer steps (all or nothing). Returns (blocks per batch, the C result)."""
    per_batch = [blocks(policy, s, b, normalizer, len(batches)) for b in batches]
    flat = [blk for bl in per_batch for blk in bl]
    result = _C.train_update(policy._core, ref._core, s.path._core, flat, float(normalizer),
                             linear_only=s.cfg.get("reweight") == "guard",
                             mean_over_dims=bool(s.cfg["mean_over_dims"]),
                             opt=optimizer._core if epochs else None, epochs=int(epochs),
                             lr=optimizer.config["lr"])
    for b in batches:   # the reference outputs are now in every row's buffer
        for row in training_rows(b):
            row.u_ref_ready = True
    return per_batch, result


def block_stats(cfg: Any, batches: list, per_batch: list, loss: Any, kl: Any, clip: Any) -> dict:
    """The step statistics of one epoch from the per-block loss, KL and clip fractions."""
    stats = {"loss": 0.0, "kl": 0.0, "kl_anchor": 0.0, "clip_fraction_per_step": {}}
    k = 0
    for b, bl in zip(batches, per_batch):
        # the KL-anchor blocks follow the row blocks: their loss counts, their KL is reported
        # apart ("kl_anchor") and they clip nothing
        anchors = range(k + len(b["rows"]), k + len(bl))
        stats["kl_anchor"] += float(sum(kl[j] for j in anchors)) / len(batches)
        stats["loss"] += float(sum(loss[j] for j in anchors))
        rows = range(k, k + len(b["rows"]))
        k += len(bl)
        if cfg["estimator"] == "refl":  # ReFL's own loss, lambda mean relu(h - r(x0_hat)) (or -r)
            ok = b["valid"]
            stats["loss"] += (float(cfg["reward_scale"] * _conv.hinge_loss(cfg, b["rewards"][ok]).mean())
                              if ok.any() else 0.0)
        else:
            stats["loss"] += float(sum(loss[j] for j in rows))
        stats["kl"] += float(sum(kl[j] for j in rows)) / len(batches)
        for j, row in zip(rows, b["rows"]):
            stats["clip_fraction_per_step"].setdefault(row["step"], []).append(float(clip[j]))
    stats["clip_fraction_per_step"] = {st: float(np.mean(v))
                                       for st, v in stats["clip_fraction_per_step"].items()}
    return stats
