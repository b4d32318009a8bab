"""Each implemented preset's parameter gradient equals the gradient of the method's ORIGINAL
objective, written here independently in numpy (float64) from the formulas of RSM-SPEC §2.2 and
§9.2.3 / §12.5, on the same recorded rollout (RSM-SPEC §12.3; DESIGN §4: rel. error <= 1e-5).

How: the original loss is a numpy function of the policy outputs u at the recorded rows; its
gradient in u is taken by central differences (smooth away from the clip kinks), then chained to
the parameters with the MLP's VJP (verified against finite differences in test_mlp_grad.py)."""
import numpy as np
import pytest

import rsm


def make_models(seed=0):
    policy = rsm.MLP(2, 16, 2, seed=seed, dtype="float64")
    p = np.from_dlpack(policy.params)
    p[:] = np.random.default_rng(seed).standard_normal(p.shape) * 0.25
    ref = policy.copy()
    np.from_dlpack(ref.params)[:] += 0.05 * np.random.default_rng(seed + 1).standard_normal(p.shape)
    return policy, ref


def flow_sde_step(ts, i, a):
    """Flow-GRPO's SDE step (RSM-SPEC §2.2): coefficients of mu = cx x - cu u and the std."""
    t, t_next = ts[i], ts[i + 1]
    dt = t - t_next
    t_star = ts[1] if t >= 1 else t
    sig = a * np.sqrt(t / (1 - t_star))
    cx = 1 - sig**2 * dt / (2 * t)
    cu = (1 + sig**2 * (1 - t) / (2 * t)) * dt
    return cx, cu, sig * np.sqrt(dt), sig, dt


def logpdf_mean(x_next, mean, std):
    """Per-element mean of the Gaussian log-density (the reference code's convention)."""
    return np.mean(-((x_next - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi), axis=1)


def chain_to_params(policy, rows_x, rows_t, dloss_du):
    g = np.zeros(policy.num_params)
    for x, t, du in zip(rows_x, rows_t, dloss_du):
        _, dp = policy.vjp(x, t, du)
        g += np.from_dlpack(dp)
    return g


def fd_grad(loss_of_u, us, h=1e-6):
    """Central differences of loss_of_u(list of [n, D] arrays) w.r.t. every entry."""
    grads = []
    for k, u in enumerate(us):
        g = np.zeros_like(u)
        for idx in np.ndindex(u.shape):
            up = [v.copy() for v in us]
            dn = [v.copy() for v in us]
            up[k][idx] += h
            dn[k][idx] -= h
            g[idx] = (loss_of_u(up) - loss_of_u(dn)) / (2 * h)
        grads.append(g)
    return grads


def assert_grad_close(engine, original):
    # 1e-5 relative (DESIGN §4); central differences in float64 are accurate to ~1e-9 here
    err = np.linalg.norm(engine - original) / max(np.linalg.norm(original), 1e-300)
    assert err <= 1e-5, err


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_flow_grpo_equals_ppo_surrogate_with_kl(perturb):
    policy, ref = make_models(0)
    reward = rsm.rewards.quadratic([1.0, -1.0])
    beta, eps, a = 0.3, 0.02, 0.7
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=3, group_size=4,
                          kl=beta, clip_eps=eps, steps=4, grid="uniform")
    batch = trainer.rollout()
    if perturb:  # a later inner epoch: the policy has moved away from the rollout policy
        np.from_dlpack(policy.params)[:] += 0.02 * np.random.default_rng(9).standard_normal(policy.num_params)
    g_engine, _ = trainer.loss_and_grad(batch)

    ts, rows = trainer.ts, batch["rows"]
    A = batch["adv"]
    n_signal = batch["mask"].sum() * len(rows)
    u_ref = [np.from_dlpack(ref.forward(r["x"], ts[r["step"]])) for r in rows]

    def original(us):
        total = 0.0
        for r, u, ur in zip(rows, us, u_ref):
            cx, cu, std, _, _ = flow_sde_step(ts, r["step"], a)
            mean = cx * r["x"] - cu * u
            mean_old = cx * r["x"] - cu * r["u_old"]
            ratio = np.exp(logpdf_mean(r["x_next"], mean, std) - logpdf_mean(r["x_next"], mean_old, std))
            ppo = np.maximum(-A * ratio, -A * np.clip(ratio, 1 - eps, 1 + eps))
            kl = np.mean((mean - (cx * r["x"] - cu * ur)) ** 2, axis=1) / (2 * std**2)
            total += np.sum(ppo + beta * kl)
        return total / n_signal

    us = [np.from_dlpack(policy.forward(r["x"], ts[r["step"]])) for r in rows]
    if not perturb:
        for r, u in zip(rows, us):  # on-policy: the recorded outputs are the current ones, bitwise
            np.testing.assert_array_equal(u, r["u_old"])
    du = fd_grad(original, us)
    g_orig = chain_to_params(policy, [r["x"] for r in rows], [ts[r["step"]] for r in rows], du)
    assert_grad_close(g_engine, g_orig)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_rsm_zo_equals_fairclip2_matching_with_kl(perturb):
    policy, ref = make_models(1)
    reward = rsm.rewards.quadratic([-1.0, 0.5])
    beta, eps, a = 0.2, 1e-3, 0.7
    budget = [3, 2, 0, 4]
    trainer = rsm.Trainer(policy, ref, reward, "rsm-zo", batch_size=2, kl=beta, clip_eps=eps,
                          budget=budget, steps=5, grid="sd3")
    batch = trainer.rollout()
    if perturb:
        np.from_dlpack(policy.params)[:] += 0.02 * np.random.default_rng(3).standard_normal(policy.num_params)
    g_engine, _ = trainer.loss_and_grad(batch)

    ts, rows = trainer.ts, batch["rows"]
    active = [k for k in budget if k > 0]
    k_avg = sum(active) / len(active)
    n_signal = max(batch["mask"].sum(), 1)
    u_ref = [np.from_dlpack(ref.forward(r["x"], ts[r["step"]])) for r in rows]

    def original(us):
        """RSM-SPEC §9.2.3, reweight fairclip2, loss 'matching', per-element means."""
        total = 0.0
        for r, u, ur in zip(rows, us, u_ref):
            i = r["step"]
            cx, cu, std, sig, dt = flow_sde_step(ts, i, a)
            w = cu / std                                    # |K| / sigma_step
            dv = u - r["u_old"]
            T1 = 0.5 * np.mean((w * dv) ** 2, axis=1)
            T2 = np.mean(w * dv * r["noise"], axis=1)
            T = (T1 + T2) * sig**2 * dt
            adv = batch["adv"][r["traj"]] * batch["mask"][r["traj"]]
            k_i = budget[i]
            row = np.maximum(eps * np.abs(adv) + adv * T, 0) * sig / (np.sqrt(dt) * sig**2 * dt) * (k_avg / k_i)
            kl = np.mean((cu * (u - ur)) ** 2, axis=1) / (2 * std**2) * (k_avg / k_i)
            total += np.sum(row + beta * kl)
        return total / n_signal

    us = [np.from_dlpack(policy.forward(r["x"], ts[r["step"]])) for r in rows]
    du = fd_grad(original, us)
    g_orig = chain_to_params(policy, [r["x"] for r in rows], [ts[r["step"]] for r in rows], du)
    assert_grad_close(g_engine, g_orig)


