"""Optimizer, pretraining and training checkpoints (the loops run in C)."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _C, guards
from ._args import finite_float, float_arg, positive_int, rows_of, seed_int
from .sampling import _model_cond


class History(list):
    """A list of per-step dicts; `.column(key)` and `.to_pandas()` for plots and tables."""

    def column(self, key: str) -> np.ndarray:
        return np.array([row.get(key, np.nan) for row in self], dtype=np.float64)

    def to_pandas(self):  # pragma: no cover - optional dependency
        import pandas as pd

        return pd.DataFrame(list(self))

    def to_numpy(self) -> dict[str, np.ndarray]:
        keys = sorted({k for row in self for k in row})
        return {k: self.column(k) for k in keys}

    def __repr__(self) -> str:   # a few columns of the last rows (rsm.display)
        from .display import history_repr

        return history_repr(self)

    def _repr_html_(self) -> str:
        from .display import history_html

        return history_html(self)


def finetune_row(step: int, reward_mean: float, reward_std: float, valid: np.ndarray,
                 batches: list, rollout_nfe: int, extra_nfe: dict, seconds: float, stats: dict,
                 evaluation: dict) -> dict:
    """One row of a fine-tuning History (rsm.Trainer.step, and its data-parallel form in
    rsm.dp_finetune): the same keys in the same order however it was computed. `valid`: the
    samples whose reward counts; nfe = rollout + training + the extra columns'."""
    row = {"step": step, "reward_mean": reward_mean, "reward_std": reward_std,
           "skipped_rows": int((~valid).sum()),
           "reward_calls": sum(b.reward_calls for b in batches),
           "rollout_nfe": rollout_nfe, **extra_nfe, "seconds": seconds, **stats, **evaluation}
    row["nfe"] = row["rollout_nfe"] + row["train_nfe"] + sum(extra_nfe.values())
    return row


