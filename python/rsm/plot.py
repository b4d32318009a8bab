"""PNG figures: 2D sample scatter plots, density contours, training curves, sample paths, and
image grids (samples per class of an image model).

matplotlib is optional (`pip install matplotlib`) and imported only inside these functions.  They
use matplotlib's object-oriented API with the Agg canvas directly (no pyplot), so they never open a
window, never need a display, and never change the global backend of a notebook that imports rsm.
Each function returns the matplotlib Figure (a notebook shows it inline) or, when `path` is
given, writes it there as a PNG (creating the directory) and returns the path: nothing is saved
unless asked. `import rsm` does not import matplotlib: rsm.plot loads on first use.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .display import tile_images  # noqa: F401  (rsm.plot.tile_images)

__all__ = ["curves", "density_contour", "history", "image_grid", "scatter_compare", "tile_images", "trajectories"]

Limits = float | tuple[float, float] | None


def _matplotlib() -> tuple[Any, Any]:
    """(Figure class, Agg canvas class), or an ImportError that says how to get them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("rsm.plot needs matplotlib: pip install matplotlib "
                          "(or pip install 'reward-score-matching[plot]')") from exc
    return Figure, FigureCanvasAgg


def _new_figure(width: float, height: float) -> Any:
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike | None) -> Any:
    """The figure itself when path is None, else the path it was written to."""
    if path is None:
        return fig
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _limits(lim: Limits, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    """Axis limits: a number means (−lim, lim); None picks a symmetric range holding ~all points."""
    if lim is None:
        finite = [a[np.all(np.isfinite(a), axis=1)] for a in arrays if a.size]
        finite = [a for a in finite if a.size]
        if not finite:
            return -1.0, 1.0
        r = max(float(np.quantile(np.abs(a), 0.995)) for a in finite)
        r = 1.1 * r if r > 0 else 1.0
        return -r, r
    if isinstance(lim, (int, float)):
        return -float(lim), float(lim)
    lo, hi = lim
    return float(lo), float(hi)


def _points(x: Any, name: str, max_points: int | None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"plot: {name!r} must have shape [n, 2], got {arr.shape}")
    if max_points is not None and arr.shape[0] > max_points:  # fixed subset: same picture every time
        idx = np.random.Generator(np.random.PCG64(0)).choice(arr.shape[0], size=max_points, replace=False)
        arr = arr[np.sort(idx)]
    return arr[:, :2]


def density_contour(ax: Any, log_prob_fn: Callable[[np.ndarray], np.ndarray], lim: Limits = 3.0,
                    grid: int = 200, levels: int | Sequence[float] = 8, **contour_kwargs: Any) -> Any:
    """Draw contour lines of the density exp(log_prob_fn(xy)) on the Axes `ax` over the square `lim`.

    log_prob_fn takes float64 [m, 2] and returns [m] (e.g. dataset.log_prob).  An int `levels` means
    that many levels evenly spaced between 5% and 95% of the peak density.  Returns the contour set
    (None when the density underflows to 0 everywhere on the grid)."""
    lo, hi = _limits(lim, [])
    ticks = np.linspace(lo, hi, grid)
    gx, gy = np.meshgrid(ticks, ticks)
    lp = np.asarray(log_prob_fn(np.stack([gx.ravel(), gy.ravel()], axis=1)), dtype=np.float64)
    lp = np.where(np.isposinf(lp), np.nan, lp)  # integrable singularities (e.g. rings at 0): skip
    with np.errstate(over="ignore"):
        density = np.nan_to_num(np.exp(lp).reshape(grid, grid), nan=0.0, posinf=0.0)
    kwargs = {"colors": "0.3", "linewidths": 0.6, "alpha": 0.8, **contour_kwargs}
    peak = float(density.max())
    if not peak > 0:
        return None
    if isinstance(levels, int):  # evenly spaced strictly inside (0, peak): no contour along underflow
        levels = peak * np.linspace(0.05, 0.95, levels)
    return ax.contour(gx, gy, density, levels=levels, **kwargs)


def scatter_compare(panels: Mapping[str, Any], path: str | os.PathLike | None = None, title: str | None = None,
                    lim: Limits = None, log_prob_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                    max_points: int | None = 5000, point_size: float | None = None) -> Any:
    """Side-by-side 2D scatter plots, one panel per entry (label -> samples [n, 2]), e.g. data vs
    ODE samples vs SDE samples, on shared square axes; optional density contours in every panel.
    point_size=None scales the markers with the number of points so small samples stay visible."""
    if not panels:
        raise ValueError("scatter_compare(): panels is empty")
    sizes = {label: int(np.shape(x)[0]) for label, x in panels.items()}
    points = {label: _points(x, label, max_points) for label, x in panels.items()}
    lo, hi = _limits(lim, list(points.values()))
    k = len(points)
    fig = _new_figure(3.2 * k, 3.4 if title else 3.2)
    for i, (label, x) in enumerate(points.items()):
        ax = fig.add_subplot(1, k, i + 1)
        size = point_size if point_size is not None else float(np.clip(4000.0 / max(len(x), 1), 1.5, 12.0))
        ax.scatter(x[:, 0], x[:, 1], s=size, alpha=0.6, linewidths=0, color=f"C{i}")
        if log_prob_fn is not None:
            density_contour(ax, log_prob_fn, (lo, hi))
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(f"{label} (n={sizes[label]})", fontsize=9)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points, ignoring NaN (steps that did not log the key)."""
    if window <= 1:
        return y
    valid = np.isfinite(y)
    sums = np.cumsum(np.where(valid, y, 0.0))
    counts = np.cumsum(valid)
    sums[window:] = sums[window:] - sums[:-window].copy()
    counts[window:] = counts[window:] - counts[:-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def history(history: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str | os.PathLike | None = None,
            smooth: int | None = None, log_y: bool = False, title: str | None = None) -> Any:
    """Training curves: one panel per key, value vs the rows' "step" (or the row index).

    history is a list of per-step dicts (e.g. rsm.History).  The raw values are drawn faintly and a
    trailing moving average (window `smooth`, default ~1% of the run) on top."""
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError("history(): keys is empty")
    rows = list(history)
    steps = np.array([float(row.get("step", i)) for i, row in enumerate(rows)], dtype=np.float64)
    fig = _new_figure(4.0 * len(keys), 3.0)
    for i, key in enumerate(keys):
        values = np.array([_scalar(row.get(key)) for row in rows], dtype=np.float64)
        ax = fig.add_subplot(1, len(keys), i + 1)
        window = smooth if smooth is not None else max(1, len(rows) // 100)
        ax.plot(steps, values, color="C0", alpha=0.3 if window > 1 else 1.0, linewidth=0.8)
        if window > 1:
            ax.plot(steps, _moving_average(values, window), color="C0", linewidth=1.5)
        if log_y and np.any(values > 0):
            ax.set_yscale("log")
        ax.set_xlabel("step", fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None,
           keys: Sequence[str] = ("reward_mean", "kl", "kl_path"), title: str | None = None) -> Any:
    """Reward and KL curves of a fine-tuning run (rsm.Run.history or a list of such rows), or of
    several runs overlaid (a mapping label -> history): one panel per key present in the rows;
    kl_path is drawn at the iterations that evaluated it."""
    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    runs = {label: list(h) for label, h in runs.items()}
    keys = [k for k in keys if any(k in row for h in runs.values() for row in h)]
    if not any(runs.values()) or not keys:
        raise ValueError("curves(): the history has none of the columns " + ", ".join(keys or ["?"]))
    fig = _new_figure(3.6 * len(keys), 3.0)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for j, (label, rows) in enumerate(runs.items()):
            steps = np.array([float(row.get("step", n)) for n, row in enumerate(rows)], dtype=np.float64)
            values = np.array([_scalar(row.get(key)) for row in rows], dtype=np.float64)
            ok = np.isfinite(values)
            ax.plot(steps[ok], values[ok], color=f"C{j if len(runs) > 1 else i}",
                    marker="o" if ok.sum() < 30 else None, markersize=3, linewidth=1.2,
                    label=label or None)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(runs) > 1 and i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _scalar(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def trajectories(xs: Any, path: str | os.PathLike | None = None, n_paths: int = 64, lim: Limits = None,
                 title: str | None = None) -> Any:
    """Sample paths: xs [steps+1, n, 2] (the states of a sampler, start first) drawn as lines for the
    first n_paths samples, start points in grey, end points in red, all end points faint behind."""
    xs = np.asarray(xs, dtype=np.float64)
    if xs.ndim != 3 or xs.shape[2] < 2:
        raise ValueError(f"trajectories(): xs must have shape [steps+1, n, 2], got {xs.shape}")
    shown = xs[:, :n_paths, :2]
    lo, hi = _limits(lim, [xs[0, :, :2], xs[-1, :, :2]])
    fig = _new_figure(4.5, 4.5 if title else 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ends = _points(xs[-1, :, :2], "end points", 5000)
    ax.scatter(ends[:, 0], ends[:, 1], s=1.5, alpha=0.2, color="C3", linewidths=0)
    for j in range(shown.shape[1]):
        ax.plot(shown[:, j, 0], shown[:, j, 1], color="C0", alpha=0.4, linewidth=0.6)
    ax.scatter(shown[0, :, 0], shown[0, :, 1], s=6, color="0.4", label="start", zorder=3)
    ax.scatter(shown[-1, :, 0], shown[-1, :, 1], s=6, color="C3", label="end", zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(panels: Mapping[str, Any], path: str | os.PathLike | None = None, title: str | None = None,
               row_labels: Sequence[str] | None = None) -> Any:
    """Side-by-side image grids, one panel per entry (label -> images [rows, cols, C, H, W] in
    [-1, 1], e.g. rows = classes, cols = samples), grey-scale for C = 1."""
    if not panels:
        raise ValueError("image_grid(): panels is empty")
    tiles = {label: tile_images(x) for label, x in panels.items()}
    k = len(tiles)
    first = next(iter(tiles.values()))
    aspect = first.shape[1] / first.shape[0]
    height = 4.0
    fig = _new_figure(max(2.5, height * aspect) * k + 0.4, height + (0.5 if title else 0.3))
    for i, (label, tile) in enumerate(tiles.items()):
        ax = fig.add_subplot(1, k, i + 1)
        if tile.shape[2] == 1:
            ax.imshow(tile[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(tile, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        rows = np.asarray(panels[label]).shape[0]
        if row_labels is not None and i == 0:
            h = (tile.shape[0] + 1) / rows
            ax.set_yticks([h * (r + 0.5) - 1 for r in range(rows)])
            ax.set_yticklabels(list(row_labels)[:rows], fontsize=7)
        else:
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