def test_rsm_fo_equals_velocity_regression_onto_terminal_gradient():
    policy, ref = make_models(2)
    reward = rsm.rewards.gmm_logpdf([[2.0, 0.0], [-1.0, 1.0]], [0.7, 0.5], [0.3, 0.7])
    lam = 0.8
    trainer = rsm.Trainer(policy, ref, reward, "rsm-fo", batch_size=2, group_size=3, steps=5,
                          reward_scale=lam)
    batch = trainer.rollout()
    np.from_dlpack(policy.params)[:] += 0.02 * np.random.default_rng(5).standard_normal(policy.num_params)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows = trainer.ts, batch["rows"]
    # g = grad r at the END of each trajectory, recomputed independently from the terminal sample
    x0 = batch["x0"]
    h = 1e-6
    g_term = np.stack([(reward.value(x0 + h * e) - reward.value(x0 - h * e)) / (2 * h)
                       for e in np.eye(2)], axis=1)
    u_ref = [np.from_dlpack(ref.forward(r["x"], ts[r["step"]])) for r in rows]

    def original(us):
        """RSM-SPEC §12.5 FO (SD3.5, ours): mean || v_theta - (v_ref - lambda (1 - t) g) ||^2."""
        total, count = 0.0, 0
        for r, u, ur in zip(rows, us, u_ref):
            t = ts[r["step"]]
            target = ur - lam * (1 - t) * g_term
            total += np.sum(np.mean((u - target) ** 2, axis=1))
            count += u.shape[0]
        return total / count

    us = [np.from_dlpack(policy.forward(r["x"], ts[r["step"]])) for r in rows]
    du = fd_grad(original, us)
    g_orig = chain_to_params(policy, [r["x"] for r in rows], [ts[r["step"]] for r in rows], du)
    assert_grad_close(g_engine, g_orig)


def test_methods_registry():
    assert {"flow-grpo", "rsm-zo", "rsm-fo"} <= set(rsm.methods.names())
    p = rsm.methods.get("rsm-zo", kl=0.1)
    assert p["kl"] == 0.1 and p["budget"] == [6, 6, 8, 10, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown method"):
        rsm.methods.get("no-such-method")
    rows = rsm.methods.table()
    assert {r["method"] for r in rows} == set(rsm.methods.names())
