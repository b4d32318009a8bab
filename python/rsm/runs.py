"""Run management for fine-tuning: saving and resuming a Trainer exactly, and what rsm.finetune
does around each iteration (logging, periodic saves, the KL warning).

A trainer file (Trainer.save) is one safetensors file, written atomically (temporary file, fsync,
rename): the policy's flat parameters, the optimizer's m, v and EMA, the conditions, the KL grid,
and JSON metadata with the method and every option that differs from its preset, the batch
geometry, the seed, the iteration (which keys every random stream of the next iteration, so it
is the RNG counter), the optimizer step, the history, the path and a SHA-256 digest of the
reference's parameters. Trainer.load(file, ref, reward) rebuilds the trainer; a resumed run
continues bitwise as the uninterrupted one (same rollouts, same updates, same history rows but
for the wall-clock columns)."""
from __future__ import annotations

import hashlib
import html
import json
import math
import os
import warnings
from typing import Any

import numpy as np

from . import guards
from .display import MAX_OPTIONS, _fmt, history_html, table_html
from .training import History

FORMAT = "rsm.Trainer/1"
TIMING_COLUMNS = ("seconds", "eval_seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a trainer file")


def params_digest(model: Any) -> str:
    """SHA-256 of a model's parameters (bytes, dtype, shape) and configuration: the identity of
    a reference model. Models without a parameter buffer digest their repr."""
    h = hashlib.sha256()
    params = getattr(model, "params", None)
    if params is not None:
        arr = np.ascontiguousarray(np.from_dlpack(params))
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    else:
        h.update(repr(model).encode())
        for name in ("means", "stds", "weights"):
            if hasattr(model, name):
                h.update(np.ascontiguousarray(getattr(model, name)).tobytes())
    scale = getattr(model, "scale", None)
    if scale is not None and type(model).__name__ == "Guided":
        h.update(repr(float(scale)).encode())
    return h.hexdigest()


def _model_spec(model: Any) -> dict[str, Any]:
    """What rebuilds the policy's module (its parameters are stored apart)."""
    from .dit import DiT, LoRADiT
    from .guidance import Guided
    from .models import MLP

    spec: dict[str, Any] = {}
    if isinstance(model, Guided):
        spec["guided_scale"] = model.scale
        model = model.model
    if isinstance(model, LoRADiT):
        spec.update(kind="LoRADiT", rank=model.rank, alpha=model.alpha, targets=list(model.targets),
                    seed=model.seed)
    elif isinstance(model, (MLP, DiT)):
        spec.update(kind=type(model).__name__, config=model.config, seed=model.seed)
    else:
        spec.update(kind=type(model).__name__)
    return spec


def _build_model(spec: dict[str, Any], ref: Any) -> Any:
    from .dit import DiT, LoRADiT
    from .guidance import Guided
    from .models import MLP

    kind = spec.get("kind")
    if kind == "MLP":
        c = spec["config"]
        model: Any = MLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], int(spec["seed"]),
                         temb_dim=c["temb_dim"], dtype=c["dtype"])
    elif kind == "DiT":
        model = DiT._from_config(spec["config"], int(spec["seed"]))
    elif kind == "LoRADiT":
        base = guards._inner(ref)
        if not isinstance(base, DiT):
            raise ValueError("Trainer.load(): the policy is a LoRA on the reference, but ref is not an rsm.DiT")
        model = LoRADiT(base, spec["rank"], spec["alpha"], tuple(spec["targets"]), int(spec["seed"]))
    else:
        raise ValueError(f"Trainer.load(): cannot rebuild a policy of type {kind!r}; pass policy=")
    if "guided_scale" in spec:
        model = Guided(model, spec["guided_scale"])
    return model


def _reward_spec(reward: Any) -> dict[str, Any] | None:
    from .rewards import AnalyticReward

    if isinstance(reward, AnalyticReward):
        return {"kind": reward.kind, "params": reward.params.tolist(), "name": reward.name}
    return None


def _options(trainer: Any) -> dict[str, Any]:
    """The trainer's options that differ from its preset (what rebuilds trainer.cfg)."""
    from . import methods

    preset = methods.get(trainer.method)
    out = {}
    for key, value in trainer.cfg.items():
        if key in ("name", "description"):
            continue
        if json.dumps(preset.get(key), default=_json_default) != json.dumps(value, default=_json_default):
            out["sampler_steps" if key == "steps" else key] = value
    return out


def _reward_conditions(trainer: Any) -> np.ndarray | None:
    c = trainer._conditions
    if c is None:
        return None
    return np.rint(c[:, 0]).astype(np.int64) if trainer._class_ids else np.ascontiguousarray(c)


