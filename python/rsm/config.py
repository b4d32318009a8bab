"""A whole run in one config file (YAML or TOML): the model, the data it is pretrained on, the
reward, the method and its options, the schedule, logging and the seed. Launched by

    python -m rsm pretrain run.yaml     # pretrain model.file on data (if you have no model yet)
    python -m rsm finetune run.yaml     # fine-tune model.file toward the reward; --resume continues

Every section is a dataclass below; unknown keys are refused with the closest known name, and
values are type-checked when the file is read, not at the first iteration. examples/ has
complete files."""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class ModelConfig:
    """The reference model: `file` (written by `pretrain`, read by `finetune`), and what
    `pretrain` builds: an rsm.MLP of `hidden` x `depth` on `dim`-dimensional data, trained on
    `path` ("flow" or "vp"; `schedule` for vp)."""

    file: str = "runs/model.safetensors"
    dim: int = 2
    hidden: int = 256
    depth: int = 3
    dtype: str = "float32"
    path: str = "flow"
    schedule: str = "linear"


@dataclass
class DataConfig:
    """Pretraining data: `size` samples of an rsm.datasets toy distribution."""

    dataset: str = "8gaussians"
    size: int = 50_000


@dataclass
class RewardConfig:
    """`name`: an analytic reward of rsm.rewards (linear, quadratic, distance, ring,
    gmm_logpdf) called with `args`, or "package.module:function" — a reward fn(x0, cond), or,
    when `args` is not empty, a factory called with them that returns one. `differentiable`:
    the callable returns (rewards, grad) (analytic rewards always are)."""

    name: str = "quadratic"
    args: dict = field(default_factory=dict)
    differentiable: bool = False


@dataclass
class MethodConfig:
    """`name`: a preset of rsm.methods.names(); `options`: its hyper-parameters to override
    (the keys rsm.finetune accepts, e.g. lr, kl, clip_eps, sampler_steps)."""

    name: str = "rsm-zo"
    options: dict = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    """Fine-tuning: `iterations` of `batch_size` conditions x `group_size` samples, a trainer
    file every `save_every` iterations (0: at the end only). Pretraining: `pretrain_steps`
    AdamW steps of `pretrain_batch_size` at `pretrain_lr`."""

    iterations: int = 100
    batch_size: int = 16
    group_size: int = 8
    save_every: int = 0
    pretrain_steps: int = 2000
    pretrain_batch_size: int = 256
    pretrain_lr: float = 1e-3


@dataclass
class LoggingConfig:
    """`log_with`: "csv", "tensorboard", "wandb", a list of them, or null; everything goes to
    `dir` (history.csv, samples/, trainer.safetensors, policy.safetensors)."""

    log_with: Union[str, list, None] = "csv"
    dir: str = "runs/rsm"
    every: int = 1
    sample_every: int = 0
    kl_every: int = 5
    kl_warn: Union[float, None] = 50.0
    progress: bool = True


