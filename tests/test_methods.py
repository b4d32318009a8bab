"""Each implemented preset's parameter gradient equals the gradient of the method's ORIGINAL
objective, written here independently in numpy (float64) from the formulas of THEORY.md §2.2 and
§9.2.3 / §12.5, on the same recorded rollout (THEORY.md §12.3; relative error <= 1e-5).

How: the original loss is a numpy function of the policy outputs u at the recorded rows; its
gradient in u is taken by central differences (smooth away from the clip kinks), then chained to
the parameters with the MLP's VJP (verified against finite differences in test_mlp_grad.py)."""
import numpy as np
import pytest

import rsm
from gradcheck import fd_per_row
from sde_oracle import flow_sde_step
from toy_models import make_models


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


def move_policy(policy, seed):
    """Move the policy away from the rollout policy (a later inner epoch: theta != theta_old)."""
    np.from_dlpack(policy.params)[:] += 0.02 * np.random.default_rng(seed).standard_normal(policy.num_params)


def outputs(model, rows):
    """The model's outputs at every recorded row block (list of [n, D] arrays)."""
    return [np.from_dlpack(model.forward(r["x"], r["t"])) for r in rows]


def original_gradient(policy, rows, original):
    """Parameter gradient of original(list of outputs): finite differences in the outputs,
    chained to the parameters with the policy's VJP."""
    du = fd_grad(original, outputs(policy, rows))
    return chain_to_params(policy, [r["x"] for r in rows], [r["t"] for r in rows], du)


def with_times(rows, ts):
    """Attach each row block's time t = ts[step]."""
    for r in rows:
        r["t"] = ts[r["step"]]
    return rows


def sample_mean(us, per_sample):
    """The mean over every trained sample of per_sample(k, u): the [n] per-sample terms of row
    block k at the outputs u (the original objectives of the first-order methods)."""
    return sum(np.sum(per_sample(k, u)) for k, u in enumerate(us)) / sum(u.shape[0] for u in us)