def save_trainer(trainer: Any, file: str | os.PathLike) -> None:
    """Trainer.save: see the module docstring."""
    from . import io

    if (type(trainer).__name__, type(trainer).__module__) != ("Trainer", "rsm.trainer"):
        raise TypeError(f"Trainer.save(): {type(trainer).__name__} keeps state that Trainer.save "
                        "does not know; save its models and optimizer yourself")
    state = trainer.optimizer.state_dict()
    tensors: dict[str, Any] = {
        "policy.params": np.ascontiguousarray(np.from_dlpack(trainer.policy.params)),
        "optimizer.m": state["m"], "optimizer.v": state["v"],
        "kl_grid": np.ascontiguousarray(trainer.kl_grid, dtype=np.float64)}
    if "ema" in state:
        tensors["optimizer.ema"] = state["ema"]
    conditions = _reward_conditions(trainer)
    if conditions is not None:
        tensors["conditions"] = conditions
    info = {
        "format": FORMAT, "method": trainer.method, "options": _options(trainer),
        "batch_size": trainer.batch_size, "group_size": trainer.group_size, "seed": trainer.seed,
        "kl_every": trainer.kl_every, "kl_samples": trainer.kl_samples,
        "kl_noise_level": trainer.kl_noise_level, "iteration": trainer.iteration,
        "optimizer_step": state["step"], "reward_calls": trainer.reward.calls,
        "path": guards.describe_path(trainer.path), "policy": _model_spec(trainer.policy),
        "ref_digest": params_digest(trainer.ref), "reward": _reward_spec(trainer.reward),
        "reward_name": trainer.reward.name}
    if getattr(trainer, "tracker", None) is not None:   # DDPO's per-prompt reward buffers
        info["tracker"] = {str(k): v for k, v in trainer.tracker.state().items()}
    from ._build import __version__

    meta = {"rsm_class": "Trainer", "rsm_version": __version__,
            "trainer": json.dumps(info, default=_json_default),
            "history": json.dumps(list(trainer.history), default=_json_default),
            **guards.path_metadata(trainer.policy)}
    io.save_file(tensors, file, metadata=meta)


def _read(file: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], list]:
    from . import io

    tensors, meta = io.load_file(file)
    if meta.get("rsm_class") != "Trainer":
        raise io.CheckpointError(f"Trainer.load(): {os.fspath(file)} is not a trainer file "
                                 f"(rsm_class={meta.get('rsm_class')!r}); model files load with rsm.load")
    where = f"Trainer.load(): {os.fspath(file)}"
    # bounded parses (rsm.io.parse_json: size, depth, no NaN; every parser error a CheckpointError)
    if "trainer" not in meta:
        raise io.CheckpointError(f"{where} has unreadable metadata (no 'trainer')")
    info = io.parse_json(meta["trainer"], where, "metadata 'trainer'", allow_nan=True)
    history = io.parse_json(meta.get("history", "[]"), where, "metadata 'history'", allow_nan=True)
    if not isinstance(info, dict) or not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise io.CheckpointError(f"{where} has unreadable metadata (trainer must be an object, history a "
                                 f"list of objects)")
    missing = sorted({"method", "options", "batch_size", "group_size", "seed", "kl_every", "kl_samples",
                      "kl_noise_level", "iteration", "optimizer_step", "path", "policy", "ref_digest"} - set(info))
    if missing or not isinstance(info.get("options"), dict):
        raise io.CheckpointError(f"{where} has unreadable metadata (trainer lacks {missing or ['options']})")
    if info.get("format") != FORMAT:
        raise io.CheckpointError(f"Trainer.load(): {os.fspath(file)} has format {info.get('format')!r}, "
                                 f"expected {FORMAT!r}")
    return tensors, info, history


def load_trainer(cls: Any, file: str | os.PathLike, ref: Any, reward: Any = None, *,
                 policy: Any = None, path: Any = None) -> Any:
    """Trainer.load: rebuild the trainer saved in `file` around `ref` (checked against the
    stored digest) and `reward` (optional for the built-in analytic rewards, which are stored).
    policy=: a model to load the parameters into (default: rebuilt from the file); path=: the
    probability path when the file's cannot be rebuilt (a VP path with your own betas)."""
    from . import rewards as _rewards

    tensors, info, _ = _read(file)
    if reward is None:
        spec = info.get("reward")
        if spec is None:
            raise ValueError(f"Trainer.load(): the reward {info.get('reward_name')!r} is a Python "
                             "callable, which a file cannot hold: pass reward=")
        reward = _rewards.AnalyticReward(spec["kind"], spec["params"], name=spec.get("name"))
    if policy is None:
        policy = _build_model(info["policy"], ref)
        guards.copy_path(ref, policy)
    if path is None:
        path = guards.path_from_info(info["path"])
    trainer = cls(policy, ref, reward, info["method"], path=path, batch_size=info["batch_size"],
                      group_size=info["group_size"], seed=info["seed"],
                      conditions=tensors.get("conditions"), kl_every=info["kl_every"],
                      kl_samples=info["kl_samples"], kl_grid=tensors["kl_grid"],
                      kl_noise_level=info["kl_noise_level"], **info["options"])
    restore(trainer, file)
    return trainer


