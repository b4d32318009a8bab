"""Data-parallel fine-tuning (rsm.Trainer(comm=...)): the rank's share of the groups, the
iteration with the gradient reduced over the ranks (rsm.distributed's exact tiles), and trainer
checkpoints that resume under any world size. The communicators and the tiled reduction are in
rsm.distributed; this module is the fine-tuning loop's side of it."""
from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from .distributed import (Communicator, TiledGradient, check_config, check_same, check_tiles,
                          reduce_scalars, resolve, save_checkpoint, tile_range)
from . import conventions as _conv
from .methods import update as blocks
from .methods.coefficients import anchor_beta
from .training import finetune_row


_DP_ROLLOUTS = ("sde", "branch")
# the per-entry arrays of a training-row dict (rsm.finetune): a tile keeps its entries of each
_ENTRY_FIELDS = ("x", "x_next", "u_old", "noise", "traj", "log_prob", "cond")


class TrainerShard:
    """A rank's part of a data-parallel Trainer: tiles [tiles.start, tiles.stop) of the
    `num_tiles` fixed blocks of groups (`per_tile` groups each), i.e. the groups
    groups = (first, count) of every rollout micro-batch."""

    def __init__(self, comm: Communicator, num_tiles: int, batch_size: int, exact: bool) -> None:
        self.comm, self.num_tiles, self.exact = comm, num_tiles, exact
        self.per_tile = batch_size // num_tiles
        self.tiles = tile_range(num_tiles, comm.rank, comm.world_size)
        self.groups = (self.tiles.start * self.per_tile, len(self.tiles) * self.per_tile)


def trainer_setup(trainer: Any, comm: Any, tiles: Any, exact: bool, base: type) -> TrainerShard | None:
    """Validate a data-parallel Trainer (rsm.Trainer(comm=...); base: rsm.Trainer itself) and
    return its shard; None when it runs in one process. The ranks' configurations are compared
    (check_config)."""
    comm = resolve(comm)
    if comm is None:
        if tiles is not None:
            raise ValueError("Trainer(): dp_tiles needs a communicator (comm= or "
                             "rsm.distributed.init() with several ranks)")
        return None
    cfg, method = trainer.cfg, trainer.method
    kind = type(trainer)
    if kind.step is not base.step or kind.rollout is not base.rollout:
        raise NotImplementedError(f"Trainer(): {kind.__name__} changes the iteration (its own "
                                  "step/rollout); data parallelism runs rsm.Trainer itself")
    if cfg["family"] != "zeroth-order" or cfg["rollout"] not in _DP_ROLLOUTS:
        raise NotImplementedError(
            f"Trainer(): data parallelism runs the zeroth-order presets with SDE or branch "
            f"rollouts (flow-grpo, dance-grpo, ddpo, grpo-guard, pcpo, rsm-zo, ...); {method!r} "
            f"({cfg['family']}, rollout {cfg['rollout']!r}) runs in one process only")
    if cfg["rollout"] == "branch" and anchor_beta(cfg) > 0 and (
            cfg.get("kl_anchor_reduce", "k_avg") == "mean" or cfg.get("kl_anchor_max_ratio") is not None):
        raise NotImplementedError(f"Trainer(): {method!r}: kl_anchor_reduce='mean' and "
                                  "kl_anchor_max_ratio are not data-parallel yet (they count "
                                  "anchor rows over the whole batch)")
    B = trainer.batch_size
    tiles = check_tiles(B if tiles is None else tiles, B, "Trainer", "batch_size (groups)")
    if tiles < comm.world_size:
        raise ValueError(f"Trainer(): dp_tiles={tiles} is smaller than the world size "
                         f"{comm.world_size}: every rank needs at least one tile of groups")
    policy = trainer.policy
    check_config(comm, {"what": "finetune", "method": method, "preset": dict(trainer.cfg),
                        "policy_class": type(policy).__name__, "policy_config": policy.config,
                        "num_params": policy.num_params, "dtype": policy.dtype,
                        "ref_num_params": trainer.ref.num_params, "batch_size": B,
                        "group_size": trainer.group_size, "seed": trainer.seed,
                        "dp_tiles": tiles, "dp_exact": bool(exact)})
    check_same(comm, policy.params, "initial policy parameters")
    check_same(comm, trainer.ref.params, "reference parameters")
    return TrainerShard(comm, tiles, B, bool(exact))


def _select(row: Any, sel: Any) -> Any:
    out = row.copy()
    for key in _ENTRY_FIELDS:
        if out.get(key) is not None:
            out[key] = np.ascontiguousarray(out[key][sel])
    out.pop("u_ref", None)
    out.pop("u_ref_ready", None)
    return out


