"""The estimators added for the estimator study (Fig. 2): k-step ODE lookahead, partial rollouts
(first and zeroth order) and Branch-GRPO trees (THEORY.md §7.1, §7.2, §8.3, §8.4). Gradients are
checked against central finite differences of the very map they differentiate (float64), and
against the exact Psi where a theorem says they must match."""
import numpy as np
import pytest

import rsm
from rsm import estimators as E

T_TRAIN = 500


def vp_path():
    return rsm.VPPath("ddpm_linear", beta_start=1e-4, beta_end=0.03, num_train_steps=T_TRAIN)


PATHS = {"vp": vp_path, "flow": rsm.FlowPath}
QUADRATIC = rsm.rewards.quadratic([1.0, -0.5], 0.3)   # a nonlinear differentiable reward
LINEAR_C = (-0.5, 0.3)
LINEAR = rsm.rewards.linear(LINEAR_C, 1.0)


def grid(kind, start, steps):
    if kind == "vp":
        idx = np.round(np.linspace(start * T_TRAIN, 0, steps + 1))
        return idx / T_TRAIN
    return np.linspace(start, 0.0, steps + 1)


def reward_of(x):
    r, _, _ = QUADRATIC(rsm.from_dlpack(np.ascontiguousarray(x)), None)
    return np.asarray(r, dtype=np.float64)


def central_difference(f, x, h=1e-6):
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], 1)


@pytest.fixture(scope="module")
def tri():
    return rsm.datasets.get("triangle")


@pytest.fixture(scope="module")
def states():
    return np.random.default_rng(0).standard_normal((4, 2))


def mlp64(path, seed=0):
    """A small float64 MLP (briefly trained so that its Jacobian is not trivial)."""
    model = rsm.MLP(2, hidden=16, depth=2, dtype="float64", seed=seed)
    data = rsm.datasets.get("triangle").sample(512, seed=1).astype(np.float64)
    rsm.pretrain(model, data, path, steps=20, batch_size=64, progress=False, seed=seed)
    return model


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_ode_lookahead_is_the_gradient_of_the_ode_endpoint_reward(tri, states, kind, k):
    path = PATHS[kind]()
    t = 389 / T_TRAIN if kind == "vp" else 0.8
    sampler = "ode" if kind == "flow" else "ddim"
    ts = grid(kind, t, k)
    for model in (rsm.GaussianMixtureModel.from_dataset(tri, path), mlp64(path)):
        est = E.first_order_lookahead(model, path, QUADRATIC, states, t, k)
        f = lambda y: reward_of(np.from_dlpack(rsm.sample(model, len(y), path, sampler, ts=ts, x_init=y)))
        fd = central_difference(f, states)
        np.testing.assert_allclose(est, fd, rtol=1e-6, atol=1e-8)