def assert_directional_derivatives(grad, loss, base, seed, count=3, h=1e-6):
    """<grad, v> equals the central difference of loss(theta) at base along `count` random v."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        v = rng.standard_normal(base.shape)
        fd = (loss(base + h * v) - loss(base - h * v)) / (2 * h)
        assert np.dot(grad, v) == pytest.approx(fd, rel=1e-6, abs=1e-10)


def assert_grad_close(engine, original):
    # 1e-5 relative; central differences in float64 are accurate to ~1e-9 here
    err = np.linalg.norm(engine - original) / max(np.linalg.norm(original), 1e-300)
    assert err <= 1e-5, err


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_flow_grpo_equals_ppo_surrogate_with_kl(perturb):
    policy, ref = make_models(0)
    reward = rsm.rewards.quadratic([1.0, -1.0])
    beta, eps, a = 0.3, 0.02, 0.7
    # rsm's exact form (exact Gaussian KL, group std, masked mean): since issue 15 the variant
    # preset flow-grpo-exact; "flow-grpo" follows the released script (tests/test_released.py)
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo-exact", batch_size=3, group_size=4,
                          kl=beta, clip_eps=eps, steps=4, grid="uniform")
    batch = trainer.rollout()
    if perturb:  # a later inner epoch: the policy has moved away from the rollout policy
        move_policy(policy, 9)
    g_engine, _ = trainer.loss_and_grad(batch)

    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    A = batch["adv"]
    n_signal = batch["mask"].sum() * len(rows)
    u_ref = outputs(ref, rows)

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

    if not perturb:
        for r, u in zip(rows, outputs(policy, rows)):  # on-policy: recorded outputs, bitwise
            np.testing.assert_array_equal(u, r["u_old"])
    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_rsm_zo_equals_fairclip2_matching_with_kl(perturb):
    policy, ref = make_models(1)
    reward = rsm.rewards.quadratic([-1.0, 0.5])
    beta, eps, a_level = 0.2, 1e-3, 0.7
    budget = [3, 2, 0, 4]
    trainer = rsm.Trainer(policy, ref, reward, "rsm-zo", batch_size=2, kl=beta, clip_eps=eps,
                          budget=budget, steps=5, grid="sd3")
    batch = trainer.rollout()
    if perturb:
        move_policy(policy, 3)
    g_engine, _ = trainer.loss_and_grad(batch)

    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    # the ODE KL-anchor rows (THEORY.md §9.2.5): the root states at the budget's k_i = 0
    # transition 2 (transition 4, the last, is never an anchor), every root
    anchors = with_times(batch["anchor_rows"], ts)
    assert [a["step"] for a in anchors] == [2] and len(anchors[0]["x"]) == 2
    if not perturb:
        # they are the ODE root's states: one Euler step from the anchor state at t_2 with the
        # (rollout) policy's velocity lands on the state the step-3 branches start from
        v = np.from_dlpack(policy.forward(anchors[0]["x"], ts[2]))
        np.testing.assert_allclose(anchors[0]["x"] + (ts[3] - ts[2]) * v, rows[2]["x"][::budget[3]],
                                   rtol=1e-12, atol=1e-12)
    active = [k for k in budget if k > 0]
    k_avg = sum(active) / len(active)
    n_signal = max(batch["mask"].sum(), 1)
    u_ref = outputs(ref, rows)
    u_ref_anchor = outputs(ref, anchors)

    def original(us):
        """THEORY.md §9.2.3, reweight fairclip2, loss 'matching', per-element means; + beta KL_anchor
        (§9.2.5): mean((mu_theta - mu_ref)^2) / (2 std^2) at the anchor states, weight k_avg."""
        total = 0.0
        for a, u, ur in zip(anchors, us[len(rows):], u_ref_anchor):
            _, cu, std, _, _ = flow_sde_step(ts, a["step"], a_level)
            total += beta * k_avg * np.sum(np.mean((cu * (u - ur)) ** 2, axis=1) / (2 * std**2))
        for r, u, ur in zip(rows, us, u_ref):
            i = r["step"]
            cx, cu, std, sig, dt = flow_sde_step(ts, i, a_level)
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

    g_orig = original_gradient(policy, rows + anchors, original)
    assert_grad_close(g_engine, g_orig)
    if perturb:   # the anchor term is not negligible at the tolerance
        g_no_anchor = original_gradient(policy, rows, original)
        assert np.linalg.norm(g_orig - g_no_anchor) > 1e-3 * np.linalg.norm(g_orig)


def first_order_setup(method, seed, move_seed, **options):
    """A first-order preset on the two-mode reward: one rollout, the policy then moved off the
    rollout's parameters, the engine's gradient there. Returns (trainer, reward, batch,
    g_engine, rows with times)."""
    policy, ref = make_models(seed)
    reward = rsm.rewards.gmm_logpdf([[2.0, 0.0], [-1.0, 1.0]], [0.7, 0.5], [0.3, 0.7])
    trainer = rsm.Trainer(policy, ref, reward, method, batch_size=2, group_size=3, **options)
    batch = trainer.rollout()
    move_policy(policy, move_seed)
    g_engine, _ = trainer.loss_and_grad(batch)
    return trainer, reward, batch, g_engine, with_times(batch["rows"], trainer.ts)


def test_rsm_fo_equals_velocity_regression_onto_terminal_gradient():
    lam = 0.8
    trainer, reward, batch, g_engine, rows = first_order_setup("rsm-fo", 2, 5, steps=5,
                                                               reward_scale=lam)
    policy, ref, ts = trainer.policy, trainer.ref, trainer.ts
    # g = grad r at the END of each trajectory, recomputed independently from the terminal sample
    g_term = fd_per_row(reward.value, batch["x0"])
    u_ref = outputs(ref, rows)

    def original(us):
        """THEORY.md §12.5 FO (SD3.5, ours): mean || v_theta - (v_ref - lambda (1 - t) g) ||^2."""
        def term(k, u):
            target = u_ref[k] - lam * (1 - ts[rows[k]["step"]]) * g_term
            return np.mean((u - target) ** 2, axis=1)
        return sample_mean(us, term)

    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


def test_methods_registry():
    assert {"flow-grpo", "rsm-zo", "rsm-fo"} <= set(rsm.methods.names())
    p = rsm.methods.get("rsm-zo", kl=0.1)
    assert p["kl"] == 0.1 and p["budget"] == [4, 4, 4, 4, 4, 3, 3, 2, 2]   # the "tapered" default
    with pytest.raises(ValueError, match="unknown method"):
        rsm.methods.get("no-such-method")
    rows = rsm.methods.table()
    assert {r["method"] for r in rows} == set(rsm.methods.names())
    anchor = {r["method"]: r["kl_anchor"] for r in rows}
    assert anchor["rsm-zo"] == 0.004 and anchor["rsm-zo-diffusion"] == 8e-5
    assert anchor["flow-grpo"] == 0.0 and anchor["tempflow-grpo"] == 0.0


def test_kl_anchor_rows_options_errors_and_report():
    """The ODE KL-anchor keys (THEORY.md §9.2.5, §9.3): the presets' values; bad values refused at
    construction naming the key; the capped subset is seeded (same seed, same rows; the cap
    max(1, int(ratio x transition rows)) for ratio > 0); ratio 0 or beta 0 keeps none; the
    history's kl_anchor is the closed-form per-sample KL summed over the anchor blocks, 0 while
    policy == ref; tempflow-grpo (uniform budget) has no anchor rows."""
    zo, zod = rsm.methods.get("rsm-zo"), rsm.methods.get("rsm-zo-diffusion")
    assert zo["kl_anchor"] is None and zo["kl_anchor_weight"] == "sampler" and zo["kl_anchor_reduce"] == "k_avg"
    assert (zod["kl_anchor"], zod["kl_anchor_weight"], zod["kl_anchor_reduce"],
            zod["kl_anchor_max_ratio"]) == (8e-5, 4.5, "mean", 0.1)
    policy, ref = make_models(21)
    reward = rsm.rewards.quadratic([0.5, -0.5])
    for key, bad, exc in (("kl_anchor", -1.0, ValueError), ("kl_anchor", float("nan"), ValueError),
                          ("kl_anchor_weight", 0.0, ValueError), ("kl_anchor_weight", "ref", ValueError),
                          ("kl_anchor_reduce", "sum", ValueError),
                          ("kl_anchor_max_ratio", 1.5, ValueError),
                          ("kl_anchor_max_ratio", True, TypeError)):   # a bool is not a number
        with pytest.raises(exc, match=key):
            rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=3, **{key: bad})

    def anchors(trainer):
        b = trainer.rollout()
        transition = sum(len(r["traj"]) for r in b["rows"])
        return transition, [(a["step"], a["x"].tobytes()) for a in b["anchor_rows"]]

    make = lambda seed, **kw: rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=3,
                                          seed=seed, **kw)
    t1, t2 = make(4), make(4)
    transition, first = anchors(t1)
    assert first == anchors(t2)[1] and len(first) > 0
    assert sum(np.frombuffer(x).size // 2 for _, x in first) == max(1, int(0.1 * transition))
    assert anchors(make(5))[1] != first
    _, one = anchors(make(4, kl_anchor_max_ratio=0.001))
    assert sum(np.frombuffer(x).size // 2 for _, x in one) == 1
    assert anchors(make(4, kl_anchor_max_ratio=0.0))[1] == []
    assert anchors(make(4, kl_anchor=0.0))[1] == []
    assert rsm.Trainer(policy, ref, reward, "tempflow-grpo", batch_size=2).rollout()["anchor_rows"] == []

    # the report: per sample (1/2) w^2 |u - u_ref|^2 at the anchor states, summed over blocks
    trainer = rsm.Trainer(policy, ref, reward, "rsm-zo", batch_size=2, budget=[3, 0, 2, 0],
                          steps=5, grid="sd3", kl=0.1)
    batch = trainer.rollout()
    _, stats = trainer.loss_and_grad(batch)
    expect = 0.0
    for a in batch["anchor_rows"]:
        c = trainer.sde[a["step"]]
        du = np.from_dlpack(policy.forward(a["x"], trainer.ts[a["step"]])) - np.from_dlpack(
            ref.forward(a["x"], trainer.ts[a["step"]]))
        expect += 0.5 * (c["K"] / c["std"]) ** 2 * np.mean(np.sum(du**2, axis=1))
    assert [a["step"] for a in batch["anchor_rows"]] == [1, 3] and expect > 0
    assert stats["kl_anchor"] == pytest.approx(expect, rel=1e-12)
    same = rsm.Trainer(policy, policy.copy(), reward, "rsm-zo", batch_size=2, budget=[3, 0, 2, 0],
                       steps=5, grid="sd3")
    assert same.step()["kl_anchor"] == 0.0


@pytest.mark.parametrize("method", ["rsm-zo", "rsm-zo-diffusion"])
def test_kl_anchor_under_accumulation(method):
    """Both anchor reductions are per-micro-batch quantities under the one masked-mean
    normalizer: accumulating two copies of a rollout gives the update of the rollout alone
    (the policy rows' sum and the normalizer both double; "mean" averages the micro-batches)."""
    policy, ref = make_models(22)
    reward = rsm.rewards.quadratic([0.5, -0.5])
    kw = dict(batch_size=2, kl_anchor=0.5, kl_anchor_max_ratio=1.0)
    if method == "rsm-zo":
        kw.update(budget=[3, 0, 2, 0], steps=5, grid="sd3")
    else:
        kw.update(budget=[3, 0, 2, 0, 3], steps=10, path=rsm.VPPath("linear"))
    one = rsm.Trainer(policy.copy(), ref, reward, method, **kw)
    two = rsm.Trainer(policy.copy(), ref, reward, method, **kw)
    batch = one.rollout()
    assert batch["anchor_rows"]
    s1 = one.update([batch])
    s2 = two.update([batch, batch])
    assert s1["kl_anchor"] == pytest.approx(s2["kl_anchor"], rel=1e-12)
    start = np.from_dlpack(policy.params)
    np.testing.assert_allclose(np.from_dlpack(two.policy.params) - start,
                               np.from_dlpack(one.policy.params) - start, rtol=1e-9, atol=1e-15)


# ---- more presets: the same recipe ----------------------------------------------------------------

def vp_linear_abar(t):
    """Continuous VP schedule of rsm.VPPath('linear'): beta from 0.1 to 20 (Song et al.)."""
    return np.exp(-(0.1 * t + 0.5 * 19.9 * t**2))


def ddpm_step(ts, i):
    """DDIM eta = 1 (DDPM posterior variance) from THEORY.md §2.1: mu = cx x - cu eps, std."""
    ab, ab_next = vp_linear_abar(ts[i]), vp_linear_abar(ts[i + 1])
    var = (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
    c1 = np.sqrt((1 - ab) * ab_next / ab)
    c2 = np.sqrt(1 - ab_next - var)
    return np.sqrt(ab_next / ab), c1 - c2, np.sqrt(var)


def ratio_preset_gradients(method, path_kind, perturb, **overrides):
    """(engine gradient, original gradient) for a full-trajectory ratio-form preset."""
    policy, ref = make_models(3)
    reward = rsm.rewards.quadratic([0.5, 1.0])
    trainer = rsm.Trainer(policy, ref, reward, method, batch_size=3, group_size=4, steps=4,
                          grid="uniform", **overrides)
    cfg = trainer.cfg
    batch = trainer.rollout()
    if perturb:
        move_policy(policy, 11)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    eps, beta = cfg["clip_eps"], cfg["kl"]
    A = batch["adv"] * batch["mask"]
    n_signal = max(batch["mask"].sum() * len(rows), 1)   # every row of a trajectory is trained
    u_ref = outputs(ref, rows)

    def step_of(i):
        if path_kind == "flow":
            cx, cu, std, sig, dt = flow_sde_step(ts, i, cfg["noise_level"])
        else:
            cx, cu, std = ddpm_step(ts, i)
            sig, dt = std / np.sqrt(ts[i] - ts[i + 1]), ts[i] - ts[i + 1]
        return cx, cu, std, sig, dt

    def original(us):
        total = 0.0
        for r, u, ur in zip(rows, us, u_ref):
            cx, cu, std, sig, dt = step_of(r["step"])
            mean, mean_old = cx * r["x"] - cu * u, cx * r["x"] - cu * r["u_old"]
            logp = logpdf_mean(r["x_next"], mean, std)
            logp_old = logpdf_mean(r["x_next"], mean_old, std)
            log_rho = logp - logp_old
            if method == "grpo-guard":   # RatioNorm: re-centre by mean(delta^2)/(2 std^2), x std
                log_rho = (log_rho + np.mean((mean - mean_old) ** 2, axis=1) / (2 * std**2)) * std
                post = 1 / dt
            elif method == "pcpo":       # log-ratio weight zeta dt instead of w (THEORY.md §6.3.7)
                w = cu / std
                log_rho = log_rho * (4.3152134639895925 * dt) / w
                post = 1.0
            else:
                post = 1.0
            if cfg["form"] == "ppo":
                rho = np.exp(log_rho)
                row = np.maximum(-A[r["traj"]] * rho, -A[r["traj"]] * np.clip(rho, 1 - eps, 1 + eps))
            else:  # log_ratio (PCPO-base, REINFORCE with an infinite clip range)
                v = 1 + log_rho
                row = np.maximum(-A[r["traj"]] * v, -A[r["traj"]] * np.clip(v, 1 - eps, 1 + eps))
            kl = np.mean((cu * (u - ur)) ** 2, axis=1) / (2 * std**2)
            total += np.sum(row * post + beta * kl)
        return total / n_signal

    g_orig = original_gradient(policy, rows, original)
    return g_engine, g_orig, batch, trainer


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
@pytest.mark.parametrize("method,path_kind,overrides", [
    ("ddpo", "vp", {"clip_eps": 0.05}),
    ("dance-grpo", "flow", {"clip_eps": 0.05, "train_steps": "all", "sde_sigma": "flow-grpo",
                            "noise_level": 0.7}),
    ("grpo-guard", "flow", {"clip_eps": 0.01}),
    ("pcpo", "flow", {"clip_eps": 0.05}),
    ("pcpo-base", "flow", {"clip_eps": 0.05, "kl": 0.1}),
    ("pcpo-base", "vp", {"clip_eps": 0.05}),
    ("reinforce-kl", "flow", {"alpha": 0.5}),
])
def test_ratio_presets_equal_their_original_objectives(method, path_kind, overrides, perturb):
    path = rsm.FlowPath() if path_kind == "flow" else rsm.VPPath("linear")
    g_engine, g_orig, _, _ = ratio_preset_gradients(method, path_kind, perturb, path=path, **overrides)
    assert_grad_close(g_engine, g_orig)


def test_dance_grpo_shares_initial_noise_and_subsamples_steps():
    policy, ref = make_models(4)
    # rsm's earlier one subset per rollout (timestep_subset="per_rollout"); the released
    # per-sample subsets are tested in tests/test_released.py
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0, 0]), "dance-grpo", batch_size=3,
                          group_size=4, steps=10, train_steps=0.5, timestep_subset="per_rollout")
    batch = trainer.rollout()
    steps = [r["step"] for r in batch["rows"]]
    # half of the 9 trainable transitions (the step into t = 0 is never trained), rounded
    assert len(steps) == round(0.5 * 9) and len(set(steps)) == len(steps) and max(steps) < 9
    # the subset is drawn per iteration (seeded): other iterations train other subsets
    subsets = set()
    for it in range(1, 6):
        trainer.iteration = it
        subsets.add(tuple(r["step"] for r in trainer.rollout()["rows"]))
    assert len(subsets) > 1
    every = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0, 0]), "dance-grpo", batch_size=3,
                        group_size=4, steps=10, train_steps="all").rollout()
    x_start = every["rows"][0]["x"]            # the states at t = 1: one noise per group of 4
    assert np.array_equal(x_start[0], x_start[3]) and not np.array_equal(x_start[0], x_start[4])


