"""rsm.auxiliary: VGG-Flow's value-gradient network (consistency loss), Residual nabla-DB's learned
residual (forward / backward losses), the replay buffer. Each loss gradient is checked against
central finite differences in float64; each target against an independent numpy computation
(finite-difference Jacobians of the sampler step and of the Gaussian log-density)."""
import numpy as np
import pytest

import rsm
from rsm import auxiliary as aux
from rsm.sampling import step_coefficients, time_grid
from gradcheck import central_differences


def mlp(seed, scale=0.3, hidden=8):
    m = rsm.MLP(2, hidden, 1, seed=seed, dtype="float64")
    p = np.from_dlpack(m.params)
    p[:] = np.random.default_rng(seed).standard_normal(p.shape) * scale
    return m


def fd_param_grad(net, loss_fn, idx):
    return central_differences(np.from_dlpack(net.params), loss_fn, idx)


def assert_close(a, b, rel):
    a, b = np.asarray(a), np.asarray(b)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert err <= rel, f"relative error {err:.3g} > {rel}"


def flow_chain(n=5, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    path = rsm.FlowPath()
    ts = time_grid(steps, path, "uniform")
    coefs = step_coefficients(path, ts, "ode")
    states = [rng.standard_normal((n, 2)) for _ in range(steps)]
    g_rows = [rng.standard_normal((n, 2)) for _ in range(steps)]
    return path, ts, coefs, states, g_rows, rng.standard_normal((n, 2)), rng.standard_normal((n, 2))


def test_regression_loss_gradient_matches_finite_differences():
    net = mlp(1)
    rng = np.random.default_rng(2)
    x, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    loss, grad, _ = aux.regression_loss(net, x, 0.3, target, 2.5, 7.0)
    numpy_loss = 2.5 * ((np.from_dlpack(net.forward(x, 0.3)) - target) ** 2).sum() / 7.0
    assert loss == pytest.approx(numpy_loss, rel=1e-12)
    idx = np.linspace(0, net.num_params - 1, 25).astype(int)
    fd = fd_param_grad(net, lambda: aux.regression_loss(net, x, 0.3, target, 2.5, 7.0)[0], idx)
    assert_close(grad[idx], fd, 1e-6)


def test_consistency_targets_equal_transposed_step_jacobian_numpy():
    policy = mlp(3)
    path, ts, coefs, states, g_rows, g_term, phi_term = flow_chain()
    g_phi = [0.1 * g for g in g_rows[::-1]]
    targets = aux.consistency_targets(policy, ts, coefs, states, g_rows, g_term, g_phi, phi_term)
    h = 1e-6
    for i, x in enumerate(states):
        a_next = (g_term + phi_term) if i == len(states) - 1 else g_rows[i + 1] + g_phi[i + 1]

        def step_map(y):  # the Euler step x' = A x + K u(x, t), in numpy around the network
            return coefs[i]["A"] * y + coefs[i]["K"] * np.from_dlpack(policy.forward(y, ts[i]))

        expect = np.zeros_like(x)
        for d in range(2):  # (d x' / d x_d) . a_next, row by row
            up, dn = x.copy(), x.copy()
            up[:, d] += h
            dn[:, d] -= h
            expect[:, d] = ((step_map(up) - step_map(dn)) / (2 * h) * a_next).sum(1)
        assert_close(targets[i], expect, 1e-6)


def test_consistency_loss_gradient_matches_finite_differences():
    net = mlp(4)
    policy = mlp(5)
    path, ts, coefs, states, g_rows, g_term, phi_term = flow_chain(seed=1)
    g_phi = [np.from_dlpack(net.forward(states[i], ts[i])) for i in range(len(states))]
    targets = aux.consistency_targets(policy, ts, coefs, states, g_rows, g_term, g_phi, phi_term)
    x0 = np.random.default_rng(9).standard_normal((5, 2))
    loss, grad = aux.consistency_loss(net, ts, states, g_rows, targets, x0, 10.0)
    # the same loss, written out in numpy
    manual = sum(((g_rows[i] + np.from_dlpack(net.forward(states[i], ts[i])) - targets[i]) ** 2).sum()
                 for i in range(len(states))) / (5 * len(states))
    manual += 10.0 * (np.from_dlpack(net.forward(x0, 0.0)) ** 2).sum() / 5
    assert loss == pytest.approx(manual, rel=1e-12)
    idx = np.linspace(0, net.num_params - 1, 25).astype(int)
    fd = fd_param_grad(net, lambda: aux.consistency_loss(net, ts, states, g_rows, targets, x0, 10.0)[0], idx)
    assert_close(grad[idx], fd, 1e-6)


def test_residual_targets_match_numpy_log_density_gradients():
    policy, ref = mlp(6), mlp(7)
    path = rsm.VPPath("linear")
    ts = time_grid(6, path, "uniform")
    coefs = step_coefficients(path, ts, "ddpm")
    rng = np.random.default_rng(3)
    i, n, lam = 2, 4, 1.7
    c = coefs[i]
    x = rng.standard_normal((n, 2))
    x_next = rng.standard_normal((n, 2))
    g = rng.standard_normal((n, 2))
    row = {"x": x, "x_next": x_next, "u_old": np.from_dlpack(policy.forward(x, c["t"]))}
    fwd, bwd = aux.residual_targets(policy, ref, row, c, lam, g)

    def log_pi(model, y):  # log N(x'; A y + K u(y), s^2 I) per row (constants dropped)
        mu = c["A"] * y + c["K"] * np.from_dlpack(model.forward(y, c["t"]))
        return -((x_next - mu) ** 2).sum(1) / (2 * c["std"] ** 2)

    def log_ratio_next(z):  # as a function of x' (forward residual: gradient in x')
        out = []
        for model in (policy, ref):
            mu = c["A"] * x + c["K"] * np.from_dlpack(model.forward(x, c["t"]))
            out.append(-((z - mu) ** 2).sum(1) / (2 * c["std"] ** 2))
        return out[0] - out[1]

    h = 1e-6
    grad_x, grad_next = np.zeros_like(x), np.zeros_like(x)
    for d in range(2):
        up, dn = x.copy(), x.copy()
        up[:, d] += h
        dn[:, d] -= h
        grad_x[:, d] = ((log_pi(policy, up) - log_pi(ref, up)) - (log_pi(policy, dn) - log_pi(ref, dn))) / (2 * h)
        up, dn = x_next.copy(), x_next.copy()
        up[:, d] += h
        dn[:, d] -= h
        grad_next[:, d] = (log_ratio_next(up) - log_ratio_next(dn)) / (2 * h)
    assert_close(fwd, grad_next - lam * g, 1e-6)
    assert_close(bwd, -grad_x - lam * g, 1e-6)


def test_replay_buffer_appends_old_rows_with_their_own_gradients():
    buf = aux.ReplayBuffer(capacity=2, replay=1, seed=0)

    def batch(k):
        return {"rows": [{"step": 0, "x": np.full((3, 2), k), "traj": np.arange(3)}],
                "grad": np.full((3, 2), float(k)), "valid": np.ones(3, bool), "mask": np.ones(3, bool)}

    first = buf.augment(batch(1))
    assert len(first["rows"]) == 1  # nothing stored yet
    second = buf.augment(batch(2))
    assert len(second["rows"]) == 2 and second["grad"].shape == (6, 2)
    old = second["rows"][1]
    assert np.all(second["grad"][old["traj"]] == 1.0) and np.all(old["x"] == 1)
    assert np.all(second["grad"][second["rows"][0]["traj"]] == 2.0)
    for k in range(3, 6):
        buf.augment(batch(k))
    assert len(buf.batches) == 2  # capacity


def test_aux_trainer_rejects_mechanisms_of_other_presets():
    policy = mlp(0)
    reward = rsm.rewards.quadratic([1.0, 0.0])
    with pytest.raises(ValueError, match="value_net"):
        aux.AuxTrainer(policy, policy.copy(), reward, "rsm-fo", value_net=aux.ValueGradientNet(2))
    with pytest.raises(ValueError, match="residual"):
        aux.AuxTrainer(policy, policy.copy(), reward, "rsm-fo", residual=aux.ResidualNet(2))
    with pytest.raises(ValueError, match="replay"):
        aux.AuxTrainer(policy, policy.copy(), reward, "flow-grpo", replay=aux.ReplayBuffer())


@pytest.mark.parametrize("method,kind,mech", [("vgg-flow-rsm", "flow", "value_net"),
                                              ("rsm-fo-diffusion", "vp", "residual"),
                                              ("rsm-fo", "flow", "replay")])
def test_aux_trainer_steps_are_reproducible_and_count_extra_work(method, kind, mech):
    path = rsm.FlowPath() if kind == "flow" else rsm.VPPath("linear")
    reward = rsm.rewards.quadratic([1.0, 0.0])

    def go(with_mech):
        ref = rsm.MLP(2, 16, 1, seed=0)
        make = {"value_net": lambda: aux.ValueGradientNet(2, hidden=8, depth=1),
                "residual": lambda: aux.ResidualNet(2, hidden=8, depth=1),
                "replay": lambda: aux.ReplayBuffer(4, 1)}
        kw = {mech: make[mech]()} if with_mech else {}
        tr = aux.AuxTrainer(ref.copy(), ref, reward, method, path=path, batch_size=2, group_size=2,
                            seed=3, **kw)
        rows = [tr.step() for _ in range(3)]
        return tr, rows

    tr1, rows1 = go(True)
    tr2, rows2 = go(True)
    assert np.array_equal(np.from_dlpack(tr1.policy.params), np.from_dlpack(tr2.policy.params))
    _, plain = go(False)
    assert all(r["nfe"] > p["nfe"] for r, p in zip(rows1[1:], plain[1:]))
    assert [r["reward_mean"] for r in rows1][0] == plain[0]["reward_mean"]  # same first rollout