@dataclass
class RunConfig:
    """A whole run; see the module docstring."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "RunConfig":
        return _build(cls, data, where)

    @classmethod
    def from_file(cls, file: str | os.PathLike) -> "RunConfig":
        """Read a .yaml / .yml (PyYAML) or .toml (tomllib) file."""
        file = os.fspath(file)
        ext = os.path.splitext(file)[1].lower()
        if ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError("YAML config files need PyYAML: pip install pyyaml "
                                  "(or write the config as TOML)") from exc
            with open(file) as f:
                data = yaml.safe_load(f) or {}
        elif ext == ".toml":
            import tomllib

            with open(file, "rb") as f:
                data = tomllib.load(f)
        else:
            raise ValueError(f"config file {file!r}: expected a .yaml, .yml or .toml file")
        if not isinstance(data, dict):
            raise ValueError(f"config file {file!r}: expected a mapping at the top level")
        return cls.from_dict(data, where=os.path.basename(file))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(hint):
            try:
                return _check_type(value, arg, where)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise TypeError(f"{where}: {value!r} is none of {hint}")
    if hint is type(None):
        if value is not None:
            raise TypeError(f"{where}: expected null, got {value!r}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if hint in (str, dict, list):
        if not isinstance(value, hint):
            raise TypeError(f"{where}: expected a {hint.__name__}, got {value!r}")
        return value
    return value


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            kwargs[key] = _build(hint_t, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hint_t, f"{where}.{key}")
    return cls(**kwargs)


# ---- what the commands do ----------------------------------------------------------------------

def make_path(cfg: RunConfig) -> Any:
    from .paths import FlowPath, VPPath

    if cfg.model.path == "flow":
        return FlowPath()
    if cfg.model.path == "vp":
        return VPPath(cfg.model.schedule)
    raise ValueError(f"model.path={cfg.model.path!r}: expected 'flow' or 'vp'")


def make_reward(cfg: RunConfig) -> Any:
    import importlib

    from . import rewards
    from .rewards import Reward

    name, args = cfg.reward.name, dict(cfg.reward.args)
    if ":" in name:
        module, _, attr = name.partition(":")
        fn = getattr(importlib.import_module(module), attr)
        if args:
            fn = fn(**args)
        return fn if isinstance(fn, Reward) else Reward(fn, differentiable=cfg.reward.differentiable)
    analytic = ("linear", "quadratic", "distance", "ring", "gmm_logpdf")
    if name not in analytic:
        close = difflib.get_close_matches(name, analytic, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"reward.name={name!r}: expected one of {', '.join(analytic)} or "
                         f"'package.module:function'{hint}")
    return getattr(rewards, name)(**args)


def pretrain(cfg: RunConfig) -> dict[str, Any]:
    """`python -m rsm pretrain`: an MLP pretrained on the dataset, written to model.file."""
    from . import datasets
    from .loggers import make_logger
    from .models import MLP
    from .training import pretrain as _pretrain

    path = make_path(cfg)
    data = datasets.get(cfg.data.dataset).sample(cfg.data.size, seed=cfg.seed)
    model = MLP(cfg.model.dim, cfg.model.hidden, cfg.model.depth, seed=cfg.seed, dtype=cfg.model.dtype)
    history = _pretrain(model, data, path, steps=cfg.schedule.pretrain_steps,
                        batch_size=cfg.schedule.pretrain_batch_size, lr=cfg.schedule.pretrain_lr,
                        seed=cfg.seed, progress=cfg.logging.progress)
    logger = make_logger(cfg.logging.log_with, log_dir=os.path.join(cfg.logging.dir, "pretrain"),
                         config={"config": cfg.to_dict()})
    if logger is not None:
        for row in history:
            if row["step"] % cfg.logging.every == 0:
                logger.log(row, row["step"])
        logger.close()
    os.makedirs(os.path.dirname(os.path.abspath(cfg.model.file)), exist_ok=True)
    model.save(cfg.model.file)
    return {"model": model, "history": history, "file": cfg.model.file}


def finetune(cfg: RunConfig, resume: bool = False) -> Any:
    """`python -m rsm finetune`: fine-tune a copy of model.file; the trainer file, the policy
    and the logs go to logging.dir. resume: continue from logging.dir/trainer.safetensors."""
    from .finetune import finetune as _finetune
    from .models import load

    ref = load(cfg.model.file)
    policy = ref.copy()
    out = cfg.logging.dir
    os.makedirs(out, exist_ok=True)
    state = os.path.join(out, "trainer.safetensors")
    if resume and not os.path.exists(state):
        raise FileNotFoundError(f"--resume: {state} does not exist (no earlier run in {out})")
    run = _finetune(policy, ref, make_reward(cfg), cfg.method.name,
                    iterations=cfg.schedule.iterations, batch_size=cfg.schedule.batch_size,
                    group_size=cfg.schedule.group_size, seed=cfg.seed,
                    progress=cfg.logging.progress, resume_from=state if resume else None,
                    save_every=cfg.schedule.save_every, save_path=state,
                    log_with=cfg.logging.log_with, log_dir=out, log_every=cfg.logging.every,
                    log_config={"config": cfg.to_dict()}, sample_every=cfg.logging.sample_every,
                    kl_warn=cfg.logging.kl_warn, kl_every=cfg.logging.kl_every,
                    **cfg.method.options)
    policy.save(os.path.join(out, "policy.safetensors"))
    return run