def test_tempflow_grpo_equals_weighted_ppo_on_branches():
    policy, ref = make_models(5)
    reward = rsm.rewards.quadratic([-1.0, 0.5])
    beta, eps, a = 0.1, 0.02, 0.7
    trainer = rsm.Trainer(policy, ref, reward, "tempflow-grpo", batch_size=2, kl=beta,
                          clip_eps=eps, budget=[3, 3, 3, 3], steps=5)
    batch = trainer.rollout()
    move_policy(policy, 2)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    n_signal = max(batch["mask"].sum(), 1)
    u_ref = outputs(ref, rows)

    def original(us):
        total = 0.0
        for r, u, ur in zip(rows, us, u_ref):
            cx, cu, std, sig, dt = flow_sde_step(ts, r["step"], a)
            mean, mean_old = cx * r["x"] - cu * u, cx * r["x"] - cu * r["u_old"]
            rho = np.exp(logpdf_mean(r["x_next"], mean, std) - logpdf_mean(r["x_next"], mean_old, std))
            adv = batch["adv"][r["traj"]] * batch["mask"][r["traj"]]
            ppo = np.maximum(-adv * rho, -adv * np.clip(rho, 1 - eps, 1 + eps)) * 2.25 * sig * np.sqrt(dt)
            kl = np.mean((cu * (u - ur)) ** 2, axis=1) / (2 * std**2)
            total += np.sum(ppo + beta * kl)
        return total / n_signal

    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


def test_vgg_flow_equals_regression_onto_tweedie_gradient():
    lam = 0.6
    trainer, reward, batch, g_engine, rows = first_order_setup("vgg-flow-rsm", 6, 8, steps=4,
                                                                   reward_scale=lam)
    policy, ref, ts = trainer.policy, trainer.ref, trainer.ts
    u_ref = outputs(ref, rows)

    def grad_r(x):
        return fd_per_row(reward.value, x)

    def original(us):
        def term(k, u):
            r, t = rows[k], ts[rows[k]["step"]]
            x0_hat = r["x"] - t * r["u_old"]          # Tweedie with the stop-gradient velocity
            target = u_ref[k] - lam * (1 - t) ** 2 * grad_r(x0_hat)
            return np.mean((u - target) ** 2, axis=1)
        return sample_mean(us, term)

    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


def test_rsm_fo_diffusion_equals_forward_residual_with_trust_region():
    policy, ref = make_models(7)
    reward = rsm.rewards.quadratic([1.0, 1.0], scale=0.5)
    lam, reg = 0.7, 3.0
    trainer = rsm.Trainer(policy, ref, reward, "rsm-fo-diffusion", batch_size=2, group_size=3,
                          steps=4, reward_scale=lam, reg=reg)
    batch = trainer.rollout()
    move_policy(policy, 4)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    g = -(batch["x0"] - np.array([1.0, 1.0])) * 0.5          # grad of the quadratic reward at x0
    u_ref = outputs(ref, rows)

    def original(us):
        """THEORY.md §12.5 FO (SD1.5, ours): mean (s (mu - mu_ref)/s^2 - lambda s g)^2 + reg mean (eps - eps_old)^2."""
        def term(k, u):
            r = rows[k]
            cx, cu, std = ddpm_step(ts, r["step"])
            mu, mu_ref = cx * r["x"] - cu * u, cx * r["x"] - cu * u_ref[k]
            resid = std * (mu - mu_ref) / std**2 - lam * std * g
            return np.mean(resid**2, axis=1) + reg * np.mean((u - r["u_old"]) ** 2, axis=1)
        return sample_mean(us, term)

    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


@pytest.mark.parametrize("truncation", [1, 3])
def test_draft_gradient_is_the_pathwise_reward_gradient(truncation):
    """DRaFT-K's gradient equals the directional derivative of -mean r(x0(theta)) where x0 is
    recomputed through the last K Euler steps from the fixed state K steps before the end."""
    policy, ref = make_models(8)
    reward = rsm.rewards.quadratic([1.0, -0.5], scale=0.7)
    trainer = rsm.Trainer(policy, ref, reward, "draft-rsm", batch_size=2, group_size=3, steps=5,
                          truncation=truncation)
    batch = trainer.rollout()
    g_engine, _ = trainer.loss_and_grad(batch)
    ts = trainer.ts
    start = batch["rows"][-truncation]
    params = np.from_dlpack(policy.params)
    base = params.copy()

    def loss(theta):
        params[:] = theta
        x = start["x"].copy()
        for i in range(start["step"], len(ts) - 1):
            x = x - (ts[i] - ts[i + 1]) * np.from_dlpack(policy.forward(x, ts[i]))
        params[:] = base
        return -reward.value(x).mean()

    assert_directional_derivatives(g_engine, loss, base, seed=0)


# ---- per-timestep weights (THEORY.md §2.2 table, §4.3, §9.2.3; identity T11) -------------------------

SPEC_TABLE_22 = {  # i = 0..8 of the SD3.5 grid (10 steps, shift 3, a = 0.7), THEORY.md §2.2
    "w": [0.0570, 0.0784, 0.1292, 0.1880, 0.2640, 0.3710, 0.5356, 0.8248, 1.4867],
    "pcpo": [0.1721, 0.2019, 0.2402, 0.2905, 0.3586, 0.4536, 0.5924, 0.8062, 1.1613],
    "tempflow": [0.0897, 0.1310, 0.1559, 0.1886, 0.2328, 0.2945, 0.3845, 0.5233, 0.7539],
}


