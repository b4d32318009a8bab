"""The external-model protocol (rsm.ExternalModel, csrc/nn/external.h, csrc/python/external_py.c)
without torch: a numpy twin of rsm.MLP (tests/twin_mlp.py) called back once per batch from the C
samplers, rollouts and update. Its VJPs are checked against finite differences, and fine-tuning
it follows the built-in MLP's run (the same engine path, only the network differs). Errors in a
callback reach the caller with the model named, and change nothing."""
import numpy as np
import pytest

import rsm
from twin_mlp import assert_twin_matches, numpy_twin, perturbed_mlp


@pytest.fixture(scope="module")
def mlp64():
    return perturbed_mlp()


def test_forward_and_vjp_match_the_mlp(mlp64):
    twin = numpy_twin(mlp64)
    x, t, g = assert_twin_matches(twin, mlp64)
    # finite differences of <g, f> in x (central, float64)
    dx, dp = (np.from_dlpack(a) for a in twin.vjp(x, t, g))
    eps = 1e-6
    for i, d in [(0, 0), (3, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[i, d] += eps
        xm[i, d] -= eps
        fd = (np.sum(g * np.from_dlpack(twin.forward(xp, t))) - np.sum(g * np.from_dlpack(twin.forward(xm, t)))) / (2 * eps)
        assert abs(fd - dx[i, d]) < 1e-7 * max(1.0, abs(fd))
    flat = np.from_dlpack(twin.params)
    for k in [0, 40, flat.size - 1]:
        old = flat[k]
        flat[k] = old + eps
        fp = np.sum(g * np.from_dlpack(twin.forward(x, t)))
        flat[k] = old - eps
        fm = np.sum(g * np.from_dlpack(twin.forward(x, t)))
        flat[k] = old
        assert abs((fp - fm) / (2 * eps) - dp[k]) < 1e-7 * max(1.0, abs(dp[k]))


def test_backward_token_is_the_last_forward(mlp64):
    twin = numpy_twin(mlp64)
    x, t = np.ones((3, 2)), np.full(3, 0.5)
    _, token = twin.forward_keep(x, t)
    twin.forward(x[:2], t[:2])
    with pytest.raises(RuntimeError, match="activations of forward"):
        twin.backward(np.ones((3, 2)), token)


@pytest.mark.parametrize("method,overrides", [
    ("flow-grpo", {"sampler_steps": 6}),
    ("rsm-zo", {}),
    ("rsm-fo", {"sampler_steps": 6}),
])
def test_finetune_follows_the_mlp(mlp64, method, overrides):
    reward = rsm.rewards.quadratic([1.0, -0.5])
    runs = []
    for make in (lambda: mlp64.copy(), lambda: numpy_twin(mlp64)):
        policy = make()
        trainer = rsm.Trainer(policy, mlp64, reward, method, batch_size=2, group_size=4, seed=5,
                              kl_every=1, kl_samples=8, **overrides)
        for _ in range(3):
            trainer.step()
        runs.append((trainer, np.array(np.from_dlpack(policy.params))))
    (a, pa), (b, pb) = runs
    np.testing.assert_allclose(pb, pa, rtol=1e-10, atol=1e-12)
    assert np.abs(pa - np.from_dlpack(mlp64.params)).max() > 1e-6   # it trained
    for ra, rb in zip(a.history, b.history):
        for key in ("reward_mean", "loss", "kl", "kl_path", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-10, abs=1e-12), key
    assert rsm.check_on_policy(b)["rows"] > 0


def test_callback_errors_name_the_model_and_change_nothing(mlp64):
    twin = numpy_twin(mlp64)
    trainer = rsm.Trainer(twin, mlp64, rsm.rewards.quadratic([0.0, 0.0]), "flow-grpo",
                          batch_size=2, group_size=2, seed=0, sampler_steps=4, kl_every=0)
    trainer.step()
    params = np.array(np.from_dlpack(twin.params))
    opt = trainer.optimizer.state_dict()
    for fault, exc, match in [
        ("forward raises", ValueError, "the network is broken"),
        ("shape", ValueError, r"NumpyMLP: the forward returned an output of shape \(\d+, 3\)"),
        ("dtype", TypeError, r"NumpyMLP.*float32"),
        ("backward raises", ValueError, "the network is broken"),
    ]:
        twin.faults["fault"] = fault
        try:
            with pytest.raises(exc, match=match):
                trainer.step()
        finally:
            twin.faults["fault"] = None
        np.testing.assert_array_equal(np.from_dlpack(twin.params), params)
        after = trainer.optimizer.state_dict()
        assert after["step"] == opt["step"] and trainer.iteration == 1 and len(trainer.history) == 1
        np.testing.assert_array_equal(after["m"], opt["m"])
    # the failed steps are replayed exactly by the next one
    trainer.step()
    assert trainer.iteration == 2


def test_bad_construction():
    with pytest.raises(TypeError, match="forward must be callable"):
        rsm.ExternalModel(3, None, dim=2)
    with pytest.raises(ValueError, match="needs a backward"):
        rsm.ExternalModel(lambda *a: None, None, dim=2, num_params=4)
    with pytest.raises(ValueError, match="dtype"):
        rsm.ExternalModel(lambda *a: None, None, dim=2, dtype="float16")
    frozen = rsm.ExternalModel(lambda x, t, c: np.from_dlpack(x) * 2, None, dim=2, dtype="float64")
    np.testing.assert_array_equal(np.from_dlpack(frozen.forward(np.ones((2, 2)), 0.5)), 2 * np.ones((2, 2)))
    with pytest.raises(TypeError, match="no parameters"):
        frozen.vjp(np.ones((2, 2)), 0.5, np.ones((2, 2)))
