"""The RSM objective engine: cotangents against finite differences, and the reduction lemmas of
THEORY.md §5 (L2, L3, L4) as numerical identities on real sampler transitions."""
import numpy as np
import pytest

import rsm
from rsm.objective import group_advantages, objective, row_coefficients

R, D = 7, 3


def random_case(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((R, D)).astype(dtype)
    u_old = (u + 0.05 * rng.standard_normal((R, D))).astype(dtype)
    u_ref = (u + 0.3 * rng.standard_normal((R, D))).astype(dtype)
    psi = rng.standard_normal((R, D)).astype(dtype)
    noise = rng.standard_normal((R, D)).astype(dtype)
    coef = row_coefficients(R, conv=rng.uniform(-2, -0.3, R), space=rng.uniform(0.5, 2, R),
                            c1=rng.uniform(0.1, 2, R), gamma=rng.uniform(0.5, 2, R),
                            c2=rng.uniform(0, 1, R), adv=rng.standard_normal(R),
                            w=rng.uniform(0.2, 2, R), ratio_scale=rng.uniform(0.5, 1.5, R),
                            term_scale=rng.uniform(0.5, 2, R), post=rng.uniform(0.5, 2, R),
                            clip_eps=rng.uniform(0.01, 0.3, R), kl=rng.uniform(0, 0.5, R),
                            weight=rng.uniform(0.5, 1.5, R))
    return u, u_old, u_ref, psi, noise, coef


@pytest.mark.parametrize("form", ["score_matching", "ppo", "log_ratio", "matching"])
@pytest.mark.parametrize("mean_over_dims", [False, True])
@pytest.mark.parametrize("linear_only", [False, True])
def test_cotangent_matches_finite_differences(form, mean_over_dims, linear_only):
    if form == "score_matching" and linear_only:
        pytest.skip("linear_only applies to ratio forms")
    u, u_old, u_ref, psi, noise, coef = random_case(1)
    kwargs = dict(u_old=u_old, u_ref=u_ref, psi=psi, noise=noise, mean_over_dims=mean_over_dims,
                  linear_only=linear_only, normalizer=3.0)
    out = objective(form, u, coef, **kwargs)
    grad = np.from_dlpack(out["cotangent"])
    h = 1e-6
    fd = np.zeros_like(u)
    for i in range(R):
        for j in range(D):
            up, dn = u.copy(), u.copy()
            up[i, j] += h
            dn[i, j] -= h
            fd[i, j] = (objective(form, up, coef, **kwargs)["loss"] -
                        objective(form, dn, coef, **kwargs)["loss"]) / (2 * h)
    # central differences of a smooth function in float64: error ~h^2 + 1e-16/h ~ 1e-10; the
    # hinge/clip kinks are far from these random points (checked: no row sits within 1e-4 of one)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_finite_difference_checker_detects_a_wrong_gradient():
    u, u_old, u_ref, psi, noise, coef = random_case(2)
    out = objective("score_matching", u, coef, u_old=u_old, u_ref=u_ref, psi=psi)
    grad = np.from_dlpack(out["cotangent"]).copy()
    grad[0, 0] *= 1.01  # corrupt one entry: the comparison above must catch it
    h = 1e-6
    up, dn = u.copy(), u.copy()
    up[0, 0] += h
    dn[0, 0] -= h
    fd = (objective("score_matching", up, coef, u_old=u_old, u_ref=u_ref, psi=psi)["loss"] -
          objective("score_matching", dn, coef, u_old=u_old, u_ref=u_ref, psi=psi)["loss"]) / (2 * h)
    assert not np.isclose(grad[0, 0], fd, rtol=1e-6, atol=1e-8)


def test_score_matching_loss_formula():
    u, u_old, u_ref, psi, noise, coef = random_case(3)
    out = objective("score_matching", u, coef, u_old=u_old, u_ref=u_ref, psi=psi, normalizer=2.0)
    c = {name: coef[:, j] for j, name in enumerate(rsm.objective.ROW_FIELDS)}
    conv = c["conv"][:, None]
    e = (u - u_ref) / conv - c["gamma"][:, None] * psi
    o = (u - u_old) / conv
    rows = c["c1"] * c["space"] ** 2 * ((e**2).sum(1) + c["c2"] * (o**2).sum(1))
    rows += c["kl"] * 0.5 * c["w"] ** 2 * ((u - u_ref) ** 2).sum(1)
    assert out["loss"] == pytest.approx((c["weight"] * rows).sum() / 2.0, rel=1e-12)


def test_float32_agrees_with_float64():
    u, u_old, u_ref, psi, noise, coef = random_case(4)
    for form in ("score_matching", "ppo", "matching"):
        kw = dict(u_old=u_old, u_ref=u_ref, psi=psi, noise=noise)
        a = objective(form, u, coef, **kw)
        kw32 = {k: v.astype(np.float32) for k, v in kw.items()}
        b = objective(form, u.astype(np.float32), coef, **kw32)
        np.testing.assert_allclose(np.from_dlpack(b["cotangent"]), np.from_dlpack(a["cotangent"]),
                                   rtol=1e-4, atol=1e-5)


# ---- reduction lemmas on real sampler transitions ----------------------------------------------

@pytest.fixture(scope="module")
def flow_transition():
    """A Flow-GRPO SDE transition of a float64 MLP with non-zero weights: x -> x' at step 3."""
    path = rsm.FlowPath()
    model = rsm.MLP(2, 16, 2, seed=1, dtype="float64")
    params = np.from_dlpack(model.params)
    params[:] = np.random.default_rng(0).standard_normal(params.shape) * 0.3
    ts = rsm.time_grid(10, grid="sd3")
    traj = rsm.sample(model, 6, path, "sde", ts=ts, seed=4, return_trajectory=True)
    other = model.copy()
    np.from_dlpack(other.params)[:] += 0.01 * np.random.default_rng(1).standard_normal(params.shape)
    return path, model, other, ts, traj


def test_log_ratio_identity_T5(flow_transition):
    """THEORY.md §2.3: log pi_theta(x'|x) - log pi_old(x'|x) = -w z.du - (w^2/2)|du|^2, w = |K|/std."""
    path, model, other, ts, traj = flow_transition
    i = 3
    x, x_next = traj.xs[i], traj.xs[i + 1]
    lp_new, _ = rsm.log_prob(other, path, x, x_next, i, ts, "sde")
    lp_old, _ = rsm.log_prob(model, path, x, x_next, i, ts, "sde")
    coef_i = rsm.step_coefficients(path, ts, "sde")[i]
    w = abs(coef_i["K"]) / coef_i["std"]
    u_new = np.from_dlpack(other.forward(x, ts[i]))
    u_old = traj.outputs[i]
    z = traj.noises[i]
    out = objective("ppo", u_new, row_coefficients(6, w=w, adv=1.0, clip_eps=0.2), u_old=u_old,
                    noise=z)
    np.testing.assert_allclose(np.from_dlpack(out["log_ratio"]), lp_new - lp_old, rtol=1e-10, atol=1e-10)


def test_matching_and_log_ratio_have_equal_gradients_L4():
    """L4: the matching hinge and PCPO's log-ratio clip give the same gradient; PPO's is rho times it
    on unclipped rows (so equal at rho = 1)."""
    u, u_old, u_ref, psi, noise, coef = random_case(5)
    coef[:, rsm.objective.ROW_FIELDS.index("ratio_scale")] = 1.0
    coef[:, rsm.objective.ROW_FIELDS.index("term_scale")] = 1.0
    coef[:, rsm.objective.ROW_FIELDS.index("kl")] = 0.0
    coef[:, rsm.objective.ROW_FIELDS.index("clip_eps")] = 1e-4
    kw = dict(u_old=u_old, noise=noise)
    m = objective("matching", u, coef, **kw)
    lr = objective("log_ratio", u, coef, **kw)
    ppo = objective("ppo", u, coef, **kw)
    g_m, g_lr, g_ppo = (np.from_dlpack(o["cotangent"]) for o in (m, lr, ppo))
    act_m, act_lr = np.from_dlpack(m["active"]), np.from_dlpack(lr["active"])
    np.testing.assert_array_equal(act_m, act_lr)
    np.testing.assert_allclose(g_m, g_lr, rtol=1e-12, atol=1e-14)
    rho = np.exp(np.from_dlpack(ppo["log_ratio"]))
    both = act_lr & np.from_dlpack(ppo["active"])
    np.testing.assert_allclose(g_ppo[both], (rho[:, None] * g_lr)[both], rtol=1e-12)
    # at theta = theta_old (rho = 1) all three gradients coincide and no row is clipped
    m0 = objective("matching", u_old, coef, **kw)
    p0 = objective("ppo", u_old, coef, **kw)
    np.testing.assert_allclose(np.from_dlpack(m0["cotangent"]), np.from_dlpack(p0["cotangent"]), rtol=1e-12)
    # the matching - logratio loss difference is theta-independent (two different u)
    d1 = m["loss"] - lr["loss"]
    u2 = u_old + 0.5 * (u - u_old)
    d2 = objective("matching", u2, coef, **kw)["loss"] - objective("log_ratio", u2, coef, **kw)["loss"]
    rows_active_same = np.array_equal(np.from_dlpack(objective("matching", u2, coef, **kw)["active"]), act_m)
    if rows_active_same:
        assert d1 == pytest.approx(d2, rel=1e-9, abs=1e-12)


def _flow_row_constants(path, ts, i, noise_level=0.7):
    c = rsm.step_coefficients(path, ts, "sde", noise_level=noise_level)[i]
    t = c["t"]
    conv = -t / (1 - t)                  # v = conv * s + (x term): THEORY.md §2.2
    B = c["K"] * conv                    # d mu / d s
    return conv, B, c["std"], abs(c["K"]) / c["std"]


def test_shared_state_group_is_exact_rsm_L3(flow_transition):
    """L3: K children of one state with group-mean advantages (sum A = 0):
    grad of sum_k [A_k (-log rho_k) + beta KL_k]  ==  grad of the RSM loss with C1 = beta B^2/(2 std^2),
    gamma = 1/beta, Psi = (std / B) mean_k A_k z_k, anchor s_ref, C2 = 0 -- exactly, at any theta."""
    path, model, other, ts, traj = flow_transition
    i, K, beta = 4, 6, 0.04
    conv, B, std, w = _flow_row_constants(path, ts, i)
    rng = np.random.default_rng(7)
    x = np.repeat(traj.xs[i][:1], K, axis=0)       # one shared state
    u_old = np.from_dlpack(model.forward(x, ts[i]))
    u = np.from_dlpack(other.forward(x, ts[i]))     # theta != theta_old
    u_ref = u_old + 0.2 * rng.standard_normal(u_old.shape)
    z = rng.standard_normal(x.shape)
    rewards = rng.standard_normal(K)
    A = rewards - rewards.mean()
    # original objective, written independently: gradient w.r.t. u of each row
    du = u - u_old
    grad_orig = A[:, None] * (w * z + w**2 * du) + beta * w**2 * (u - u_ref)
    psi_bar = (std / B) * (A[:, None] * z).mean(0)
    coef = row_coefficients(K, conv=conv, c1=beta * B**2 / (2 * std**2), gamma=1 / beta)
    out = objective("score_matching", u, coef, u_ref=u_ref, psi=np.tile(psi_bar, (K, 1)))
    # the rows share u, so compare the summed gradient (what reaches the shared network output)
    np.testing.assert_allclose(np.from_dlpack(out["cotangent"]).sum(0), grad_orig.sum(0),
                               rtol=1e-10, atol=1e-12)


def test_reinforce_with_kl_is_rsm_at_theta_old_T10(flow_transition):
    """REINFORCE + KL per row: grad of (r - b)(-log rho) + alpha KL equals the RSM gradient with
    C1 = alpha B^2/(2 std^2), gamma = 1, Psi = (std/B)((r - b)/alpha) z at theta = theta_old
    (first order: the A |du|^2 term has zero gradient there, L3's 'signed C2')."""
    path, model, other, ts, traj = flow_transition
    i, alpha = 2, 0.5
    conv, B, std, w = _flow_row_constants(path, ts, i)
    x = traj.xs[i]
    n = x.shape[0]
    u_old = traj.outputs[i]
    rng = np.random.default_rng(3)
    u_ref = u_old + 0.1 * rng.standard_normal(u_old.shape)
    z = traj.noises[i]
    adv = rng.standard_normal(n)
    grad_orig = adv[:, None] * w * z + alpha * w**2 * (u_old - u_ref)
    coef = row_coefficients(n, conv=conv, c1=alpha * B**2 / (2 * std**2))
    psi = (std / B) * (adv / alpha)[:, None] * z
    out = objective("score_matching", u_old, coef, u_ref=u_ref, psi=psi)
    np.testing.assert_allclose(np.from_dlpack(out["cotangent"]), grad_orig, rtol=1e-10, atol=1e-12)
    # away from theta_old the two differ (by the gradient of the A |du|^2 term)
    u = np.from_dlpack(other.forward(x, ts[i]))
    out2 = objective("score_matching", u, coef, u_ref=u_ref, psi=psi)
    grad2 = adv[:, None] * (w * z + w**2 * (u - u_old)) + alpha * w**2 * (u - u_ref)
    assert not np.allclose(np.from_dlpack(out2["cotangent"]), grad2, rtol=1e-6)


def test_group_advantages_T14():
    """Flow-GRPO's stat tracker example: prompts [a, b, a, c, b, a], rewards 1..6."""
    adv, mask = group_advantages(np.arange(1.0, 7.0), [0, 1, 0, 2, 1, 0], eps=1e-4, adv_clip=5)
    ga = np.array([1.0, 3.0, 6.0])
    expected_a = (ga - ga.mean()) / (ga.std() + 1e-4)
    np.testing.assert_allclose(adv[[0, 2, 5]], expected_a, rtol=1e-12)
    np.testing.assert_allclose(adv[[1, 4]], [-1.5 / (1.5 + 1e-4), 1.5 / (1.5 + 1e-4)], rtol=1e-12)
    assert adv[3] == 0.0 and not mask[3] and mask[[0, 1, 2, 4, 5]].all()
    # clipping and centring
    adv, _ = group_advantages([0.0, 0.0, 0.0, 100.0], None, adv_clip=1.5)
    assert adv.max() == 1.5
    adv, _ = group_advantages([1.0, 2.0, 6.0], None, center_only=True)
    np.testing.assert_allclose(adv, [-2.0, -1.0, 3.0])
    with pytest.raises(FloatingPointError, match="rewards"):
        group_advantages([1.0, np.nan])


# ---- T8, T9, T13 (THEORY.md §12.3): the first-order reductions and GRPO-Guard's RatioNorm ----------

def _vp_linear_abar(t):
    """Continuous VP schedule of rsm.VPPath('linear'): beta from 0.1 to 20."""
    return np.exp(-(0.1 * t + 0.5 * 19.9 * t**2))


@pytest.mark.parametrize("t", [0.9, 0.5, 0.12])
def test_vgg_flow_velocity_regression_is_score_matching_T8(t):
    """T8: |v_theta - (v_ref - lambda eta g)|^2 == (t/(1-t))^2 |s_theta - s_ref - ((1-t)/t) lambda eta g|^2
    with s = -(x + (1 - t) v)/t (THEORY.md §2.2), and the engine's RSM loss in score units with
    conv = -t/(1-t), C1 = (t/(1-t))^2 returns the velocity-space loss."""
    rng = np.random.default_rng(int(t * 100))
    n, lam, eta = 5, 0.7, (1 - t) ** 2
    x, v, v_ref, g = (rng.standard_normal((n, 3)) for _ in range(4))
    path = rsm.FlowPath()
    s = np.from_dlpack(path.score(x, v, np.full(n, t)))
    s_ref = np.from_dlpack(path.score(x, v_ref, np.full(n, t)))
    np.testing.assert_allclose(s, -(x + (1 - t) * v) / t, rtol=1e-12, atol=1e-12)
    lhs = np.sum((v - (v_ref - lam * eta * g)) ** 2, axis=1)
    rhs = (t / (1 - t)) ** 2 * np.sum((s - s_ref - ((1 - t) / t) * lam * eta * g) ** 2, axis=1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    coef = row_coefficients(n, conv=-t / (1 - t), c1=(t / (1 - t)) ** 2)
    out = objective("score_matching", v, coef, u_ref=v_ref, psi=((1 - t) / t) * lam * eta * g)
    assert out["loss"] == pytest.approx(lhs.sum(), rel=1e-10)


@pytest.mark.parametrize("t,t_next", [(0.8, 0.75), (0.4, 0.35), (0.1, 0.05)])
def test_residual_db_is_score_matching_T9(t, t_next):
    """T9 (DDPM step of THEORY.md §2.1, written here from alpha_bar): with mu = sqrt(ab') x0_hat +
    sqrt(1 - ab' - std^2) eps and s = -eps/sqrt(1 - ab), mu_theta - mu_ref = Omega (s_theta - s_ref),
    Omega = (c1 - c2) sqrt(1 - ab), and
      |kappa (mu_theta - mu_ref)/std^2 - lambda a g|^2 == (kappa Omega/std^2)^2 |s_theta - s_ref - lambda a std^2/(kappa Omega) g|^2,
      |eps_theta - eps_old|^2 == (1 - ab) |s_theta - s_old|^2;
    the engine's RSM loss (score units, conv = -sqrt(1 - ab), C1 = (kappa Omega/std^2)^2, C2 =
    reg (1 - ab)/C1 toward s_old) equals the residual loss plus reg |eps_theta - eps_old|^2."""
    rng = np.random.default_rng(int(t * 100))
    n, kappa, lam, a, reg = 4, 0.8, 1.3, _vp_linear_abar(t_next), 2.5
    ab, ab_n = _vp_linear_abar(t), _vp_linear_abar(t_next)
    std = np.sqrt((1 - ab_n) / (1 - ab) * (1 - ab / ab_n))
    c1, c2 = np.sqrt((1 - ab) * ab_n / ab), np.sqrt(1 - ab_n - std**2)
    omega = (c1 - c2) * np.sqrt(1 - ab)
    x, eps, eps_ref, eps_old, g = (rng.standard_normal((n, 2)) for _ in range(5))

    def mean(e):
        return np.sqrt(ab_n) * (x - np.sqrt(1 - ab) * e) / np.sqrt(ab) + c2 * e

    def score(e):
        return -e / np.sqrt(1 - ab)

    np.testing.assert_allclose(mean(eps) - mean(eps_ref), omega * (score(eps) - score(eps_ref)), rtol=1e-10, atol=1e-12)
    resid = np.sum((kappa * (mean(eps) - mean(eps_ref)) / std**2 - lam * a * g) ** 2, axis=1)
    C1 = (kappa * omega / std**2) ** 2
    psi = lam * a * std**2 / (kappa * omega) * g
    np.testing.assert_allclose(resid, C1 * np.sum((score(eps) - score(eps_ref) - psi) ** 2, axis=1), rtol=1e-10)
    trust = np.sum((eps - eps_old) ** 2, axis=1)
    np.testing.assert_allclose(trust, (1 - ab) * np.sum((score(eps) - score(eps_old)) ** 2, axis=1), rtol=1e-10)
    # the step coefficients of rsm's DDPM sampler are these (K = -(c1 - c2) on eps)
    coef_i = rsm.step_coefficients(rsm.VPPath("linear"), np.array([t, t_next]), "ddpm")[0]
    assert coef_i["std"] == pytest.approx(std, rel=1e-10) and coef_i["K"] == pytest.approx(-(c1 - c2), rel=1e-10)
    coef = row_coefficients(n, conv=-np.sqrt(1 - ab), c1=C1, c2=reg * (1 - ab) / C1)
    out = objective("score_matching", eps, coef, u_ref=eps_ref, u_old=eps_old, psi=psi)
    assert out["loss"] == pytest.approx(np.sum(resid + reg * trust), rel=1e-10)


def test_grpo_guard_ratio_norm_T13(flow_transition):
    """T13: per-element means, log rho + mean(delta^2)/(2 std^2) == mean(z delta)/std (the linear
    part), delta = mu_theta - mu_old; GRPO-Guard's ratio is exp(linear part x std), which the
    engine's PPO form with linear_only and ratio_scale = std computes."""
    path, model, other, ts, traj = flow_transition
    i = 5
    x, x_next, z = traj.xs[i], traj.xs[i + 1], traj.noises[i]
    n, D = x.shape
    lp_new, mu_new = rsm.log_prob(other, path, x, x_next, i, ts, "sde")
    lp_old, mu_old = rsm.log_prob(model, path, x, x_next, i, ts, "sde")
    c = rsm.step_coefficients(path, ts, "sde")[i]
    std, w = c["std"], abs(c["K"]) / c["std"]
    delta = mu_new - mu_old
    log_rho = (lp_new - lp_old) / D
    linear = np.mean(z * delta, axis=1) / std
    np.testing.assert_allclose(log_rho + np.mean(delta**2, axis=1) / (2 * std**2), linear, rtol=1e-9, atol=1e-13)
    u_new = np.from_dlpack(other.forward(x, ts[i]))
    coef = row_coefficients(n, w=w, adv=1.0, ratio_scale=std, clip_eps=1e6)
    out = objective("ppo", u_new, coef, u_old=traj.outputs[i], noise=z, linear_only=True,
                    mean_over_dims=True)
    np.testing.assert_allclose(np.from_dlpack(out["log_ratio"]), linear, rtol=1e-9, atol=1e-13)
    # A = 1, no clipping: loss = -sum_r rho_r with rho = exp(linear * std)
    assert out["loss"] == pytest.approx(-np.sum(np.exp(linear * std)), rel=1e-10)