@pytest.mark.parametrize("method,expected", [
    ("flow-grpo", SPEC_TABLE_22["w"]),
    ("pcpo", SPEC_TABLE_22["pcpo"]),
    ("tempflow-grpo", SPEC_TABLE_22["tempflow"]),  # the column is kappa = 2.25 s~ sqrt(dt) w
    ("grpo-guard", [1.0] + [1.245] * 8),      # 1 + a^2/2, and 1 at t = 1 (THEORY.md §9.2.3)
    ("rsm-zo", [1.0] + [1.245] * 8),          # fairclip2 has GRPO-Guard's gradient scale
])
def test_output_space_gradient_weight_kappa_T11(method, expected):
    """kappa_i = |dL/du| per unit A z at theta = theta_old, computed by the engine, against the
    per-transition columns of THEORY.md §2.2 (printed to 4 digits)."""
    from rsm.finetune import influence

    kappa = influence(method, budget="base") if method == "rsm-zo" else influence(method)
    got = kappa["kappa"][:9]
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=6e-5)


def test_normalized_influence_h():
    from rsm.finetune import influence

    zo = influence("rsm-zo", budget="lowsnr2")   # equal total weight on the 4 noisiest steps
    assert np.all(zo["h"][4:] == 0) and np.all(zo["h"][:4] > 0)
    np.testing.assert_allclose(zo["h"].mean(), 1.0)
    zo = influence("rsm-zo")                  # the default "tapered" budget trains all 9 steps
    assert np.all(zo["h"][:9] > 0)
    np.testing.assert_allclose(zo["h"].mean(), 1.0)
    guard = influence("grpo-guard")           # constant strength across t < 1
    assert np.ptp(guard["h"][1:9]) < 1e-12
    vgg, fo = influence("vgg-flow-rsm"), influence("rsm-fo")
    t = vgg["t"]
    # first-order: kappa = 2 lambda eta(t) with eta = (1 - t)^2 (VGG-Flow) or (1 - t) (RSM-FO)
    np.testing.assert_allclose(vgg["kappa"], 2 * (1 - t) ** 2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fo["kappa"], 2 * (1 - t), rtol=1e-12, atol=1e-15)
    # the redesign puts more weight on low SNR (large t) than VGG-Flow: THEORY.md §9.4
    assert fo["h"][1] > vgg["h"][1]
    rows = rsm.methods.table()
    assert all(len(r["h"]) == len(r["t"]) for r in rows)


def test_clip_events_T12():
    """A matching row is clipped (inactive) iff A log rho >= eps |A| / s_clip, s_clip = term_scale."""
    rng = np.random.default_rng(0)
    R = 400
    u_old = rng.standard_normal((R, 2))
    u = u_old + 0.3 * rng.standard_normal((R, 2))
    z = rng.standard_normal((R, 2))
    A = rng.standard_normal(R)
    w, s_clip, eps = 0.8, 0.49, 0.05
    coef = rsm.objective.row_coefficients(R, adv=A, w=w, term_scale=s_clip, clip_eps=eps)
    out = rsm.objective.objective("matching", u, coef, u_old=u_old, noise=z, mean_over_dims=True)
    log_rho = np.mean(-w * z * (u - u_old) - 0.5 * w**2 * (u - u_old) ** 2, axis=1)
    clipped = A * log_rho >= eps * np.abs(A) / s_clip
    np.testing.assert_array_equal(~np.from_dlpack(out["active"]), clipped)
    assert 0.1 < clipped.mean() < 0.9  # both kinds of rows occur


def test_branching_bookkeeping_T16():
    """NFE and rows of the ODE-root + single-step-branch rollout (THEORY.md §7.4, §9.2.4): per root
    S root steps (our root runs to t = 0, one more than the reference code's 9) + sum_i k_i (S - i)
    branch steps; rows = sum_i k_i; every active timestep gets equal total weight k_i * k_avg/k_i."""
    policy, ref = make_models(9)
    roots = 3
    for profile, spec_nfe in (("base", 333), ("lowsnr2", 257), ("highsnr", 278), ("highsnr2", 324)):
        trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0, 0]), "rsm-zo",
                              batch_size=roots, budget=profile)
        budget = trainer.cfg["budget"]
        batch = trainer.rollout()
        assert batch["nfe"] == roots * (spec_nfe + 1)
        assert sum(len(r["traj"]) for r in batch["rows"]) == roots * sum(budget)
        totals = {r["step"]: len(r["traj"]) * r["weight"] for r in batch["rows"]}
        assert np.ptp(list(totals.values())) < 1e-9


def test_closed_form_kl_matches_monte_carlo_T18():
    """Per-step KL(pi_theta || pi_ref) = |mu_theta - mu_ref|^2 / (2 std^2) (equal variances) against
    the Monte-Carlo mean of log pi_theta - log pi_ref over x' ~ pi_theta."""
    policy, ref = make_models(10)
    path = rsm.FlowPath()
    ts = rsm.time_grid(10, grid="sd3")
    i, n, reps = 4, 5, 20000
    x = np.random.default_rng(1).standard_normal((n, 2))
    xs = np.repeat(x, reps, axis=0)
    traj = rsm.sample(policy, n * reps, path, "sde", ts=ts[i:], sde_window=(0, 1), x_init=xs,
                      seed=3, return_trajectory=True)
    lp_theta, mu_theta = rsm.log_prob(policy, path, xs, traj.xs[1], i, ts, "sde")
    lp_ref, mu_ref = rsm.log_prob(ref, path, xs, traj.xs[1], i, ts, "sde")
    std = rsm.step_coefficients(path, ts, "sde")[i]["std"]
    closed = (((mu_theta - mu_ref) ** 2).sum(1) / (2 * std**2)).reshape(n, reps)[:, 0]
    diff = (lp_theta - lp_ref).reshape(n, reps)
    mc, se = diff.mean(1), diff.std(1) / np.sqrt(reps)
    assert np.all(np.abs(mc - closed) < 5 * se + 1e-12), (mc, closed, se)


def test_adjoint_matching_equals_its_control_regression():
    """Adjoint Matching's loss in control form, (2(1-t)/t) |v_theta - v_ref + (t/(1-t)) a_t|^2
    (AM with memoryless g^2 = 2t/(1-t), written for rectified flow), with the lean adjoint
    a_S = grad r(x0)/alpha, a_i = (d mu_ref(x_i) / d x_i)^T a_{i+1} recomputed here from finite-
    difference Jacobians of the reference and the SDE formulas of THEORY.md §2.2 (not rsm's VJP)."""
    policy, ref = make_models(12)
    reward = rsm.rewards.quadratic([1.0, -0.5], scale=0.8)
    alpha = 0.7
    trainer = rsm.Trainer(policy, ref, reward, "adjoint-matching-rsm", batch_size=2, group_size=2,
                          steps=5, grid="uniform", alpha=alpha)
    batch = trainer.rollout()
    move_policy(policy, 6)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows, states = trainer.ts, with_times(batch["rows"], trainer.ts), batch["states"]
    a_noise = 2 ** 0.5
    x0 = batch["x0"]
    a = -(x0 - np.array([1.0, -0.5])) * 0.8 / alpha
    adjoint = {}
    h = 1e-6
    for i in range(len(ts) - 2, -1, -1):
        cx, cu, std, _, _ = flow_sde_step(ts, i, a_noise)

        def mean_ref(x):
            return cx * x - cu * np.from_dlpack(ref.forward(x, ts[i]))

        new_a = np.zeros_like(a)
        for d in range(2):
            e = np.zeros(2)
            e[d] = h
            jac_col = (mean_ref(states[i] + e) - mean_ref(states[i] - e)) / (2 * h)  # d mu / d x_d
            new_a[:, d] = (jac_col * a).sum(1)
        a = new_a
        adjoint[i] = a
    u_ref = outputs(ref, rows)

    def original(us):
        def term(k, u):
            t = ts[rows[k]["step"]]
            resid = (u - u_ref[k]) + (t / (1 - t)) * adjoint[rows[k]["step"]]
            return 2 * (1 - t) / t * np.mean(resid**2, axis=1)
        return sample_mean(us, term)

    g_orig = original_gradient(policy, rows, original)
    assert_grad_close(g_engine, g_orig)


