"""`Batch`: what a rollout returns (rsm.methods.rollouts) and what the estimates, the coefficient
rules and the update read. A typed record instead of a dict of 15-30 keys; it keeps the dict read
and write access (batch["x0"], batch.get("row_valid", ...), "grad" in batch, dict(batch)) of the
dicts it replaces, so inspecting a batch (Trainer.rollout()) works as before.

Training rows (batch.rows, batch.anchor_rows) stay dicts: the keys of one row are those its
rollout kind records (step, x, x_next, u_old, noise, traj, cond, weight, log_prob, grid,
grid_step, window; anchor rows: step, x, cond, weight, anchor), and the update fills in the
reference outputs' buffer (u_ref, u_ref_ready)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class Batch:
    """One rollout micro-batch. Absent values are None (and absent from the mapping view)."""

    # ---- the rollout (rsm.methods.rollouts)
    x0: np.ndarray | None = None        # the samples the reward scores [n, D]
    rows: list = field(default_factory=list)          # training rows (dicts), one per step
    nfe: int = 0                        # network evaluations of the rollout
    groups: np.ndarray | None = None    # group id of every sample (zeroth-order advantages;
                                        # batch["keys"] in the dict view, its old name)
    cond_x0: np.ndarray | None = None   # conditions of the samples, model layout
    states: list | None = None          # every state of the trajectories (lean adjoint)
    scored: Any = None                  # (rewards, grad, valid) from the C rollout's reward call
    tree: dict | None = None            # Branch-GRPO's node bookkeeping (rsm.tree)
    anchor_rows: list = field(default_factory=list)   # ODE KL-anchor rows (branch rollouts)
    # ---- the reward
    rewards: np.ndarray | None = None   # float64 [n]
    valid: np.ndarray | None = None     # finite reward (and gradient) [n]
    reward_grad: np.ndarray | None = None  # differentiable rewards: d r / d x0 as returned [n, D]
    reward_calls: int = 1
    # ---- advantages / estimates (rsm.methods.estimates)
    adv: np.ndarray | None = None       # zeroth order: advantage per sample (tree: per node)
    mask: np.ndarray | None = None      # rows carrying a training signal
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