def test_one_step_lookahead_is_tweedie(tri, states):
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel.from_dataset(tri, path)
    np.testing.assert_allclose(E.first_order_lookahead(model, path, QUADRATIC, states, 0.7, 1),
                               E.first_order_tweedie(model, path, QUADRATIC, states, 0.7), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_partial_rollout_gradient_matches_finite_differences(tri, states, kind):
    path = PATHS[kind]()
    ts = grid(kind, 0.6, 12)
    sampler = "sde" if kind == "flow" else "ddpm"
    n, end, seed = 3, 5, 11
    for model in (rsm.GaussianMixtureModel.from_dataset(tri, path), mlp64(path, seed=2)):
        est = E.first_order_partial(model, path, QUADRATIC, states, ts, 0, end, n, noise_level=1.0, seed=seed)

        def f(y):  # the same rollouts (same seed, same noises), Tweedie at ts[end], mean over n
            xe = np.ascontiguousarray(np.from_dlpack(rsm.sample(
                model, len(y) * n, path, sampler, ts=ts[:end + 1], x_init=np.repeat(y, n, 0), seed=seed,
                noise_level=1.0)))
            u = np.from_dlpack(model.forward(xe, ts[end]))
            x0 = np.from_dlpack(path.x0_hat(xe, u, np.full(len(u), ts[end])))
            return reward_of(x0).reshape(len(y), n).mean(1)

        np.testing.assert_allclose(est, central_difference(f, states), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_first_order_is_exact_for_gaussian_data_and_a_linear_reward(states, kind):
    """Theorem: for p0 = N(mu, s^2 I) the posterior of x0 given x_t is Gaussian with a covariance
    that does not depend on x_t, so log E[e^{c.x0} | x_t] = c.E[x0 | x_t] + const and
    Psi = grad_x c.x0_hat(x_t) = the Tweedie (DPS) estimator, to machine precision. On VP, DDPM
    steps keep E[x0_hat(x_t') | x_t] = x0_hat(x_t) for affine posteriors, so the partial rollout
    returns the same value whatever its noises."""
    path = PATHS[kind]()
    gauss = rsm.datasets.GaussianMixture([[1.0, -0.5]], 0.8)
    model = rsm.GaussianMixtureModel.from_dataset(gauss, path)
    t = 0.6
    psi = E.exact_value_gradient(gauss, path, states, t, LINEAR_C)
    np.testing.assert_allclose(E.first_order_tweedie(model, path, LINEAR, states, t), psi, rtol=1e-10, atol=1e-14)
    ts = grid(kind, t, 24)
    partial = E.first_order_partial(model, path, LINEAR, states, ts, 0, 12, 64, noise_level=2 ** 0.5, seed=1)
    if kind == "vp":
        np.testing.assert_allclose(partial, psi, rtol=1e-9, atol=1e-13)
    else:  # Euler-Maruyama of the flow SDE: a discretisation error only
        np.testing.assert_allclose(partial, psi, atol=0.1 * np.abs(psi).max())
    # the ODE lookahead follows the deterministic transport, whose Jacobian is not the posterior's:
    # biased even here (the reason stochastic lookahead is used)
    assert np.abs(E.first_order_lookahead(model, path, LINEAR, states, t, 4) - psi).max() > 0.3 * np.abs(psi).max()


@pytest.mark.parametrize("kind", ["vp", "flow"])
def test_zeroth_order_lookahead_and_branching_are_unbiased_for_gaussian_data(states, kind):
    """With a linear reward on Gaussian data Psi is exactly the first-order target, so the
    zeroth-order estimators converge to it (up to the sampler's discretisation)."""
    path = PATHS[kind]()
    gauss = rsm.datasets.GaussianMixture([[1.0, -0.5]], 0.8)
    model = rsm.GaussianMixtureModel.from_dataset(gauss, path)
    c = (-1.5, 1.0)
    reward = rsm.rewards.linear(c, 0.0)
    t, a = 0.6, 2 ** 0.5
    ts = grid(kind, t, 24)
    psi = E.exact_value_gradient(gauss, path, states, t, c)
    np.testing.assert_allclose(psi, np.broadcast_to(psi[0], psi.shape), rtol=1e-12)  # constant in x here
    scale = np.abs(psi[0]).max()
    # Psi does not depend on x, so the mean over the 4 states averages 4 independent estimates
    # (Monte-Carlo std ~ 0.05 scale at 2^14 samples each for the 2x2 tree)
    for est in (E.zeroth_order_partial(model, path, reward, states, ts, 0, 8, 2 ** 14, noise_level=a, seed=3),
                E.zeroth_order_branching(model, path, reward, states, ts, 0, 2 ** 14, 2, 2, noise_level=a, seed=4)):
        assert np.abs(est.mean(0) - psi[0]).max() < 0.15 * scale, (est, psi)


def test_branching_one_by_one_is_plain_zeroth_order(tri, states):
    path = vp_path()
    model = rsm.GaussianMixtureModel.from_dataset(tri, path)
    ts = grid("vp", 0.4, 10)
    a = E.zeroth_order_branching(model, path, LINEAR, states, ts, 0, 32, 1, 1, seed=5)
    b = E.zeroth_order(model, path, LINEAR, states, ts, 0, 32, control_variate=True, seed=5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("split,branch", [(1, 1), (2, 2), (3, 2), (4, 2), (2, 4)])
def test_branching_cost_counts_the_samplers_network_evaluations(split, branch):
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel.from_dataset(rsm.datasets.get("triangle"), path)
    steps, roots = 12, 3
    traj = rsm.sample(model, roots, path, "sde", ts=np.linspace(0.8, 0, steps + 1), return_trajectory=True,
                      branch_steps=E._branch_steps(steps, split), branch_factor=branch)
    endpoints = roots * branch ** split
    assert traj.x.shape[0] == endpoints
    assert traj.nfe == pytest.approx(E.branching_cost(steps, split, branch) * steps * endpoints)
    # THEORY.md §8.4's NFE factors on 39 steps: (2, 2) 0.75, (3, 2) ~0.583, (4, 2) ~0.469, (2, 4) 0.625
    expected = {(1, 1): 1.0, (2, 2): 0.75, (3, 2): 0.5833, (4, 2): 0.4688, (2, 4): 0.625}[split, branch]
    assert E.branching_cost(36, split, branch) == pytest.approx(expected, abs=2e-3)


def test_shapes_and_determinism(tri, states):
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel.from_dataset(tri, path)
    ts = grid("flow", 0.8, 16)
    calls = [lambda: E.first_order_lookahead(model, path, QUADRATIC, states, 0.8, 3),
             lambda: E.first_order_partial(model, path, QUADRATIC, states, ts, 0, 4, 8, seed=2),
             lambda: E.zeroth_order_partial(model, path, QUADRATIC, states, ts, 0, 4, 8, seed=2),
             lambda: E.zeroth_order_branching(model, path, QUADRATIC, states, ts, 0, 16, 2, 2, seed=2)]
    for call in calls:
        a, b = call(), call()
        assert a.shape == states.shape and np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


def test_mixture_vjp_with_per_row_times_matches_row_by_row(tri):
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel.from_dataset(tri, path)
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    t = np.array([0.2, 0.7, 0.2, 0.5, 0.7, 0.9])
    dx, _ = model.vjp(x, t, g)
    for i in range(6):
        np.testing.assert_allclose(dx[i], model.vjp(x[i:i + 1], t[i], g[i:i + 1])[0][0], rtol=1e-13, atol=1e-15)


def test_bad_inputs_are_named(tri, states):
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel.from_dataset(tri, path)
    ts = grid("flow", 0.8, 8)
    black_box = rsm.Reward(lambda x, c: -np.asarray(x)[:, 0])
    with pytest.raises(ValueError, match="k must be"):
        E.first_order_lookahead(model, path, QUADRATIC, states, 0.8, 0)
    with pytest.raises(ValueError, match="t must be"):
        E.first_order_lookahead(model, path, QUADRATIC, states, 0.0, 2)
    with pytest.raises(ValueError, match="differentiable"):
        E.first_order_lookahead(model, path, black_box, states, 0.8, 2)
    with pytest.raises(ValueError, match="differentiable"):
        E.first_order_partial(model, path, black_box, states, ts, 0, 3, 4)
    with pytest.raises(ValueError, match="step < end"):
        E.first_order_partial(model, path, QUADRATIC, states, ts, 3, 3, 4)
    with pytest.raises(ValueError, match="step < end"):
        E.zeroth_order_partial(model, path, QUADRATIC, states, ts, 0, 9, 4)
    with pytest.raises(ValueError, match="n_samples"):
        E.zeroth_order_partial(model, path, QUADRATIC, states, ts, 0, 3, 0)
    with pytest.raises(ValueError, match="multiple of"):
        E.zeroth_order_branching(model, path, QUADRATIC, states, ts, 0, 10, 2, 2)
    with pytest.raises(ValueError, match="n_split"):
        E.zeroth_order_branching(model, path, QUADRATIC, states, ts, 0, 2 ** 9, 9, 2)
    with pytest.raises(ValueError, match="n_branch"):
        E.zeroth_order_branching(model, path, QUADRATIC, states, ts, 0, 16, 2, 0)
    with pytest.raises(ValueError, match="x must be"):
        E.first_order_partial(model, path, QUADRATIC, states[0], ts, 0, 3, 4)
    with pytest.raises(ValueError, match="x must be finite"):
        E.zeroth_order_branching(model, path, QUADRATIC, np.full((2, 2), np.nan), ts, 0, 4, 1, 4)
    with pytest.raises(ValueError, match="n_split"):
        E.branching_cost(4, 5, 2)