def _cfg_key(option: str) -> str:
    return "steps" if option == "sampler_steps" else option


def _value(info: dict[str, Any], option: str) -> Any:
    """An option's value in a trainer file: stored when it differs from the preset."""
    from . import methods

    if option in info["options"]:
        return info["options"][option]
    return methods.get(info["method"]).get(_cfg_key(option))


def restore(trainer: Any, file: str | os.PathLike) -> None:
    """Put the state saved in `file` into `trainer` (built with the same method, options,
    geometry, seed, reference and conditions, which are checked first): policy parameters,
    optimizer, iteration, history. Nothing changes when a check fails."""
    tensors, info, history = _read(file)
    name = os.fspath(file)
    mismatch = []
    for key, have in (("method", trainer.method), ("batch_size", trainer.batch_size),
                      ("group_size", trainer.group_size), ("seed", trainer.seed)):
        if info[key] != have:
            mismatch.append(f"{key}: file {info[key]!r}, trainer {have!r}")
    mine = json.loads(json.dumps(_options(trainer), default=_json_default))
    if info["options"] != mine:
        keys = sorted(k for k in set(info["options"]) | set(mine) if info["options"].get(k) != mine.get(k))
        mismatch.append("options " + ", ".join(
            f"{k}: file {_value(info, k)!r}, trainer {trainer.cfg.get(_cfg_key(k))!r}" for k in keys))
    if guards.describe_path(trainer.path) != info["path"]:
        mismatch.append(f"path: file {info['path']}, trainer {guards.describe_path(trainer.path)}")
    conditions = _reward_conditions(trainer)
    stored = tensors.get("conditions")
    if (conditions is None) != (stored is None) or (
            conditions is not None and not np.array_equal(conditions, stored)):
        mismatch.append("conditions differ")
    if mismatch:
        raise ValueError(f"resume: {name} was saved by another run: " + "; ".join(mismatch))
    digest = params_digest(trainer.ref)
    if digest != info["ref_digest"]:
        raise ValueError(f"resume: the reference model is not the one {name} was trained against "
                         f"(parameter digest {digest[:12]}... vs {info['ref_digest'][:12]}... in the file)")
    # validate everything (tensors, optimizer state, counters), then commit: nothing changes on a failure
    from ._validate import STEP_LIMIT, real_vector

    for key in ("policy.params", "optimizer.m", "optimizer.v"):
        if key not in tensors:
            raise ValueError(f"resume: {name} has no tensor {key!r}")
    params = tensors["policy.params"]
    if params.shape != (trainer.policy.num_params,):
        raise ValueError(f"resume: {name} holds {params.shape[0] if params.ndim else 0} policy parameters, "
                         f"the policy has {trainer.policy.num_params}")
    state = {"m": tensors["optimizer.m"], "v": tensors["optimizer.v"], "step": info.get("optimizer_step")}
    if trainer.optimizer.ema is not None:
        if "optimizer.ema" not in tensors:
            raise ValueError(f"resume: {name} has no EMA but this trainer keeps one (ema_decay > 0)")
        state["ema"] = tensors["optimizer.ema"]
    if not np.all(np.isfinite(params)):
        raise ValueError(f"resume: {name}: the policy parameters contain NaN or inf")
    params = real_vector(params, trainer.policy.num_params, trainer.policy.dtype, "resume", "policy.params")
    try:
        pairs, opt_step = trainer.optimizer._checked_state(state)
    except (TypeError, ValueError, KeyError) as exc:  # name the file's fields, not the dict's
        raise ValueError(f"resume: {name}: invalid optimizer state (optimizer_step / optimizer.m, .v, .ema): "
                         f"{exc}") from None
    counters = {}
    for key, default in (("iteration", None), ("reward_calls", 0)):
        value = info.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < STEP_LIMIT:
            raise ValueError(f"resume: {name}: {key}={value!r} must be an int in [0, 2**63)")
        counters[key] = value
    tracker_updates = []
    if trainer.tracker is not None:   # DDPO's per-prompt buffers (prompt ids are ints)
        try:
            tracker_updates = [{int(key): [float(v) for v in values]}
                               for key, values in dict(info.get("tracker", {})).items()]
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"resume: {name}: invalid tracker buffers: {exc}") from None
    trainer.policy.load_params(params)
    trainer.optimizer._commit_state(pairs, opt_step)
    trainer.iteration = counters["iteration"]
    trainer._draw = trainer.iteration * trainer.geometry.accumulate
    for update in tracker_updates:   # the buffers as saved, checked above
        trainer.tracker.commit(update)
    trainer.reward.calls = counters["reward_calls"]
    trainer.history = History(history)


