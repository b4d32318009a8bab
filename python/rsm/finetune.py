"""Compatibility: the names this module held before the methods package (issue 12). The
fine-tuning loop is rsm.trainer (Trainer, Run, finetune, check_on_policy); the method pieces are
rsm.methods (presets, rollouts, estimates, coefficient rules, pathwise methods, influence)."""
from __future__ import annotations

from .methods.coefficients import PCPO_ZETA  # noqa: F401
from .methods.influence import influence  # noqa: F401
from .methods.streams import KL_EVAL as KL_EVAL_SALT  # noqa: F401
from .methods.streams import mix as _mix  # noqa: F401
from .trainer import Run, Trainer, check_on_policy, finetune  # noqa: F401