@pytest.mark.parametrize("variant", ["preset", "base_weight_kl", "perturbed"])
def test_rsm_zo_diffusion_equals_matching_on_pcpo_branches(variant):
    """The diffusion zeroth-order redesign (THEORY.md §9.3): DDIM root, single-step branches with
    PCPO's std (w = 4.5, §6.3.6), 'matching' hinge with PCPO's constant weight w' = 4.5 / 8.70575,
    per-element means, rows x k_avg / k_i. Checked independently of the engine: each branch step's
    std is PCPO's closed form from the VP schedule, the recorded next state is mu_old + std z and its
    log-prob the closed-form Gaussian with that std; the gradient equals the original objective's.
    'base_weight_kl': reweight 'base' (w = |K| / std of the PCPO step, K = -(c1 - c2) with
    c2 = sqrt(1 - ab' - std^2)) and a KL anchor beta |K (u - u_ref)|^2 / (2 std^2) per row."""
    policy, ref = make_models(13)
    reward = rsm.rewards.quadratic([0.5, -0.5])
    eps, beta = 1e-3, 0.3
    budget = [3, 0, 2, 0, 3]
    extra = {"reweight": "base", "kl": beta} if variant == "base_weight_kl" else {}
    if variant == "perturbed":   # an anchor term large enough to see, on every candidate row
        extra = {"kl_anchor": 0.5, "kl_anchor_max_ratio": 1.0}
    trainer = rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=2, clip_eps=eps,
                          budget=budget, steps=10, grid="uniform", path=rsm.VPPath("linear"), **extra)
    batch = trainer.rollout()
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        i = r["step"]
        std, c1 = pcpo_std(ts, i)
        _, _, std_ddpm = ddpm_step(ts, i)
        assert abs(std / std_ddpm - 1) > 0.05                 # PCPO's std, not DDPM's
        assert trainer.sde[i]["std"] == pytest.approx(std, rel=1e-12)
        ab, ab_next = vp_linear_abar(ts[i]), vp_linear_abar(ts[i + 1])
        x0 = (r["x"] - np.sqrt(1 - ab) * r["u_old"]) / np.sqrt(ab)
        mean_old = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next - std**2) * r["u_old"]
        np.testing.assert_allclose(mean_old + std * r["noise"], r["x_next"], rtol=1e-10, atol=1e-12)
        lp = np.sum(-((r["x_next"] - mean_old) ** 2) / (2 * std**2) - np.log(std)
                    - 0.5 * np.log(2 * np.pi), axis=1)
        np.testing.assert_allclose(r["log_prob"], lp, rtol=1e-10, atol=1e-10)
    assert rsm.check_on_policy(trainer)["max_abs_log_ratio"] == 0.0
    if variant == "perturbed":
        move_policy(policy, 14)
    g_engine, stats = trainer.loss_and_grad(batch)
    active = [k for k in budget if k > 0]
    k_avg = sum(active) / len(active)
    n_signal = max(batch["mask"].sum(), 1)
    u_ref = outputs(ref, rows)
    # ODE KL-anchor rows (§9.3): root states at the zero-k non-terminal steps 1 and 3 (2 roots
    # each); the preset keeps max(1, int(0.1 x 16 transition rows)) = 1 of the 4, seeded
    anchors = with_times(batch["anchor_rows"], ts)
    assert {a["step"] for a in anchors} <= {1, 3}
    assert sum(len(a["x"]) for a in anchors) == (4 if variant == "perturbed" else 1)
    for a in anchors:   # one DDIM step from an anchor state lands on the next branch's root state
        if variant == "perturbed":
            break
        i = a["step"]
        eps_hat = np.from_dlpack(policy.forward(a["x"], ts[i]))
        ab, ab_next = vp_linear_abar(ts[i]), vp_linear_abar(ts[i + 1])
        x0 = (a["x"] - np.sqrt(1 - ab) * eps_hat) / np.sqrt(ab)
        nxt = [r for r in rows if r["step"] == i + 1][0]
        root_next = nxt["x"][:: budget[i + 1]]
        j = int(np.argmin(np.abs(root_next[:, 0] - (np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps_hat)[0, 0])))
        np.testing.assert_allclose(np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps_hat,
                                   root_next[j:j + len(a["x"])], rtol=1e-10, atol=1e-12)
    beta_anchor = 0.5 if variant == "perturbed" else 8e-5
    u_ref_anchor = outputs(ref, anchors)
    n_anchor = sum(len(a["x"]) for a in anchors)

    def original(us):
        # beta_anchor x mean over the anchor rows of (1/2) mean(4.5^2 (eps - eps_ref)^2)
        total = sum(beta_anchor * np.sum(0.5 * np.mean((4.5 * (u - ur)) ** 2, axis=1)) / n_anchor
                    for u, ur in zip(us[len(rows):], u_ref_anchor)) * n_signal
        for r, u, ur in zip(rows, us, u_ref):
            std, c1 = pcpo_std(ts, r["step"])
            K = c1 - np.sqrt(1 - vp_linear_abar(ts[r["step"] + 1]) - std**2)   # |K| of the PCPO step
            w = K / std if variant == "base_weight_kl" else 4.5 / 8.70575076181
            dv = u - r["u_old"]
            T = 0.5 * np.mean((w * dv) ** 2, axis=1) + np.mean(w * dv * r["noise"], axis=1)
            adv = batch["adv"][r["traj"]] * batch["mask"][r["traj"]]
            row = np.maximum(eps * np.abs(adv) + adv * T, 0)
            if variant == "base_weight_kl":
                row = row + beta * np.mean((K * (u - ur)) ** 2, axis=1) / (2 * std**2)
            total += np.sum(row * (k_avg / budget[r["step"]]))
        return total / n_signal

    g_orig = original_gradient(policy, rows + anchors, original)
    assert_grad_close(g_engine, g_orig)
    if variant == "perturbed":
        g_no_anchor = original_gradient(policy, rows, original)
        assert np.linalg.norm(g_orig - g_no_anchor) > 1e-3 * np.linalg.norm(g_orig)
        assert 0 < np.mean(list(stats["clip_fraction_per_step"].values())) < 1  # both kinds of rows


def test_rsm_zo_diffusion_grids_without_pcpo_std():
    """PCPO's std needs (1 + w^2) sigma'^2 >= c1^2: a grid too coarse for it is refused at
    construction, naming the step; the VP step into t = 0 has std 0 under PCPO as under DDPM
    (no density), so a budget that branches there is refused too, naming the step."""
    policy, ref = make_models(13)
    reward = rsm.rewards.quadratic([0.5, -0.5])
    with pytest.raises(ValueError, match=r"PCPO std undefined at step 0 \(t=1 -> 0\.83"):
        rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=2, budget=[0, 0, 3],
                    steps=6)
    coef = rsm.step_coefficients(rsm.VPPath("linear"), rsm.time_grid(8), "ddpm", pcpo_weight=4.5)
    assert coef[-1]["std"] == 0.0 and coef[-2]["std"] > 0
    with pytest.raises(ValueError, match=r"branches at step\(s\) \[7\], where the stochastic sampler has std 0"):
        rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=2,
                    budget=[3, 0, 0, 0, 0, 0, 0, 3], steps=8)
    trainer = rsm.Trainer(policy, ref, reward, "rsm-zo-diffusion", batch_size=2,
                          budget=[3, 0, 0, 0, 0, 0, 3], steps=8)   # the step before t = 0 is fine
    assert [r["step"] for r in trainer.rollout()["rows"]] == [0, 6]


# ---- the rest of the zoo: Branch-GRPO, SQDF, Residual nabla-DB, ReFL, PCPO-reweight (diffusion) ----

