"""rsm.JaxModel (python/rsm/jax_model.py): a JAX network fine-tuned through the external-model
protocol. A JAX twin of rsm.MLP (tests/twin_mlp.py's network over jax.numpy, differentiated by
jax.vjp) follows the built-in MLP's run, float64 within 1e-10. Runs in `make test-torch`
(.venv-torch has jax); skipped without jax."""
import numpy as np
import pytest

import rsm
from twin_mlp import NumpyMLP, assert_twin_matches, perturbed_mlp

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy


def jax_twin(mlp, trainable=True):
    net = NumpyMLP(mlp.config, None, xp=jnp)

    def mlp_apply(params, x, t, cond):
        return net.forward(x, t, cond, flat=params)

    params = jnp.asarray(np.array(np.from_dlpack(mlp.params)))
    return rsm.JaxModel(mlp_apply, params, rsm.FlowPath(), "velocity", dim=mlp.dim, trainable=trainable)


@pytest.fixture(scope="module")
def mlp64():
    return perturbed_mlp()


def test_forward_and_vjps_match_the_mlp(mlp64):
    twin = jax_twin(mlp64)
    x, t, g = assert_twin_matches(twin, mlp64)
    frozen = jax_twin(mlp64, trainable=False)
    dx, _ = frozen.vjp(x, t, g)   # a frozen reference still gives input VJPs (the lean adjoint)
    np.testing.assert_allclose(np.from_dlpack(dx), np.from_dlpack(mlp64.vjp(x, t, g)[0]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,overrides", [
    ("flow-grpo", {"sampler_steps": 6}),
    ("rsm-zo", {}),
    ("adjoint-matching", {"sampler_steps": 8}),
    ("draft-rsm", {"sampler_steps": 6}),   # DRaFT on the flow path (the released draft runs VP)
])
def test_finetune_follows_the_mlp(mlp64, method, overrides):
    reward = rsm.rewards.quadratic([1.0, -0.5])
    runs = []
    for policy, ref in ((mlp64.copy(), mlp64), (jax_twin(mlp64), jax_twin(mlp64, trainable=False))):
        trainer = rsm.Trainer(policy, ref, reward, method, batch_size=2, group_size=4, seed=5,
                              kl_every=1, kl_samples=8, **overrides)
        for _ in range(3):
            trainer.step()
        runs.append(trainer)
    a, b = runs
    np.testing.assert_allclose(np.from_dlpack(b.policy.params), np.from_dlpack(a.policy.params),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b.policy.params_tree()), np.from_dlpack(a.policy.params),
                               rtol=1e-10, atol=1e-12)
    for ra, rb in zip(a.history, b.history):
        for key in ("reward_mean", "loss", "kl", "kl_path", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-10, abs=1e-12), key
    if method != "draft-rsm":
        assert rsm.check_on_policy(b)["max_abs_log_ratio"] == 0.0


def test_bad_input(mlp64):
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        rsm.JaxModel(3, jnp.zeros(3), dim=2)
    with pytest.raises(TypeError, match="int32"):
        rsm.JaxModel(lambda p, x, t, c: x, jnp.zeros(3, jnp.int32), dim=2)
    bad = rsm.JaxModel(lambda p, x, t, c: x[:, :1] * p[0], jnp.ones(1), dim=2)
    with pytest.raises(ValueError, match=r"JaxModel\(<lambda>\): apply_fn returned shape"):
        bad.forward(np.ones((3, 2)), 0.5)
