"""The rollout kinds, each `rollout(tr) -> Batch` in a module of its own: sde, branch, tree, ode,
refl. ROLLOUTS maps a preset's "rollout" to its function."""
from __future__ import annotations

from . import branch, ode, refl, sde, tree

ROLLOUTS = {"sde": sde.rollout, "branch": branch.rollout, "tree": tree.rollout,
            "ode": ode.rollout, "refl": refl.rollout}