def grad_by_differences(fn, x, h=1e-6):
    """Central differences of a per-row scalar function fn(x[n, D]) -> [n] in each coordinate."""
    return np.stack([(fn(x + h * e) - fn(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], axis=1)


def quadratic_reward(x, center, scale=1.0):
    """rsm.rewards.quadratic written out: r(x) = -scale |x - center|^2 / 2."""
    return -0.5 * scale * np.sum((x - np.asarray(center)) ** 2, axis=1)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_branch_grpo_equals_ppo_on_tree_nodes(perturb):
    """Branch-GRPO (THEORY.md §6.3.8, §7.2): a tree of SDE transitions; split points at steps 0 and
    2 (5 steps, split=2, branch=2) so every root has 2, 2, 4, 4 distinct transitions at steps 0..3
    (the step into t = 0 is not trained). The advantage of a transition is that of the child node
    it reaches: the mean reward of the node's leaves, normalised among the nodes of the same root
    and depth (population std + 1e-4, zero-std groups masked, clip 5); the loss is the PPO clipped
    surrogate on the exact log-ratio, averaged over the signal rows."""
    policy, ref = make_models(15)
    center, eps, a = [1.0, -0.5], 0.05, 0.7
    roots, leaves = 3, 4
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center), "branch-grpo-rsm", batch_size=roots,
                          group_size=leaves, split=2, branch=2, steps=5, grid="uniform", clip_eps=eps)
    batch = trainer.rollout()
    nodes_at = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4}         # distinct nodes per root at depth d = t index
    rows = with_times(batch["rows"], trainer.ts)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert batch["nfe"] == roots * (2 + 2 + 4 + 4 + 4)  # shared prefixes are evaluated once
    for r in rows:
        assert len(r["x"]) == roots * nodes_at[r["step"] + 1]
    # siblings share their parent's state; cousins do not
    np.testing.assert_array_equal(rows[2]["x"][0], rows[2]["x"][1])
    assert not np.array_equal(rows[2]["x"][1], rows[2]["x"][2])
    np.testing.assert_array_equal(rows[0]["x"][0], rows[0]["x"][1])

    r_leaf = quadratic_reward(batch["x0"], center).reshape(roots, leaves)
    adv, mask = {}, {}
    for d, n_nodes in nodes_at.items():
        node_r = r_leaf.reshape(roots, n_nodes, leaves // n_nodes).mean(2)
        std = node_r.std(1, keepdims=True)
        A = np.clip((node_r - node_r.mean(1, keepdims=True)) / (std + 1e-4), -5, 5)
        keep = np.broadcast_to(std > 0, A.shape)
        adv[d], mask[d] = np.where(keep, A, 0.0).ravel(), keep.ravel()
    assert all(mask[d].all() for d in nodes_at)          # distinct leaves: every group has signal
    if perturb:
        move_policy(policy, 16)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts = trainer.ts
    n_signal = sum(mask[r["step"] + 1].sum() for r in rows)

    def original(us):
        total = 0.0
        for r, u in zip(rows, us):
            cx, cu, std, _, _ = flow_sde_step(ts, r["step"], a)
            mean, mean_old = cx * r["x"] - cu * u, cx * r["x"] - cu * r["u_old"]
            rho = np.exp(logpdf_mean(r["x_next"], mean, std) - logpdf_mean(r["x_next"], mean_old, std))
            A = adv[r["step"] + 1]
            total += np.sum(np.maximum(-A * rho, -A * np.clip(rho, 1 - eps, 1 + eps)))
        return total / n_signal

    assert_grad_close(g_engine, original_gradient(policy, rows, original))


def branch_grpo_reference(rows, leaf_reward, roots, splits, steps, a, ts, *, fusion="mean",
                          adv_std="population", depths=(), width=0, ratio=0.5, trained=None):
    """Branch-GRPO as the authors' release computes it (github.com/Fredreic1849/BranchGRPO,
    train_branchgrpo_flux.py), on an explicit tree of nodes with parents, from the complete
    (unpruned) rows of a recorded tree: node rewards bottom-up (mean of the leaf descendants, or
    softmax over the children of the per-element-mean log-probability of the transition into each
    child), advantages per (root, depth), the training samples in depth-first order, then depth
    pruning (child depths) and width pruning (1: per last-split chain keep the best
    max(1, int(n ratio)); 2: keep the best and worst of max(2, int(n ratio))).
    Returns ({(step, node): advantage}, {(step, node): signal}, kept [(step, node)])."""
    by_step = {r["step"]: r for r in rows}
    counts = [1 * roots] + [len(by_step[i]["x"]) if i in by_step else None for i in range(steps)]
    counts[steps] = len(leaf_reward)
    for i in range(steps):                                    # node counts at every depth
        if counts[i + 1] is None:
            counts[i + 1] = counts[i] * (2 if i in splits else 1)
    parent = {(d + 1, j): (d, j // 2 if d in splits else j) for d in range(steps) for j in range(counts[d + 1])}
    children = {}
    for child, par in parent.items():
        children.setdefault(par, []).append(child)
    reward = {(steps, j): leaf_reward[j] for j in range(counts[steps])}

    def edge_lp(child):
        d, j = child
        r = by_step[d - 1]
        cx, cu, std, _, _ = flow_sde_step(ts, d - 1, a)
        return logpdf_mean(r["x_next"][j:j + 1], cx * r["x"][j:j + 1] - cu * r["u_old"][j:j + 1], std)[0]

    def leaves_below(node):
        if node[0] == steps:
            return [node]
        return [leaf for c in children[node] for leaf in leaves_below(c)]

    for d in range(steps - 1, -1, -1):
        for j in range(counts[d]):
            kids = children[(d, j)]
            if fusion == "mean":
                reward[(d, j)] = np.mean([reward[leaf] for leaf in leaves_below((d, j))])
            elif len(kids) == 1:
                reward[(d, j)] = reward[kids[0]]
            else:
                lp = np.array([edge_lp(c) for c in kids])
                w = np.exp(lp - lp.max())
                reward[(d, j)] = float(np.sum(w / w.sum() * np.array([reward[c] for c in kids])))
    adv, signal = {}, {}
    for d in range(1, steps + 1):
        per_root = counts[d] // roots
        for root in range(roots):
            nodes = [(d, root * per_root + k) for k in range(per_root)]
            r = np.array([reward[n] for n in nodes])
            std = r.std(ddof=1 if adv_std == "sample" else 0) if len(r) > 1 else 0.0
            A = np.clip((r - r.mean()) / (std + 1e-4), -5, 5) if std > 0 else np.zeros_like(r)
            for n, value in zip(nodes, A):
                adv[(d - 1, n[1])], signal[(d - 1, n[1])] = value, std > 0
    samples = []                                               # the authors' depth-first walk

    def walk(node):
        for c in children.get(node, []):
            samples.append((node[0], c[1]))
            walk(c)

    for root in range(roots):
        walk((0, root))
    samples = [s for s in samples if s[0] in trained and s[0] + 1 not in set(depths)]
    if width:
        last = max(splits)
        late = [s for s in samples if s[0] > last]
        kept = [s for s in samples if s[0] <= last]
        if width == 1:
            groups = {}
            for s in late:                                     # chain = node made by the last split
                groups.setdefault(s[1], []).append(s)
            for g in groups.values():
                kept += sorted(g, key=lambda s: adv[s], reverse=True)[:max(1, int(len(g) * ratio))]
        else:
            order = sorted(late, key=lambda s: adv[s], reverse=True)
            keep = max(2, int(len(order) * ratio))
            kept += order[:keep // 2] + order[-(keep - keep // 2):]
        samples = kept
    return adv, signal, samples


@pytest.mark.parametrize("opts", [
    {"fusion": "path_prob"},
    {"fusion": "path_prob", "adv_ddof": 1, "width_pruning": 1},
    {"adv_ddof": 1, "depth_pruning": [2], "width_pruning": 2, "width_pruning_ratio": 0.4},
    {"fusion": "path_prob", "depth_pruning": [6, 7], "depth_pruning_slide": 1, "depth_pruning_stop": 5},
], ids=["path_prob", "path_prob-sample_std-width1", "sample_std-depth-width2", "depth_slide"])
def test_branch_grpo_fusion_and_pruning_equal_the_authors_objective(opts):
    """Branch-GRPO's options (rsm.tree) against an independent implementation of the authors'
    algorithm on the same recorded tree (7 steps, splits at steps 0 and 3, 4 leaves per root):
    the node advantages, the set of transitions that reach the loss after depth / width pruning,
    and the parameter gradient of the PPO surrogate over them (theta != theta_old), averaged over
    the signal rows. The tree is recorded once more without pruning (same seed: same tree) for the
    reference, which needs every transition."""
    policy, ref = make_models(19)
    center, eps, a = [1.0, -0.5], 0.05, 0.7
    roots, steps, splits = 3, 7, [0, 3]
    common = dict(batch_size=roots, group_size=4, split=2, branch=2, steps=steps, grid="uniform",
                  clip_eps=eps)
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center), "branch-grpo-rsm", **common, **opts)
    trainer.iteration = 1                   # sliding window: shift (1 + 1) // 1 = 2, capped at 6 - 5
    full = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center), "branch-grpo-rsm", **common)
    full.iteration = 1
    batch, whole = trainer.rollout(), full.rollout()
    np.testing.assert_array_equal(batch["x0"], whole["x0"])
    ts = trainer.ts
    depths = opts.get("depth_pruning", [])
    if opts.get("depth_pruning_slide"):
        depths = [d - 1 for d in depths]
    adv, signal, kept = branch_grpo_reference(
        whole["rows"], quadratic_reward(whole["x0"], center), roots, splits, steps, a, ts,
        fusion=opts.get("fusion", "mean"),
        adv_std="sample" if opts.get("adv_ddof", 0) else "population", depths=depths,
        width=opts.get("width_pruning", 0), ratio=opts.get("width_pruning_ratio", 0.5),
        trained=range(steps - 1))
    offsets = batch["tree"]["offsets"]
    for (i, j), value in adv.items():
        assert batch["adv"][offsets[i + 1] + j] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert batch["mask"][offsets[i + 1] + j] == signal[(i, j)]
    engine_kept = sorted((r["step"], int(k - offsets[r["step"] + 1])) for r in batch["rows"] for k in r["traj"])
    assert engine_kept == sorted(kept)
    all_rows = sum(len(r["traj"]) for r in whole["rows"])
    if opts.get("width_pruning") or depths:
        assert len(kept) < all_rows                          # something was pruned
    move_policy(policy, 20)
    g_engine, _ = trainer.loss_and_grad(batch)
    blocks = []
    for r in with_times(whole["rows"], ts):
        j = np.array(sorted(k for i, k in kept if i == r["step"]), dtype=np.int64)
        if len(j):
            blocks.append({"step": r["step"], "t": r["t"], "node": j, "x": r["x"][j],
                           "x_next": r["x_next"][j], "u_old": r["u_old"][j]})
    n_signal = sum(signal[s] for s in kept)

    def original(us):
        total = 0.0
        for r, u in zip(blocks, us):
            cx, cu, std, _, _ = flow_sde_step(ts, r["step"], a)
            rho = np.exp(logpdf_mean(r["x_next"], cx * r["x"] - cu * u, std)
                         - logpdf_mean(r["x_next"], cx * r["x"] - cu * r["u_old"], std))
            A = np.array([adv[(r["step"], j)] for j in r["node"]])
            total += np.sum(np.maximum(-A * rho, -A * np.clip(rho, 1 - eps, 1 + eps)))
        return total / n_signal

    assert_grad_close(g_engine, original_gradient(policy, blocks, original))