def _tile_batch(shard: TrainerShard, batch: dict, tile: int) -> dict:
    """The part of a rank's rollout batch that belongs to tile `tile`: every training row's
    entries of the tile's groups (row["traj"] keeps indexing the batch's per-sample arrays)."""
    first, count = shard.groups
    g0 = tile * shard.per_tile - first
    g1 = g0 + shard.per_tile
    keys = np.asarray(batch.groups, dtype=np.int64)   # group id of every sample
    rows = []
    for r in batch["rows"]:
        group = keys[r["traj"]] % count   # sde: the condition; branch: the root (keys + i roots)
        sel = (group >= g0) & (group < g1)
        if sel.any():   # per-sample step subsets (DanceGRPO) can leave a tile without a step
            rows.append(_select(r, sel))
    anchors = [_select(r, slice(g0, g1)) for r in batch.get("anchor_rows", [])]   # one per root
    tile = batch.copy()
    tile.rows, tile.anchor_rows = rows, anchors
    return tile


def _fixed_sum(values: Any) -> float:
    total = 0.0
    for v in np.asarray(values, dtype=np.float64).reshape(-1):
        total += float(v)
    return total


def _dp_update(trainer: Any, batches: list) -> dict:
    """Trainer.update under data parallelism: `inner_epochs` optimizer steps, each on the tiles'
    gradients reduced exactly (TiledGradient) under the global normalizer; all or nothing."""
    shard, comm, cfg = trainer._dp, trainer._dp.comm, trainer.cfg
    epochs, T, k = int(cfg["inner_epochs"]), shard.num_tiles, len(batches)
    counts = reduce_scalars(comm, [sum(blocks.signal_rows(b) for b in batches),
                                   sum(len(r["traj"]) for b in batches for r in b["rows"])])
    normalizer = max(float(counts[0]), 1.0)
    if counts[1] == 0:   # no rank trains a row (MixGRPO's empty window): no optimizer step,
        # as Trainer.update (the counts are global, so every rank skips alike)
        return {"train_nfe": 0, "rows": 0, "grad_norm": 0.0, "loss": 0.0, "kl": 0.0,
                "kl_anchor": 0.0, "clip_fraction": 0.0, "clip_fraction_per_step": []}
    tiles = [(j * T + t, _tile_batch(shard, b, t)) for j, b in enumerate(batches) for t in shard.tiles]
    policy, opt = trainer.policy, trainer.optimizer
    grads = TiledGradient(comm, k * T, policy.num_params, policy.dtype, shard.exact)
    saved = (np.array(np.from_dlpack(policy.params)), opt.state_dict()) if epochs > 1 else None
    stats = {"train_nfe": 0, "rows": int(counts[1])}
    steps = sorted({r["step"] for b in batches for r in b["rows"]})
    try:
        for epoch in range(epochs):
            grads.clear()
            values = np.zeros((k * T, 3 + len(steps)))   # loss, kl, kl_anchor, clip per step
            nfe = 0
            for index, tb in tiles:
                per_batch, out = blocks.run(policy, trainer.ref, opt, trainer.setting, [tb],
                                            normalizer, epochs=0)
                st = blocks.block_stats(cfg, [tb], per_batch, np.from_dlpack(out["loss"]),
                                        np.from_dlpack(out["kl"]), np.from_dlpack(out["clip_fraction"]))
                grads.add(index, out["grads"])
                values[index, :3] = st["loss"], st["kl"], st["kl_anchor"]
                for s, v in st["clip_fraction_per_step"].items():
                    values[index, 3 + steps.index(s)] = v
                nfe += int(out["nfe"])
            total = grads.reduce()
            norm = opt.step(total)
            values = reduce_scalars(comm, values)
            stats["train_nfe"] += int(reduce_scalars(comm, [nfe])[0])
            if epoch == 0:
                stats["loss"] = _fixed_sum(values[:, 0])
                stats["kl"] = _fixed_sum(values[:, 1]) / (T * k)
                stats["kl_anchor"] = _fixed_sum(values[:, 2]) / (T * k)
        stats["grad_norm"] = float(norm)
        per_step = [_fixed_sum(values[:, 3 + i]) / (T * k) for i in range(len(steps))]
        stats["clip_fraction"] = float(np.mean(per_step)) if per_step else 0.0
        stats["clip_fraction_per_step"] = per_step
    except BaseException:
        if saved is not None:   # all or nothing, as the single-process C update
            np.from_dlpack(policy.params)[...] = saved[0]
            opt.load_state_dict(saved[1])
        raise
    return stats