# ---- displays of Trainer and Run (notebooks) ---------------------------------------------------------------------------

def _shown_options(trainer: Any) -> dict[str, Any]:
    try:
        return _options(trainer)
    except Exception:  # noqa: BLE001 - a display never raises
        return {}


def _last(trainer: Any) -> str:
    """The last row's reward and KL, and the last evaluated kl_path (every kl_every rows)."""
    if not len(trainer.history):
        return ""
    row = trainer.history[-1]
    parts = [f"{k}={_fmt(row[k])}" for k in ("reward_mean", "kl") if k in row]
    for earlier in reversed(trainer.history):
        value = earlier.get("kl_path", float("nan"))
        if isinstance(value, float) and not math.isnan(value):
            parts.append(f"kl_path={_fmt(value)} (iteration {earlier.get('step', '?')})")
            break
    return ", last: " + ", ".join(parts)


def trainer_repr(trainer: Any) -> str:
    opts = _shown_options(trainer)
    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(opts.items())[:MAX_OPTIONS])
    more = f", +{len(opts) - MAX_OPTIONS} more" if len(opts) > MAX_OPTIONS else ""
    return (f"Trainer(method={trainer.method!r}, path={trainer.path!r}, iteration={trainer.iteration}, "
            f"batch={trainer.batch_size}x{trainer.group_size}, seed={trainer.seed}"
            f"{', options: ' + shown + more if opts else ''}{_last(trainer)})")


def trainer_html(trainer: Any) -> str:
    opts = _shown_options(trainer)
    rows = [["method", trainer.method], ["family", str(trainer.cfg.get("family"))],
            ["path", repr(trainer.path)], ["iteration", trainer.iteration],
            ["batch x group", f"{trainer.batch_size} x {trainer.group_size}"],
            ["seed", trainer.seed],
            ["options changed", ", ".join(f"{k}={_fmt(v)}" for k, v in opts.items()) or "none"]]
    if len(trainer.history):
        for k in ("reward_mean", "kl"):
            if k in trainer.history[-1]:
                rows.append([f"last {k}", trainer.history[-1][k]])
        kl = [r for r in trainer.history if not math.isnan(r.get("kl_path", float("nan")))]
        if kl:
            rows.append([f"kl_path (iteration {kl[-1].get('step')})", kl[-1]["kl_path"]])
    return table_html(["Trainer", ""], rows)


def run_repr(run: Any) -> str:
    t = run.trainer
    return (f"Run(method={t.method!r}, iterations={t.iteration}, policy={type(run.policy).__name__}"
            f"({getattr(run.policy, 'num_params', '?')} params){_last(t)})")


def run_html(run: Any) -> str:
    return (f"<p><b>Run</b> {html.escape(run.trainer.method)}, {run.trainer.iteration} iterations, "
            f"policy {html.escape(type(run.policy).__name__)}</p>" + history_html(run.history))


# ---- what rsm.finetune does around each iteration ------------------------------------------