def test_branch_grpo_options_fusion_weights_and_pruning_rules():
    """rsm.tree on small hand-checked cases: path-probability fusion is the softmax of the child
    log-probabilities (invalid children left out), the mean fusion the mean of the valid leaves;
    the sliding depth window and its stop; the options are validated by name."""
    from rsm import tree

    distinct = [1, 2, 2, 4]                       # one root: split at steps 0 and 2
    r = np.array([1.0, 3.0, -2.0, 5.0])
    lp = [np.log([0.25, 0.75]), np.zeros(2), np.log([0.5, 0.5, 0.9, 0.1])]
    ok = np.array([True, True, True, False])
    fused, fok = tree.fuse_rewards(distinct, r, ok, "path_prob", lp)
    assert fused[2] == pytest.approx([2.0, -2.0]) and fok[2].all()   # the invalid leaf: left out
    assert fused[1] == pytest.approx([2.0, -2.0])
    assert fused[0] == pytest.approx([0.25 * 2.0 + 0.75 * -2.0])
    mean, _ = tree.fuse_rewards(distinct, r, ok, "mean")
    assert mean[0] == pytest.approx([2.0 / 3.0]) and mean[1] == pytest.approx([2.0, -2.0])
    cfg = {"depth_pruning": [9, 10], "depth_pruning_slide": 3}
    # iteration n shifts the window by (n + 1) // 3 depths until its shallowest depth (9) reaches
    # the last split step (6): at most 3
    shifts = [8 - min(tree.depth_pruned_steps(cfg, [0, 3, 6], n)) for n in range(15)]
    assert shifts == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]
    assert tree.depth_pruned_steps({"depth_pruning": [3]}, [0], 100) == {2}
    policy, ref = make_models(0)
    for knob, value, msg in (("fusion", "max", "fusion"), ("adv_std", "unbiased", "adv_std"),
                             ("adv_ddof", 2, "adv_ddof"), ("zero_std", "drop", "zero_std.*tree"),
                             ("depth_pruning", [0], "depth_pruning"), ("depth_pruning", [11], "depth_pruning"),
                             ("depth_pruning_slide", -1, "depth_pruning_slide"),
                             ("width_pruning", 3, "width_pruning"),
                             ("width_pruning_ratio", 0.0, "width_pruning_ratio")):
        with pytest.raises(ValueError, match=msg):
            rsm.Trainer(policy, ref, rsm.rewards.quadratic([0.0, 0.0]), "branch-grpo-rsm",
                        batch_size=1, group_size=8, **{knob: value})
    from rsm.finetune import influence

    rows = influence("branch-grpo-rsm", depth_pruning=[2, 3])["rows_per_root"]
    assert rows[1] == rows[2] == 0 and rows[0] > 0 and rows[3] > 0


def test_sqdf_equals_kl_minus_discounted_soft_q_at_theta_old():
    """SQDF (THEORY.md §6.3.2): per transition alpha KL_i - gamma_d lambda Q(x'), with the next state
    reparameterised x' = mu_theta(x) + std z (z the recorded noise) and the training-free soft-Q
    Q(x') = r(x0_hat_ref(x', t')) (Tweedie of the reference, DDPM's x0 = (x - sqrt(1 - ab) eps) /
    sqrt(ab)), gamma_d = discount^(S-1-i); per-element means (the row divided by D), mean over rows.
    The engine regresses onto the rollout's grad Q, so the two gradients agree at theta = theta_old
    (checked to 1e-5) and differ once the policy has moved x' (checked too)."""
    policy, ref = make_models(17)
    center, scale = [0.5, 1.0], 0.3
    alpha, discount, lam = 0.5, 0.8, 0.7
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center, scale), "sqdf-rsm", batch_size=2,
                          group_size=2, steps=4, alpha=alpha, discount=discount, reward_scale=lam)
    batch = trainer.rollout()
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    S = len(ts) - 1
    u_ref = outputs(ref, rows)

    def original(us):
        def term(k, u):
            r, i = rows[k], rows[k]["step"]
            cx, cu, std = ddpm_step(ts, i)
            mu, mu_ref = cx * r["x"] - cu * u, cx * r["x"] - cu * u_ref[k]
            x_next = mu + std * r["noise"]
            ab_next = vp_linear_abar(ts[i + 1])
            eps_ref = np.from_dlpack(ref.forward(x_next, ts[i + 1]))
            q = quadratic_reward((x_next - np.sqrt(1 - ab_next) * eps_ref) / np.sqrt(ab_next), center, scale)
            kl = np.sum((mu - mu_ref) ** 2, axis=1) / (2 * std**2)
            return (alpha * kl - discount ** (S - 1 - i) * lam * q) / u.shape[1]
        return sample_mean(us, term)

    # on policy the reparameterised next state is the recorded one
    for r in rows:
        cx, cu, std = ddpm_step(ts, r["step"])
        np.testing.assert_allclose(cx * r["x"] - cu * r["u_old"] + std * r["noise"], r["x_next"], rtol=1e-12, atol=1e-12)
    g_engine, _ = trainer.loss_and_grad(batch)
    assert_grad_close(g_engine, original_gradient(policy, rows, original))
    move_policy(policy, 18)          # first order only: x' moves with theta in the original
    g_engine, _ = trainer.loss_and_grad(batch)
    g_orig = original_gradient(policy, rows, original)
    assert np.linalg.norm(g_engine - g_orig) / np.linalg.norm(g_orig) > 1e-4


