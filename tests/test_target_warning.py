"""finetune(target_reward=): a warning, once per run, when the batch's mean reward passes the
exact tilted target's E_p*[r] by more than two standard errors (issue 18: rsm-zo overshot p*
with no word of warning); never below it; bad values refused."""
import warnings

import numpy as np
import pytest

import rsm


@pytest.fixture(scope="module")
def ref():
    data = rsm.datasets.get("8gaussians").sample(2000, seed=0)
    model = rsm.MLP(2, 16, 1, seed=0)
    rsm.pretrain(model, data, rsm.FlowPath(), steps=30, batch_size=64, lr=2e-3, progress=False)
    return model


def _run(ref, target):
    reward = rsm.rewards.quadratic([2.0, 0.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = rsm.finetune(ref.copy(), ref, reward, "flow-grpo", iterations=3, batch_size=2,
                           group_size=4, seed=0, progress=False, kl_every=0, target_reward=target)
    return run, [w for w in caught if "exact target" in str(w.message)]


def test_warns_once_past_the_target(ref):
    run, caught = _run(ref, -1e6)   # every batch is far past this "target"
    assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
    assert "iteration 0" in str(caught[0].message) and "-1e+06" in str(caught[0].message)


def test_silent_below_the_target(ref):
    run, caught = _run(ref, 1e6)
    rewards = run.history.column("reward_mean")
    assert np.all(rewards < 1e6) and caught == []


def test_silent_without_a_target(ref):
    _, caught = _run(ref, None)
    assert caught == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.5", True])
def test_bad_target_is_refused(ref, bad):
    with pytest.raises(ValueError, match="target_reward"):
        _run(ref, bad)
