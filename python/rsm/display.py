"""Short text and HTML displays of rsm's objects for notebooks and the REPL: a line or a small
table each, never the arrays themselves."""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MAX_OPTIONS = 8     # options shown in a Trainer's repr
HISTORY_ROWS = 5    # last rows of a History shown
HISTORY_COLUMNS = ("step", "reward_mean", "reward_std", "kl", "kl_path", "loss", "clip_fraction",
                   "grad_norm", "lr", "nfe", "seconds")


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return f"[{', '.join(_fmt(v) for v in value[:3])}, ... ({len(value)})]"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return "x".join(str(s) for s in shape) if shape is not None else type(value).__name__


def table_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [[str(c) for c in columns]] + [[_fmt(v) if not isinstance(v, str) else v for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v if isinstance(v, str) else _fmt(v))}</td>"
                                    for v in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- History ---------------------------------------------------------------------------------

def _history_columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = set().union(*(row.keys() for row in history[-HISTORY_ROWS:])) if history else set()
    cols = [c for c in HISTORY_COLUMNS if c in keys]
    return cols or sorted(keys)[:8]


def history_repr(history: Sequence[Mapping[str, Any]]) -> str:
    if not len(history):
        return "History(0 rows)"
    cols = _history_columns(history)
    keys = sorted(set().union(*(row.keys() for row in history)))
    last = history[-HISTORY_ROWS:]
    head = f"History({len(history)} rows, {len(keys)} columns; last {len(last)}:"
    return head + "\n" + table_text(cols, [[row.get(c, float("nan")) for c in cols] for row in last]) + ")"


def history_html(history: Sequence[Mapping[str, Any]]) -> str:
    if not len(history):
        return "<p>History (0 rows)</p>"
    cols = _history_columns(history)
    last = history[-HISTORY_ROWS:]
    return table_html(cols, [[row.get(c, float("nan")) for c in cols] for row in last],
                      f"History: {len(history)} rows (last {len(last)} shown; .to_pandas() for all)")


# ---- Trajectory ---------------------------------------------------------------------

def trajectory_repr(traj: Any) -> str:
    kind = traj.sampler.get("kind", traj.sampler.get("name", "")) if isinstance(traj.sampler, dict) else ""
    fields = ", ".join(f"{k}[{_shape(getattr(traj, k))}]" for k in ("xs", "outputs", "log_probs"))
    extra = ", reward" if traj.reward is not None else ""
    return (f"Trajectory({traj.x.shape[0]} samples x {traj.x.shape[1]} dims, {traj.steps} steps"
            f"{', sampler ' + repr(kind) if kind else ''}, nfe={traj.nfe}; {fields}{extra})")


def trajectory_html(traj: Any) -> str:
    rows = [[k, _shape(getattr(traj, k))] for k in ("xs", "ts", "means", "stds", "log_probs",
                                                     "noises", "outputs", "rows")]
    rows.append(["nfe", traj.nfe])
    return table_html(["Trajectory", "shape"], rows)


def tile_images(images: Any, gap: int = 1) -> np.ndarray:
    """images [rows, cols, C, H, W] in [-1, 1] -> one [rows*(H+gap)-gap, cols*(W+gap)-gap, C]
    array in [0, 1] (gaps white), ready for imshow."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 5 or x.shape[2] not in (1, 3):
        raise ValueError(f"tile_images(): images must be [rows, cols, C (1 or 3), H, W], got {x.shape}")
    rows, cols, c, h, w = x.shape
    out = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, c))
    for i in range(rows):
        for j in range(cols):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = \
                np.clip((x[i, j].transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    return out


# ---- tables ----------------------------------------------------------------------------------

class Table(list):
    """A list of row dicts that prints as a table: plain text (repr), HTML in a notebook (via
    pandas when it is installed), .to_pandas() for a DataFrame."""

    columns: list[str]

    def __init__(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
        super().__init__(rows)
        self.columns = list(columns) if columns is not None else (list(rows[0]) if rows else [])

    def _cells(self) -> list[list[Any]]:
        return [[row.get(c) if not isinstance(row.get(c), (list, tuple)) else
                 _fmt(list(row.get(c))) for c in self.columns] for row in self]

    def __repr__(self) -> str:
        return table_text(self.columns, [[("-" if v is None else v) for v in r] for r in self._cells()])

    __str__ = __repr__

    def _repr_html_(self) -> str:
        try:
            return self.to_pandas()._repr_html_()
        except ImportError:
            return table_html(self.columns, [[("-" if v is None else v) for v in r] for r in self._cells()])

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(list(self))