def test_residual_ndb_equals_forward_residual_with_next_state_gradient():
    """Residual nabla-DB, pruned (THEORY.md §6.3.3, §9.5): R = kappa (mu_theta - mu_ref)/std^2 -
    lambda alpha_bar(t') g with kappa = 1 and g = grad_{x'} r(x0_hat(x')) at the recorded next
    state through the rollout policy's Tweedie jump (FO-next, recomputed here by differences of
    x' -> r((x' - sqrt(1 - ab') eps_old(x')) / sqrt(ab'))), plus reg |eps_theta - eps_old|^2;
    per-element means, mean over rows; at theta != theta_old."""
    policy, ref = make_models(19)
    center, scale, lam, reg = [1.0, -1.0], 0.4, 0.6, 2.0
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center, scale), "residual-ndb-rsm",
                          batch_size=2, group_size=2, steps=4, reward_scale=lam, reg=reg)
    policy_old = policy.copy()
    batch = trainer.rollout()
    assert batch["reward_calls"] == 1 + len(batch["rows"])
    move_policy(policy, 20)
    g_engine, _ = trainer.loss_and_grad(batch)
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    u_ref = outputs(ref, rows)
    g_next = []
    for r in rows:
        t_next = ts[r["step"] + 1]
        ab = vp_linear_abar(t_next)

        def r_of_next(x, t_next=t_next, ab=ab):
            eps = np.from_dlpack(policy_old.forward(x, t_next))
            return quadratic_reward((x - np.sqrt(1 - ab) * eps) / np.sqrt(ab), center, scale)

        g_next.append(grad_by_differences(r_of_next, r["x_next"]))

    def original(us):
        def term(k, u):
            r = rows[k]
            cx, cu, std = ddpm_step(ts, r["step"])
            mu, mu_ref = cx * r["x"] - cu * u, cx * r["x"] - cu * u_ref[k]
            resid = (mu - mu_ref) / std**2 - lam * vp_linear_abar(ts[r["step"] + 1]) * g_next[k]
            return np.mean(resid**2, axis=1) + reg * np.mean((u - r["u_old"]) ** 2, axis=1)
        return sample_mean(us, term)

    assert_grad_close(g_engine, original_gradient(policy, rows, original))


@pytest.mark.parametrize("path_kind", ["flow", "vp"])
def test_refl_gradient_is_the_one_step_pathwise_reward_gradient(path_kind):
    """ReFL: from the rollout's state x_t at a late step, x0_hat = x_t - t u (flow) or
    (x_t - sqrt(1 - ab) u) / sqrt(ab) (VP), loss -lambda mean r(x0_hat(theta)); the engine's
    parameter gradient equals directional central differences of that loss in theta."""
    policy, ref = make_models(21)
    center, scale, lam = [1.0, -0.5], 0.7, 1.3
    path = rsm.FlowPath() if path_kind == "flow" else rsm.VPPath("linear")
    # rsm's earlier loss -lambda r (reward_hinge=None; the released hinge: tests/test_released.py)
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(center, scale), "refl", path=path,
                          batch_size=2, group_size=3, steps=8, late_steps=3, reward_scale=lam,
                          reward_hinge=None, grid="uniform")
    batch = trainer.rollout()
    (row,) = batch["rows"]
    assert 8 - 3 <= row["step"] < 8
    g_engine, stats = trainer.loss_and_grad(batch)
    t = trainer.ts[row["step"]]
    params = np.from_dlpack(policy.params)
    base = params.copy()

    def x0_hat(u):
        if path_kind == "flow":
            return row["x"] - t * u
        ab = vp_linear_abar(t)
        return (row["x"] - np.sqrt(1 - ab) * u) / np.sqrt(ab)

    def loss(theta):
        params[:] = theta
        u = np.from_dlpack(policy.forward(row["x"], t)).copy()
        params[:] = base
        return -lam * quadratic_reward(x0_hat(u), center, scale).mean()

    assert stats["loss"] == pytest.approx(loss(base), rel=1e-12)
    assert_directional_derivatives(g_engine, loss, base, seed=1)
    steps = set()
    for it in range(8):                                  # the late step is redrawn per iteration
        trainer.iteration = it
        steps.add(trainer.rollout()["rows"][0]["step"])
    assert len(steps) > 1 and steps <= {5, 6, 7}


def pcpo_std(ts, i, w=4.5):
    """PCPO's DDPM std (THEORY.md §6.3.6): (w c1 + sqrt((1 + w^2)(1 - ab') - c1^2)) / (1 + w^2)."""
    ab, ab_next = vp_linear_abar(ts[i]), vp_linear_abar(ts[i + 1])
    c1 = np.sqrt((1 - ab) * ab_next / ab)
    return (w * c1 + np.sqrt((1 + w**2) * (1 - ab_next) - c1**2)) / (1 + w**2), c1


def test_pcpo_sampler_std_T17():
    """T17: the implemented root satisfies (c1 + c2)/std = w with c2 = sqrt(1 - ab' - std^2) (not
    (c1 - c2)/std = w), and rsm's PCPO-DDPM steps use exactly that std."""
    path, ts = rsm.VPPath("linear"), rsm.time_grid(12)
    coef = rsm.step_coefficients(path, ts, "ddpm", pcpo_weight=4.5)
    for i in range(len(ts) - 2):
        std, c1 = pcpo_std(ts, i)
        c2 = np.sqrt(1 - vp_linear_abar(ts[i + 1]) - std**2)
        assert (c1 + c2) / std == pytest.approx(4.5, rel=1e-12)
        assert coef[i]["std"] == pytest.approx(std, rel=1e-12)
        assert coef[i]["K"] == pytest.approx(-(c1 - c2), rel=1e-12)   # mu = ... - (c1 - c2) eps
    assert 4.5 / 8.70575076181 == pytest.approx(0.51690, abs=1e-5)
    assert rsm.methods.get("pcpo-diffusion")["loss_weight"] == pytest.approx(0.5168997, rel=1e-6)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_pcpo_diffusion_equals_constant_weight_noise_matching(perturb):
    """PCPO-reweight (diffusion), 'uw-sigma' (THEORY.md §6.3.6, §9.3): DDPM trajectories with PCPO's
    std (the recorded next states are mu_old + std_PCPO z, checked), the noise-matching hinge
    max(eps |A| + A T, 0) with T = 1/2 mean((w' d eps)^2) + mean(w' d eps z) and the constant
    w' = 4.5 / 8.70575, averaged over the signal rows; no KL."""
    policy, ref = make_models(22)
    eps = 0.02
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0.5, -0.5]), "pcpo-diffusion",
                          batch_size=2, group_size=3, steps=12, clip_eps=eps)
    batch = trainer.rollout()
    ts, rows = trainer.ts, with_times(batch["rows"], trainer.ts)
    for r in rows:
        std, c1 = pcpo_std(ts, r["step"])
        ab, ab_next = vp_linear_abar(ts[r["step"]]), vp_linear_abar(ts[r["step"] + 1])
        x0 = (r["x"] - np.sqrt(1 - ab) * r["u_old"]) / np.sqrt(ab)
        mean_old = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next - std**2) * r["u_old"]
        np.testing.assert_allclose(mean_old + std * r["noise"], r["x_next"], rtol=1e-10, atol=1e-12)
    if perturb:
        move_policy(policy, 23)
    g_engine, stats = trainer.loss_and_grad(batch)
    w = 4.5 / 8.70575076181
    A = batch["adv"] * batch["mask"]
    n_signal = max(batch["mask"].sum() * len(rows), 1)

    def original(us):
        total = 0.0
        for r, u in zip(rows, us):
            d = u - r["u_old"]
            T = 0.5 * np.mean((w * d) ** 2, axis=1) + np.mean(w * d * r["noise"], axis=1)
            total += np.sum(np.maximum(eps * np.abs(A[r["traj"]]) + A[r["traj"]] * T, 0))
        return total / n_signal

    assert_grad_close(g_engine, original_gradient(policy, rows, original))


def test_zoo_registry_and_overrides():
    new = {"branch-grpo", "sqdf", "residual-ndb", "refl", "pcpo-diffusion"}
    assert new <= set(rsm.methods.names())
    table = {r["method"]: r for r in rsm.methods.table()}
    assert new <= set(table)
    assert table["branch-grpo"]["branching"] and table["branch-grpo"]["rollout"] == "tree"
    assert table["refl"]["family"] == "pathwise"
    for name, knob, value in (("branch-grpo", "branch", 3), ("sqdf", "discount", 0.5),
                              ("residual-ndb", "kappa", "sigma"), ("refl", "late_steps", 2),
                              ("pcpo-diffusion", "pcpo_weight", 2.0)):
        assert rsm.methods.get(name, **{knob: value})[knob] == value
    from rsm.finetune import influence

    h = influence("pcpo-diffusion")["h"]          # constant w' on every stochastic step: h = 1 there
    trained = h > 0
    assert np.ptp(h[trained]) < 1e-12 and trained.sum() == len(h) - 1
    sq = influence("sqdf-rsm", discount=0.5)            # kappa = (c1 - c2) gamma_d (THEORY.md §6.2)
    assert sq["kappa"][-2] == pytest.approx(abs(rsm.step_coefficients(
        rsm.VPPath("linear"), rsm.time_grid(20), "ddpm")[-2]["K"]) * 0.5, rel=1e-10)