class RunHooks:
    """Logging (every log_every iterations; sample grids every sample_every for image models),
    saving (every save_every iterations to save_path, and at the end) and two warnings, each
    once per run: kl_path above kl_warn, and the mean reward past the exact target's
    (target_reward: E_{p*}[r] where p* is known) by more than two standard errors."""

    def __init__(self, trainer: Any, *, log_with: Any = None, log_dir: str | os.PathLike = "runs/rsm",
                 log_every: int = 1, log_config: dict | None = None, sample_every: int = 0,
                 save_every: int = 0, save_path: str | os.PathLike | None = None,
                 kl_warn: float | None = 50.0, target_reward: float | None = None) -> None:
        from ._args import positive_int
        from .loggers import make_logger

        self.trainer = trainer
        self.log_every = positive_int(log_every, "finetune", "log_every")
        self.sample_every = positive_int(sample_every, "finetune", "sample_every", minimum=0)
        self.save_every = positive_int(save_every, "finetune", "save_every", minimum=0)
        if self.save_every and save_path is None:
            raise ValueError("finetune(): save_every= needs save_path= (the trainer file to write)")
        self.save_path = save_path
        if kl_warn is not None:
            kl_warn = float(kl_warn)
            if not kl_warn > 0:
                raise ValueError(f"finetune(): kl_warn={kl_warn} must be > 0 (or None: no warning)")
        self.kl_warn = kl_warn
        self._warned = False
        if target_reward is not None:
            if isinstance(target_reward, bool) or not isinstance(
                    target_reward, (int, float, np.integer, np.floating)) or not math.isfinite(target_reward):
                raise ValueError(f"finetune(): target_reward={target_reward!r} must be a finite float "
                                 "(the mean reward under p*) or None")
            target_reward = float(target_reward)
        self.target_reward = target_reward
        self._warned_target = False
        self.log_dir = os.fspath(log_dir)
        self.logger = make_logger(log_with, log_dir=self.log_dir, config=log_config,
                                  resume_from=trainer.iteration)

    def after_step(self, row: dict[str, Any]) -> None:
        t = self.trainer
        k = int(row["step"])
        if self.logger is not None and k % self.log_every == 0:
            self.logger.log(row, k)
        if self.logger is not None and self.sample_every and k % self.sample_every == 0:
            grid = sample_grid(t)
            if grid is not None:
                self.logger.log_images("samples", grid, k)
        kl = row.get("kl_path", float("nan"))
        if self.kl_warn is not None and not self._warned and math.isfinite(kl) and kl > self.kl_warn:
            self._warned = True
            warnings.warn(
                f"iteration {k}: the policy's path KL to the reference is {kl:.3g} nats "
                f"(> kl_warn={self.kl_warn:g}). Rewards this far from the reference are often "
                "reward hacking: look at samples, raise kl=, lower lr=, or stop earlier "
                "(kl_warn=None silences this)", RuntimeWarning, stacklevel=3)
        self._check_target(row, k)
        if self.save_every and t.iteration % self.save_every == 0:
            save_trainer(t, self.save_path)

    def _check_target(self, row: dict[str, Any], k: int) -> None:
        """The mean reward of the batch past E_{p*}[r] by more than two standard errors (the
        batch's own reward_std / sqrt(rows)): the policy has passed the exact optimum of the
        KL-regularised objective, which it can only do by paying more KL than that optimum."""
        if self.target_reward is None or self._warned_target:
            return
        mean, std = row.get("reward_mean", float("nan")), row.get("reward_std", float("nan"))
        count = self.trainer.batch_size * self.trainer.group_size - int(row.get("skipped_rows", 0))
        if not (math.isfinite(mean) and math.isfinite(std)) or count < 1:
            return
        margin = 2.0 * std / math.sqrt(count)
        if mean > self.target_reward + margin:
            self._warned_target = True
            warnings.warn(
                f"iteration {k}: the mean reward {mean:.4g} is past the exact target's "
                f"E_p*[r] = {self.target_reward:.4g} (by more than two standard errors, "
                f"{margin:.2g}): the policy over-optimises the reward relative to p* (a larger "
                "KL than the objective's optimum). Raise kl= or lower lr= "
                "(target_reward=None silences this)", RuntimeWarning, stacklevel=3)

    def close(self, finished: bool) -> None:
        if finished and self.save_path is not None:
            save_trainer(self.trainer, self.save_path)
        if self.logger is not None:
            self.logger.close()


def sample_grid(trainer: Any, n: int = 16) -> np.ndarray | None:
    """An image grid [H, W, C] in [0, 1] of n deterministic samples of an image policy (fixed
    noise, the conditions in order), or None for a model that is not an image model."""
    from .display import tile_images
    from .sampling import sample

    shape = getattr(trainer.policy, "image_shape", None)
    if shape is None:
        return None
    c = trainer._conditions   # condition j mod M for sample j, whatever the iteration
    cond = None if c is None else np.ascontiguousarray(c[np.arange(n) % c.shape[0]])
    if cond is not None and trainer._class_ids:
        cond = np.rint(cond[:, 0]).astype(np.int64)
    x = np.from_dlpack(sample(trainer.policy, n, trainer.path, trainer.deterministic, ts=trainer.ts,
                              seed=trainer.kl_seed, cond=cond))
    cols = int(math.ceil(math.sqrt(n)))
    rows = n // cols
    imgs = np.asarray(x[: rows * cols], dtype=np.float64).reshape(rows, cols, *shape)
    return tile_images(imgs)
