"""The PyTorch twin of one rsm-zo iteration (benchmarks/zo_twin.py, used by
benchmarks/bench_finetune.py) computes what rsm's Trainer computes: rollout, rewards, group
advantages, the loss gradient on rsm's recorded rollout and the AdamW update. Skipped without torch."""
import sys
from pathlib import Path

import numpy as np
import pytest

import rsm


def _trainer(dtype, budget):
    ref = rsm.MLP(2, 32, 2, seed=3, dtype=dtype)
    views = ref.named_params()
    rng = np.random.default_rng(4)   # rsm zero-initialises the output layer
    views["output.weight"][...] = rng.uniform(-1, 1, views["output.weight"].shape) / np.sqrt(32)
    views["output.bias"][...] = rng.uniform(-0.1, 0.1, views["output.bias"].shape)
    return rsm.Trainer(ref.copy(), ref, rsm.rewards.quadratic([2.0, 0.0]), "rsm-zo", batch_size=5,
                       group_size=16, budget=budget, seed=7)


@pytest.mark.parametrize("dtype,perturb,tol", [("float64", 2e-3, 1e-9), ("float64", 0.0, 1e-9),
                                               ("float32", 0.0, 1e-4)])
@pytest.mark.parametrize("budget", [[3, 3, 4, 6], [2, 0, 5, 0, 0, 0, 0, 3]])
def test_zo_twin_matches_trainer(dtype, perturb, tol, budget):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from zo_twin import ZoTwin, check

    trainer = _trainer(dtype, budget)
    errs = check(trainer, ZoTwin(trainer, [2.0, 0.0]), perturb=perturb)
    assert set(errs) == {"root states", "u_old", "x0", "rewards", "advantages", "gradient", "update"}
    assert all(v <= tol for v in errs.values()), errs


def _kl_times_10(twin):
    twin.beta *= 10


def _fairclip_post(twin):   # fairclip's post-multiplier 1 / (s~^2 dt) instead of fairclip2's
    for c in twin.sde.values():
        c["post"] = 1.0 / c["term_scale"]


@pytest.mark.parametrize("mutate", [_kl_times_10, _fairclip_post])
def test_zo_twin_check_detects_a_different_loss(mutate):
    """The check is not vacuous: a twin with another KL weight or another reweighting agrees on
    the rollout but not on the gradient and the update."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from zo_twin import ZoTwin, check

    trainer = _trainer("float64", [3, 3, 4, 6])
    twin = ZoTwin(trainer, [2.0, 0.0])
    mutate(twin)
    errs = check(trainer, twin, perturb=2e-3)
    assert max(errs[k] for k in ("root states", "u_old", "x0", "rewards", "advantages")) <= 1e-9, errs
    assert errs["gradient"] > 1e-7 and errs["update"] > 1e-9, errs
