"""Run loggers: where the history rows (reward and KL curves) and sample grids of a fine-tuning
or pretraining run go while it runs.

    rsm.finetune(..., log_with="csv", log_dir="runs/a")          # runs/a/history.csv (+ samples/)
    rsm.finetune(..., log_with="tensorboard")                    # torch.utils.tensorboard / tensorboardX
    rsm.finetune(..., log_with="wandb", log_config={"project": "rsm"})
    rsm.finetune(..., log_with=my_fn)                            # my_fn(row, step)
    rsm.finetune(..., log_with=["csv", "wandb"])

A logger is any object with log(row, step), log_images(name, image, step) and close(); the CSV
logger needs nothing beyond the standard library, the wandb and tensorboard adapters import
their package when they are created and say how to install it when it is missing."""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, Union

import numpy as np


class Logger(Protocol):
    """What rsm.finetune / rsm.pretrain call while a run goes on."""

    def log(self, row: Mapping[str, Any], step: int) -> None: ...

    def log_images(self, name: str, image: np.ndarray, step: int) -> None: ...

    def close(self) -> None: ...


LogWith = Union[str, Callable[..., Any], Logger, Iterable[Any], None]


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric columns of a history row, as floats (NaN kept)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            out[key] = float(value)
    return out


class CSVLogger:
    """One CSV file, a row per logged iteration: the header is the first row's columns (later
    columns that were not there are dropped, missing ones left empty). With resume_from=k an
    existing file keeps its rows of steps < k (a resumed run continues the same file)."""

    def __init__(self, path: str | os.PathLike, *, resume_from: int | None = None) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.columns: list[str] | None = None
        kept: list[dict[str, str]] = []
        if resume_from is not None and os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                kept = [r for r in reader if r.get("step", "") != "" and int(float(r["step"])) < resume_from]
        self._file = open(self.path, "w", newline="")
        self._writer: Any = None
        if self.columns:
            self._start(self.columns)
            for r in kept:
                self._writer.writerow(r)
            self._file.flush()
        self.image_dir = os.path.join(os.path.dirname(os.path.abspath(self.path)), "samples")

    def _start(self, columns: list[str]) -> None:
        self.columns = columns
        self._writer = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
        self._writer.writeheader()

    def log(self, row: Mapping[str, Any], step: int) -> None:
        values: dict[str, Any] = {"step": int(step)}
        values.update((k, v) for k, v in _scalars(row).items() if k != "step")
        if self._writer is None:
            self._start(list(values))
        self._writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else repr(v)
                                   if isinstance(v, float) else v) for k, v in values.items()})
        self._file.flush()

    def log_images(self, name: str, image: np.ndarray, step: int) -> None:
        """image [H, W, C] in [0, 1] -> samples/{name}_{step:06d}.png (needs Pillow)."""
        try:
            from PIL import Image
        except ImportError:   # pragma: no cover - Pillow is a test dependency
            return
        os.makedirs(self.image_dir, exist_ok=True)
        arr = np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        Image.fromarray(arr).save(os.path.join(self.image_dir, f"{name}_{step:06d}.png"))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __repr__(self) -> str:
        return f"CSVLogger({self.path!r})"


class CallbackLogger:
    """log_with=fn: fn(row, step) for every logged row; images are passed to fn(None, step,
    images={name: image}) only when fn accepts an `images` keyword."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        import inspect

        try:
            self._images = "images" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            self._images = False

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.fn(dict(row), step)

    def log_images(self, name: str, image: np.ndarray, step: int) -> None:
        if self._images:
            self.fn(None, step, images={name: image})

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars (add_scalar per column) and images (add_image, HWC) to a TensorBoard log dir,
    through torch.utils.tensorboard or tensorboardX, whichever is installed."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as exc:
                raise ImportError("log_with='tensorboard' needs torch (with tensorboard) or "
                                  "tensorboardX: pip install tensorboard torch, or pip install "
                                  "tensorboardX") from exc
        self.writer = SummaryWriter(os.fspath(log_dir))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for key, value in _scalars(row).items():
            if key != "step" and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def log_images(self, name: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(name, np.asarray(image, dtype=np.float32), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars and images to Weights & Biases (wandb.init(**init) on creation unless a run is
    active; the run is finished on close only when this logger started it)."""

    def __init__(self, **init: Any) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("log_with='wandb' needs wandb: pip install wandb") from exc
        self.wandb = wandb
        self._owned = wandb.run is None
        if self._owned:
            wandb.init(**init)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        self.wandb.log({k: v for k, v in _scalars(row).items() if k != "step"}, step=step)

    def log_images(self, name: str, image: np.ndarray, step: int) -> None:
        self.wandb.log({name: self.wandb.Image(np.asarray(image))}, step=step)

    def close(self) -> None:
        if self._owned:
            self.wandb.finish()


class MultiLogger:
    """Several loggers as one."""

    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = loggers

    def log(self, row: Mapping[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(row, step)

    def log_images(self, name: str, image: np.ndarray, step: int) -> None:
        for lg in self.loggers:
            lg.log_images(name, image, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def make_logger(log_with: LogWith, *, log_dir: str | os.PathLike = "runs/rsm",
                config: Mapping[str, Any] | None = None, resume_from: int | None = None) -> Any:
    """The logger for log_with: None, "csv" (log_dir/history.csv), "tensorboard" (log_dir),
    "wandb" (config: wandb.init's keywords), a callable fn(row, step), a logger object, or a
    list of these."""
    if log_with is None:
        return None
    if isinstance(log_with, str):
        name = log_with.lower()
        if name == "csv":
            return CSVLogger(os.path.join(os.fspath(log_dir), "history.csv"), resume_from=resume_from)
        if name in ("tensorboard", "tb"):
            return TensorBoardLogger(log_dir)
        if name == "wandb":
            return WandbLogger(**dict(config or {}))
        raise ValueError(f"log_with={log_with!r}: expected 'csv', 'tensorboard', 'wandb', a "
                         "callable fn(row, step), a logger object or a list of these")
    if all(hasattr(log_with, m) for m in ("log", "log_images", "close")):
        return log_with
    if callable(log_with):
        return CallbackLogger(log_with)
    if isinstance(log_with, (list, tuple)):
        return MultiLogger([make_logger(x, log_dir=log_dir, config=config, resume_from=resume_from)
                            for x in log_with])
    raise TypeError(f"log_with must be a name, a callable, a logger or a list, got {type(log_with).__name__}")