def _global_advantages(trainer: Any, batches: list) -> None:
    """The batch-level advantage conventions (rsm.conventions: a batch-wide std, DDPO's
    per-prompt tracker) see the whole batch, as in one process: every rank gathers the batch's
    rewards, group keys and validity in rank order (the single process's order: ranks own
    consecutive groups), computes the same advantages and keeps its own rows; the tracker's
    pending update is then the same on every rank (committed after the update)."""
    cfg = trainer.cfg
    if "adv_keys" not in batches[0] or (cfg.get("adv_std") != "batch"
                                        and cfg.get("adv_tracker") is None):
        return
    if len(batches) != 1:
        raise NotImplementedError(f"Trainer(): accumulate={len(batches)} with adv_std="
                                  f"{cfg.get('adv_std')!r} / adv_tracker={cfg.get('adv_tracker')!r}"
                                  " is not data-parallel yet; use accumulate=1")
    comm, b = trainer._dp.comm, batches[0]
    first, _ = trainer._groups()
    row0 = first * trainer.group_size
    keys = np.asarray(b["adv_keys"], dtype=np.int64)   # local: group ids, -1 - row if invalid
    keys = np.where(keys >= 0, keys + first, keys - row0)
    rewards = comm.allgatherv(np.asarray(b.rewards, dtype=np.float64))
    keys = comm.allgatherv(keys)
    valid = comm.allgatherv(np.asarray(b.valid, dtype=np.uint8)).astype(bool)
    prompts = trainer._prompt_ids(rewards.shape[0])
    adv, mask, pending = _conv.group_advantages(rewards, keys, valid, cfg, trainer.tracker, prompts)
    _conv.assign_advantages(batches, adv, mask, pending, start=row0)


def trainer_step(trainer: Any) -> dict:
    """Trainer.step under data parallelism: each rank rolls out and scores its groups, the
    update reduces the gradient over the ranks, and the history row (reward statistics over the
    whole batch, counts summed, times the slowest rank's) is the same on every rank."""
    comm = trainer._dp.comm
    evaluation = trainer.kl_eval.columns(trainer.iteration)
    start = time.perf_counter()
    batches = [trainer.rollout(micro=j) for j in range(trainer.geometry.accumulate)]
    _global_advantages(trainer, batches)
    scores = [trainer._step_scores(b) for b in batches]
    rewards = comm.allgatherv(np.concatenate([r for r, _ in scores]).astype(np.float64))
    valid = comm.allgatherv(np.concatenate([v for _, v in scores]).astype(np.uint8)).astype(bool)
    stats = _dp_update(trainer, batches)
    if trainer.tracker is not None:   # the step succeeded: the same update on every rank
        for b in batches:
            trainer.tracker.commit(b.get("tracker_update"))
    trainer.iteration += 1
    extra_nfe = trainer._step_extra_nfe()
    rollout_nfe = sum(int(b.nfe) + int(b.adjoint_nfe) for b in batches)
    rollout_nfe = int(reduce_scalars(comm, [rollout_nfe])[0])
    ok = rewards[valid]
    # exactly rounded sums: the statistics do not depend on how the rows were spread
    mean = math.fsum(ok) / len(ok) if len(ok) else float("nan")
    std = math.sqrt(math.fsum((ok - mean) ** 2) / len(ok)) if len(ok) else float("nan")
    seconds = comm.allgather(np.array([time.perf_counter() - start,
                                       evaluation["eval_seconds"]])).max(axis=0)
    row = finetune_row(trainer.iteration - 1, mean, std, valid, batches, rollout_nfe, extra_nfe,
                       float(seconds[0]), stats, {**evaluation, "eval_seconds": float(seconds[1])})
    trainer.history.append(row)
    return row


# ---- trainer checkpoints (any world size) ----------------------------------------------------

def save_trainer(trainer: Any, path: str) -> None:
    """Policy, optimizer, iteration and history of a Trainer in one safetensors file, written
    atomically by rank 0; resumable under any world size (load_trainer)."""
    from .training import save_checkpoint as save

    extra = {"trainer_method": trainer.method, "trainer_iteration": str(trainer.iteration),
             "trainer_history": json.dumps(list(trainer.history))}
    comm = None if trainer._dp is None else trainer._dp.comm
    save_checkpoint(comm, lambda: save(path, trainer.policy, trainer.optimizer,
                                       step=trainer.iteration, extra=extra))


def load_trainer(trainer: Any, path: str) -> None:
    """Restore a save_trainer checkpoint into `trainer` (same method); the run then continues
    exactly as the uninterrupted one, whatever the world size of either."""
    from . import io
    from .training import History, load_checkpoint

    _, meta = io.load_file(path)
    if meta.get("trainer_method") != trainer.method or "trainer_iteration" not in meta:
        raise io.CheckpointError(f"load_checkpoint(): {path} is not a checkpoint of a "
                                 f"{trainer.method!r} Trainer (it holds {meta.get('trainer_method')!r})")
    history = History(json.loads(meta["trainer_history"]))
    load_checkpoint(path, trainer.policy, trainer.optimizer)
    trainer.iteration = int(meta["trainer_iteration"])
    trainer.history = history