class AdamW:
    """AdamW with bias correction and decoupled weight decay (torch.optim.AdamW semantics),
    global gradient-norm clipping and an optional EMA of the parameters; state in flat buffers."""

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float = 0.0,
                 ema_decay: float = 0.0) -> None:
        # the types here; the values are the core's checks (csrc/optim.c, messages naming them)
        lr = float_arg(lr, "AdamW", "lr")
        if getattr(model, "params", None) is None:
            raise TypeError(f"AdamW(): model must have a flat .params buffer (an rsm.MLP), got {type(model).__name__}")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"AdamW(): betas must be a pair (beta1, beta2), got {betas!r}") from None
        beta1 = float_arg(beta1, "AdamW", "betas[0]")
        beta2 = float_arg(beta2, "AdamW", "betas[1]")
        self.model = model
        # a model on a device: the moments (and EMA) on its device, stepped by the backend's
        # adamw_step (the op the C loops call), never through the host
        from ._device import backend_of

        self._core = _C.AdamWCore(model.params, lr, beta1, beta2,
                                  *(float_arg(v, "AdamW", k) for k, v in (
                                      ("eps", eps), ("weight_decay", weight_decay),
                                      ("max_grad_norm", max_grad_norm), ("ema_decay", ema_decay))),
                                  backend=backend_of(getattr(model, "device", "cpu"), "AdamW"))

    @property
    def config(self) -> dict:
        return dict(self._core.config)

    @property
    def step_count(self) -> int:
        return self._core.step_count

    @property
    def ema(self) -> Any:
        return self._core.ema

    def step(self, grads: Any, lr: float | None = None) -> float:
        """Apply one update from flat gradients (clipped in place); returns the pre-clip norm.
        A non-finite gradient raises FloatingPointError and changes nothing."""
        lr = self.config["lr"] if lr is None else finite_float(lr, "step", "lr", 0.0)
        return self._core.step(self.model.params, grads, lr)

    def state_dict(self) -> dict[str, Any]:
        """m, v (and ema) as host numpy copies (from the device for a device model's optimizer),
        and the step count."""
        from ._device import host_copy

        state = {"m": host_copy(self._core.m), "v": host_copy(self._core.v),
                 "step": self._core.step_count}
        if self._core.ema is not None:
            state["ema"] = host_copy(self._core.ema)
        return state

    def _checked_state(self, state: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """The (destination, value) pairs and the step of a state dict, all checked, nothing written:
        m, v (and ema) real, finite in the optimizer's dtype, of the parameters' shape, v >= 0 (a
        second moment); step an int in [0, 2**63) (the C core's int64 counter)."""
        from ._validate import STEP_LIMIT, real_vector

        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict(): state must be a dict, got {type(state).__name__}")
        keys = ("m", "v") + (("ema",) if self._core.ema is not None else ())
        for key in keys + ("step",):
            if key not in state:
                raise KeyError(f"load_state_dict(): state has no {key!r}")
        pairs = []
        for key in keys:
            dst = np.from_dlpack(getattr(self._core, key))
            src = real_vector(state[key], dst.shape[0], str(dst.dtype), "load_state_dict", f"state[{key!r}]")
            if key == "v" and np.any(src < 0):
                raise ValueError("load_state_dict(): state['v'] (the second moment) has negative entries")
            pairs.append((dst, src))
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < STEP_LIMIT:
            raise ValueError(f"load_state_dict(): state['step']={step!r} must be an int in [0, 2**63)")
        return pairs, int(step)

    def _commit_state(self, pairs: list[tuple[np.ndarray, np.ndarray]], step: int) -> None:
        for dst, src in pairs:
            dst[...] = src
        self._core.step_count = step

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore m, v, ema and the step count; all is checked before anything is written."""
        from ._device import _host_only

        _host_only(self.model, "load_state_dict")  # writes the moments through numpy views
        self._commit_state(*self._checked_state(state))


def save_checkpoint(path: str, model: Any, optimizer: AdamW | None = None, step: int = 0,
                    extra: dict[str, str] | None = None) -> None:
    """Model + optimizer state + step in one safetensors file (atomic), for exact resumption."""
    from . import io

    tensors = {f"model.{k}": v for k, v in model.named_params().items()}
    meta = {"rsm_class": "Checkpoint", "model_class": type(model).__name__,
            "config": json.dumps(model.config), "seed": str(getattr(model, "seed", 0)),
            "step": str(int(step)), **guards.path_metadata(model)}
    if optimizer is not None:
        state = optimizer.state_dict()
        tensors["optimizer.m"] = state["m"]
        tensors["optimizer.v"] = state["v"]
        if "ema" in state:
            tensors["optimizer.ema"] = state["ema"]
        meta["optimizer_step"] = str(state["step"])
        meta["optimizer_config"] = json.dumps(optimizer.config)
    if extra:
        meta.update({str(k): str(v) for k, v in extra.items()})
    io.save_file(tensors, path, metadata=meta)


def load_checkpoint(path: str, model: Any, optimizer: AdamW | None = None) -> dict[str, str]:
    """Restore a checkpoint written by save_checkpoint into `model` (and `optimizer`), in place.
    Everything is validated before anything is written, so a bad file changes nothing."""
    from . import io

    from . import _validate as v

    where = f"load_checkpoint(): {path}"
    tensors, meta = io.load_file(path)  # the header and every tensor's bytes checked
    if meta.get("rsm_class") != "Checkpoint":
        raise io.CheckpointError(f"{where} is not an rsm training checkpoint")
    if optimizer is not None and optimizer.model is not model:
        raise ValueError(f"load_checkpoint(): optimizer was built for another model "
                         f"({type(optimizer.model).__name__} at {id(optimizer.model):#x})")
    # validate everything (step counts, every model and optimizer tensor), then commit
    v.meta_int(meta, "step", where, v.STEP_LIMIT, default=0)
    views = model.named_params()
    v.check_tensors(tensors, {name: view.shape for name, view in views.items()}, where, "model.")
    if optimizer is not None:
        keys = ("m", "v") + (("ema",) if optimizer.ema is not None else ())
        shapes = {key: (model.num_params,) for key in keys}
        v.check_tensors(tensors, shapes, where, "optimizer.")
        state = {key: tensors[f"optimizer.{key}"] for key in keys}
        state["step"] = v.meta_int(meta, "optimizer_step", where, v.STEP_LIMIT, default=0)
        try:
            pairs, opt_step = optimizer._checked_state(state)
        except (TypeError, ValueError, KeyError) as exc:
            raise io.CheckpointError(f"{where}: invalid optimizer state ({exc})") from None
    for name, view in views.items():
        view[...] = tensors[f"model.{name}"]
    if optimizer is not None:
        optimizer._commit_state(pairs, opt_step)
    guards.restore_path(model, meta)
    return meta


def _schedule_lr(lr: float, step: int, warmup: int, decay: int, min_ratio: float) -> float:
    """The learning rate of step `step` (mirrors rsm_pretrain_lr in csrc/train/pretrain.c)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if decay > warmup:
        progress = min(1.0, (step - warmup) / (decay - warmup))
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def pretrain(model: Any, data: Any, path: Any, steps: int = 2000, batch_size: int = 256,
             lr: float = 1e-3, seed: int = 0, progress: bool = True, *, cond: Any = None,
             t_min: float | None = None, t_max: float = 1.0, warmup_steps: int = 0,
             lr_schedule: str = "constant", min_lr_ratio: float = 0.05,
             weight_decay: float = 0.0, max_grad_norm: float = 1.0, ema_decay: float = 0.0,
             optimizer: AdamW | None = None, log_every: int | None = None,
             checkpoint: str | None = None, checkpoint_every: int | None = None,
             resume: str | None = None, cond_dropout: float = 0.0, null_cond: Any = None,
             comm: Any = None, dp_tiles: int | None = None, dp_exact: bool = True,
             dp_verify_every: int = 1) -> History:
    """Pretrain `model` on data[N, dim] by flow matching (FlowPath: velocity regression) or
    denoising score matching (VPPath: eps regression), in C, with AdamW.

    Step k draws its batch, times and noise from Philox streams keyed by (seed, k): the same seed
    gives bitwise-identical parameters, and `resume=` a checkpoint continues exactly as the
    uninterrupted run. lr_schedule: "constant" or "cosine" (decay to min_lr_ratio * lr at the last
    step), after `warmup_steps` of linear warm-up. Returns a History of dicts (step, loss,
    grad_norm, lr, seconds).

    cond: the condition of every data row, [N, cond_dim] vectors or, for a class-conditional model
    (cond_dim 1), class ids [N]. cond_dropout=p replaces a row's condition by the null condition
    with probability p (drawn in C from (seed, step)), so the same network also learns the
    unconditional model that classifier-free guidance (rsm.Guided) needs; null_cond defaults to
    rsm.guidance.null_condition(model) (the null class id, or zeros).

    Data parallelism (rsm.distributed): comm= a communicator (or None under an initialised one
    with several ranks) splits every batch into dp_tiles fixed slices (default gcd(batch_size,
    8)) spread over the ranks; the gradient is reduced exactly, so the parameters are bitwise
    the same for every world size (and checked equal on all ranks every dp_verify_every steps;
    0: never). dp_exact=False all-reduces one summed gradient instead (less traffic, equal only
    up to rounding). The data-parallel run at world size 1 differs from the plain run (one
    backward over the whole batch) by float rounding only. Rank 0 writes the checkpoints; a
    checkpoint resumes under any world size."""
    # Everything is validated before the model, the optimizer or a file is touched.
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"pretrain(): lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    min_lr_ratio = finite_float(min_lr_ratio, "pretrain", "min_lr_ratio", 0.0)
    steps = positive_int(steps, "pretrain", "steps", minimum=0)
    batch_size = positive_int(batch_size, "pretrain", "batch_size")
    lr = finite_float(lr, "pretrain", "lr", 0.0)
    seed = seed_int(seed, "pretrain")
    # kept in Python: it names the type passed, where the core can only say "the model has no
    # parameters to train" (the binding no longer repeats either)
    if getattr(model, "_core", None) is None or not isinstance(model._core, (_C.MLPCore, _C.DiTCore)):
        raise TypeError(f"pretrain(): model must be an rsm.MLP or rsm.DiT, got {type(model).__name__}")
    if getattr(model, "image_shape", None) is not None and len(getattr(data, "shape", ())) == 4:
        data = np.ascontiguousarray(data).reshape(data.shape[0], -1)  # DiT: images -> [N, dim]
    # class ids [N] (DiT, or any model with cond_dim 1) -> the core's [N, 1] reals; condition
    # vectors go to the C checks as they are (exact dtype, like data)
    if cond is not None:
        cond = _model_cond(model, cond, rows_of(data, "pretrain"), "pretrain")
    if not isinstance(getattr(path, "_core", None), _C.PathCore):
        raise TypeError(f"pretrain(): path must be an rsm path (rsm.FlowPath(), rsm.VPPath()), "
                        f"got {type(path).__name__}")
    warmup_steps = positive_int(warmup_steps, "pretrain", "warmup_steps", minimum=0)
    if log_every is not None:  # log_every=0 used to loop forever on empty chunks
        log_every = positive_int(log_every, "pretrain", "log_every")
    if checkpoint_every is not None:
        checkpoint_every = positive_int(checkpoint_every, "pretrain", "checkpoint_every")
    if optimizer is not None and not isinstance(optimizer, AdamW):
        raise TypeError(f"pretrain(): optimizer must be an rsm.AdamW, got {type(optimizer).__name__}")
    if optimizer is not None and optimizer.model is not model:
        # identity, not shape: an AdamW of another model of the same size would update this
        # model's parameters with the other's moments
        raise ValueError(f"pretrain(): optimizer was built for another model ({type(optimizer.model).__name__} "
                         f"at {id(optimizer.model):#x}), not for this {type(model).__name__}")
    cond_dropout = finite_float(cond_dropout, "pretrain", "cond_dropout", 0.0)
    if cond_dropout > 1.0:
        raise ValueError(f"pretrain(): cond_dropout={cond_dropout} must be in [0, 1]")
    if cond_dropout > 0 or null_cond is not None:
        from .guidance import null_condition

        if model.cond_dim == 0:
            raise ValueError("pretrain(): cond_dropout and null_cond need a conditional model (cond_dim > 0)")
        if null_cond is None:
            null_cond = null_condition(model)
        null_cond = np.ascontiguousarray(np.asarray(null_cond, dtype=np.float64).reshape(-1), dtype=model.dtype)
        if null_cond.shape != (model.cond_dim,):
            raise ValueError(f"pretrain(): null_cond must have shape [{model.cond_dim}], got {null_cond.shape}")
    if getattr(model, "device", "cpu") != "cpu":
        # a model on a device: the data set goes there once (not per step); device arrays stay
        from ._device import to_model_device

        data, cond, null_cond = (to_model_device(model, a, "pretrain") for a in (data, cond, null_cond))
    if t_min is None:
        t_min = 0.0 if path.kind == "flow" else 1e-3
    t_min = finite_float(t_min, "pretrain", "t_min")
    t_max = finite_float(t_max, "pretrain", "t_max")
    if checkpoint is not None or resume is not None:
        from . import io  # (fail now, not after training, when it is missing)

        if checkpoint is not None:  # an unwritable path fails now, not after the training
            checkpoint = io.check_writable(checkpoint, "pretrain", "checkpoint")
    from . import distributed as _dist

    comm = _dist.resolve(comm)
    if comm is not None:
        dp_tiles = _dist.check_tiles(math.gcd(batch_size, 8) if dp_tiles is None else dp_tiles,
                                     batch_size, "pretrain", "batch_size")
        dp_verify_every = positive_int(dp_verify_every, "pretrain", "dp_verify_every", minimum=0)
    if optimizer is None:
        optimizer = AdamW(model, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                          ema_decay=ema_decay)
    # a zero-step call checks data, cond, t_min/t_max, batch_size and the optimizer in C
    _C.pretrain_steps(model._core, optimizer._core, path._core, data, cond, batch_size,
                      t_min, t_max, lr, warmup_steps, int(seed), 0, 0,
                      cond_dropout=cond_dropout, null_cond=null_cond)
    guards.record_path(model, path)   # saved with the model and its checkpoints (rsm.guards)
    first = 0
    if resume is not None:
        meta = load_checkpoint(resume, model, optimizer)
        first = int(meta.get("step", 0))
    if log_every is None:
        log_every = max(1, min(100, steps // 50 if steps >= 50 else 1))
    bar = _progress(steps - first, progress, "pretrain")
    history = History()
    start = time.perf_counter()
    k = first
    if comm is not None:
        def on_step(step, loss, norm, step_lr):
            history.append({"step": step, "loss": loss, "grad_norm": norm, "lr": step_lr,
                            "seconds": time.perf_counter() - start})
            if bar is not None:
                bar.update(1)
            if checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0:
                _dist.save_checkpoint(comm, lambda: save_checkpoint(checkpoint, model, optimizer,
                                                                    step=step + 1))

        try:
            _dist.pretrain_loop(comm, model, optimizer, path, data, cond, batch_size=batch_size,
                                t_min=t_min, t_max=t_max, lr=lr, warmup_steps=warmup_steps,
                                seed=int(seed), first=first, steps=steps,
                                decay=steps if lr_schedule == "cosine" else 0,
                                min_lr_ratio=min_lr_ratio, cond_dropout=cond_dropout,
                                null_cond=null_cond, tiles=dp_tiles, exact=bool(dp_exact),
                                verify_every=dp_verify_every, on_step=on_step,
                                schedule=lambda step: _schedule_lr(
                                    lr, step, warmup_steps, steps if lr_schedule == "cosine" else 0,
                                    min_lr_ratio))
        finally:
            if bar is not None:
                bar.close()
        k = max(first, steps)
    try:
        while k < steps:
            chunk = min(log_every, steps - k)
            if checkpoint_every:
                chunk = min(chunk, checkpoint_every - (k % checkpoint_every))
            decay = steps if lr_schedule == "cosine" else 0
            losses, norms = _C.pretrain_steps(model._core, optimizer._core, path._core, data, cond,
                                              batch_size, t_min, t_max, lr,
                                              int(warmup_steps), int(seed), k, chunk, int(decay),
                                              min_lr_ratio, cond_dropout, null_cond)
            losses, norms = np.from_dlpack(losses), np.from_dlpack(norms)  # host on every device
            elapsed = time.perf_counter() - start
            for j in range(chunk):
                step = k + j
                step_lr = _schedule_lr(lr, step, warmup_steps, steps if lr_schedule == "cosine" else 0,
                                       min_lr_ratio)
                history.append({"step": step, "loss": float(losses[j]), "grad_norm": float(norms[j]),
                                "lr": step_lr, "seconds": elapsed})
            k += chunk
            if bar is not None:
                bar.update(chunk)
                bar.set_postfix(loss=f"{float(np.mean(losses)):.4f}")
            if checkpoint and checkpoint_every and k % checkpoint_every == 0:
                save_checkpoint(checkpoint, model, optimizer, step=k)
    finally:
        if bar is not None:
            bar.close()
    if checkpoint:
        _dist.save_checkpoint(comm, lambda: save_checkpoint(checkpoint, model, optimizer, step=k))
    if not all(math.isfinite(r["loss"]) for r in history):
        raise FloatingPointError("pretrain(): the loss became non-finite; lower lr")
    return history
