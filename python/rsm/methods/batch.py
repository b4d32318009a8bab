"""`Batch`: what a rollout returns (rsm.methods.rollouts) and what the estimates, the coefficient
rules and the update read; `Row`: one training row of it (batch.rows, batch.anchor_rows). Typed
records instead of dicts; both keep the dict read and write access of the dicts they replace
(batch["x0"], batch.get("row_valid", ...), "grad" in batch, row["x"], row.get("window"),
"log_prob" in row, row["index"] = k, dict(row)), so code written against the dicts and inspecting
a batch (Trainer.rollout()) work as before."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np


@dataclass(slots=True, eq=False)   # rows hold arrays: no field-wise ==
class Row:
    """One training row: `len(x)` states at one step of the rollout. Which fields are set is the
    rollout kind's (rsm.methods.rollouts): SDE and tree rows have the transition (x_next, noise,
    log_prob on its grid), ODE and ReFL rows the outputs only, KL-anchor rows (branch rollouts)
    only x, cond and weight. Unset fields are None (and absent from the mapping view)."""

    step: int                           # the transition t_step -> t_{step+1} of the setting's grid
    x: np.ndarray                       # the states at t_step [n, D]
    cond: np.ndarray | None = None      # their conditions (model layout) or None
    weight: float = 1.0                 # the row's weight in the objective
    count: Any = 1.0                    # each sample's multiplicity at this step (per-sample step
                                        # subsets drawn with replacement: a float array; else 1.0)
    traj: np.ndarray | None = None      # which samples (nodes, for trees) the rows belong to [n]
    x_next: np.ndarray | None = None    # the sampled next states [n, D]
    u_old: np.ndarray | None = None     # the rollout policy's outputs at x [n, D]
    noise: np.ndarray | None = None     # the sampler's standard normal draw of the step [n, D]
    log_prob: np.ndarray | None = None  # log p(x_next | x) under the rollout policy, float64 [n]
    grid: np.ndarray | None = None      # the time grid log_prob was taken on, and the step in it
    grid_step: int | None = None
    window: tuple | None = None         # the SDE window of a branch step (rsm.sampling.log_prob)
    anchor: bool = False                # an ODE KL-anchor row (rsm.methods.coefficients.kl_anchor)
    index: int | None = None            # its position in batch.grad_rows (fo-next, fo-tweedie)
    u_ref: np.ndarray | None = None     # the reference outputs' buffer the update fills once
    u_ref_ready: bool = False
    extra: dict | None = None           # keys a caller sets that are no field (mapping view only)

    @classmethod
    def of(cls, row: "Row | Mapping[str, Any]") -> "Row":
        """`row` itself, or a Row with the entries of a row dict (the dicts this type replaces)."""
        if isinstance(row, Row):
            return row
        out = cls(step=row["step"], x=row["x"])
        for key, value in row.items():
            out[key] = value
        return out

    def replace(self, **changes: Any) -> "Row":
        """A shallow copy with `changes` (the arrays are shared)."""
        out = dataclasses.replace(self, extra=None if self.extra is None else dict(self.extra))
        for key, value in changes.items():
            out[key] = value
        return out

    def copy(self) -> "Row":
        return self.replace()

    # ---- the dict access of the rows this type replaces ----------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in _ROW_FIELDS:
            return getattr(self, key)
        if self.extra is None:
            raise KeyError(key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _ROW_FIELDS:
            setattr(self, key, value)
        else:
            if self.extra is None:
                self.extra = {}
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        if key in _ROW_FIELDS:
            return getattr(self, key) is not None   # type: ignore[arg-type]
        return self.extra is not None and key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        if key in _ROW_FIELDS:
            setattr(self, key, _ROW_DEFAULTS[key])
        elif self.extra is not None:
            self.extra.pop(key, None)
        return value

    def keys(self) -> list[str]:
        return ([k for k in _ROW_ORDER if getattr(self, k) is not None]
                + list(self.extra or ()))

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self.keys()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


_ROW_ORDER = tuple(f.name for f in dataclasses.fields(Row) if f.name != "extra")
_ROW_FIELDS = frozenset(_ROW_ORDER)
_ROW_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Row)
                 if f.default is not dataclasses.MISSING}


@dataclass
class Batch:
    """One rollout micro-batch. Absent values are None (and absent from the mapping view)."""

    # ---- the rollout (rsm.methods.rollouts)
    x0: np.ndarray | None = None        # the samples the reward scores [n, D]
    rows: list[Row] = field(default_factory=list)     # training rows, one per trained step
    nfe: int = 0                        # network evaluations of the rollout
    groups: np.ndarray | None = None    # group id of every sample (zeroth-order advantages;
                                        # batch["keys"] in the dict view, its old name)
    cond_x0: np.ndarray | None = None   # conditions of the samples, model layout
    states: list | None = None          # every state of the trajectories (lean adjoint)
    scored: Any = None                  # (rewards, grad, valid) from the C rollout's reward call
    tree: dict | None = None            # Branch-GRPO's node bookkeeping (rsm.tree)
    anchor_rows: list[Row] = field(default_factory=list)   # ODE KL-anchor rows (branch rollouts)
    # ---- the reward
    rewards: np.ndarray | None = None   # float64 [n]
    valid: np.ndarray | None = None     # finite reward (and gradient) [n]
    reward_grad: np.ndarray | None = None  # differentiable rewards: d r / d x0 as returned [n, D]
    reward_calls: int = 1
    # ---- advantages / estimates (rsm.methods.estimates)
    adv: np.ndarray | None = None       # zeroth order: advantage per sample (tree: per node)
    mask: np.ndarray | None = None      # rows carrying a training signal
    # the released-code conventions (rsm.conventions, numpy advantages): group keys with the
    # invalid rows apart, prompt ids for DDPO's tracker, the tracker update Trainer.step commits
    adv_keys: np.ndarray | None = None
    prompts: np.ndarray | None = None
    tracker_update: dict | None = None
    row_valid: np.ndarray | None = None  # trees: nodes with a valid leaf below
    grad: np.ndarray | None = None      # first order: reward gradient at x0, 0 where invalid
    grad_rows: list | None = None       # per-row reward gradients (fo-next, fo-tweedie)
    adjoint: dict | None = None         # fo-adjoint: {step: lean adjoint [n, D]}
    adjoint_nfe: int = 0
    # ---- anything a Trainer subclass records (rsm.auxiliary.AuxTrainer: own_rewards, ...)
    extra: dict = field(default_factory=dict)

    # ---- the dict access of the batches this type replaces -----------------------------------
    def __getitem__(self, key: str) -> Any:
        key = _ALIASES.get(key, key)
        if key in _FIELDS:
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        key = _ALIASES.get(key, key)
        if key in _FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key: object) -> bool:
        key = _ALIASES.get(key, key)   # type: ignore[call-overload]
        if key in _FIELDS:
            return getattr(self, key) is not None   # type: ignore[arg-type]
        return key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        key = _ALIASES.get(key, key)
        if key in _FIELDS:
            setattr(self, key, None)
        else:
            self.extra.pop(key, None)
        return value

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            self[key] = value

    def keys(self) -> list[str]:
        return ([_NAMES.get(k, k) for k in _ORDER if getattr(self, k) is not None]
                + list(self.extra))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def copy(self) -> "Batch":
        """A shallow copy (the arrays are shared; the row lists and `extra` are new)."""
        return dataclasses.replace(self, rows=list(self.rows), anchor_rows=list(self.anchor_rows),
                                   extra=dict(self.extra))


_ORDER = tuple(f.name for f in dataclasses.fields(Batch) if f.name != "extra")
_FIELDS = frozenset(_ORDER)
_ALIASES = {"keys": "groups"}                     # dict-view name -> field
_NAMES = {v: k for k, v in _ALIASES.items()}      # field -> dict-view name
