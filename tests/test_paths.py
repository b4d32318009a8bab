"""Probability paths (THEORY.md §2.1, §2.2): schedules, coefficients, parameterization conversions
and Tweedie exactness of the analytic Gaussian-mixture model.

Every expected value is recomputed here in numpy/float64 from the formulas of the spec (or from
textbook Gaussian conditioning), never taken from rsm itself."""
import numpy as np
import pytest


def logsumexp(a, axis=None, keepdims=False):
    """log(sum(exp(a))) along axis, stable (numpy only)."""
    a = np.asarray(a, dtype=np.float64)
    m = np.max(a, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))
    if keepdims:
        return out
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())

import rsm

TIMES = (0.05, 0.2, 0.37, 0.5, 0.63, 0.8, 0.95)
VP_SCHEDULES = ("linear", "cosine", "scaled_linear")
PARAMS = ("eps", "velocity", "x0", "score")


# ---- independent numpy schedules ---------------------------------------------------------------

def sd15_betas(T=1000):
    return np.linspace(np.sqrt(0.00085), np.sqrt(0.012), T, dtype=np.float64) ** 2


def np_alpha_bar(schedule, t):
    """abar(t) of the VP schedules, from their textbook definitions (see csrc/path.h)."""
    t = np.asarray(t, dtype=np.float64)
    if schedule == "linear":  # Song et al. 2021, beta(t) = 0.1 + 19.9 t
        return np.exp(-(0.1 * t + 0.5 * 19.9 * t * t))
    if schedule == "cosine":  # Nichol & Dhariwal 2021, t scaled by 0.999, s = 0.008
        s = 0.008
        f = lambda tt: np.cos(0.5 * np.pi * (0.999 * tt + s) / (1 + s)) ** 2
        return f(t) / f(0.0)
    if schedule == "scaled_linear":  # table k = t T, geometric interpolation between entries
        table = np.cumprod(1.0 - sd15_betas())
        k = t * 1000.0
        k0 = np.clip(np.floor(k).astype(int), 0, 998)
        frac = k - k0
        return np.exp(np.log(table[k0]) * (1 - frac) + np.log(table[k0 + 1]) * frac)
    raise ValueError(schedule)


def np_alpha_sigma(kind, t):
    if kind == "flow":
        return 1.0 - t, t
    ab = np_alpha_bar(kind, t)
    return np.sqrt(ab), np.sqrt(1.0 - ab)


def make_path(kind):
    return rsm.FlowPath() if kind == "flow" else rsm.VPPath(kind)


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


# ---- coefficients ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ("flow",) + VP_SCHEDULES)
def test_coefficients_match_formulas_and_finite_differences(kind):
    path = make_path(kind)
    # shifted off the k / 1000 knots of the discrete table (piecewise log-linear in t)
    for t in np.array(TIMES + (0.4567,)) + 0.00037:
        c = path.coef(t)
        a_ref, s_ref = np_alpha_sigma(kind, t)
        # closed forms evaluated in double on both sides: only rounding differs
        assert abs(c["alpha"] - a_ref) <= 1e-13 + 1e-12 * abs(a_ref)
        assert abs(c["sigma"] - s_ref) <= 1e-13 + 1e-12 * abs(s_ref)
        assert abs(c["alpha_bar"] - a_ref ** 2) <= 1e-13 + 1e-12 * a_ref ** 2
        # central differences with h = 1e-6: truncation O(h^2 f''') ~ 1e-10 relative, rounding
        # ~1e-16/1e-6 = 1e-10; the discrete table is log-linear inside a segment (the chosen t are
        # 0.37 / 1000 away from a knot, so t +- h stays inside one segment).
        h = 1e-6
        a_p, s_p = np_alpha_sigma(kind, t + h)
        a_m, s_m = np_alpha_sigma(kind, t - h)
        da_fd, ds_fd = (a_p - a_m) / (2 * h), (s_p - s_m) / (2 * h)
        assert abs(c["dalpha"] - da_fd) <= 1e-8 + 1e-6 * abs(da_fd), (t, c["dalpha"], da_fd)
        assert abs(c["dsigma"] - ds_fd) <= 1e-8 + 1e-6 * abs(ds_fd), (t, c["dsigma"], ds_fd)
        # and against differences of rsm's own alpha(t), sigma(t) (self-consistency of the C code)
        da_self = (path.alpha(t + h) - path.alpha(t - h)) / (2 * h)
        ds_self = (path.sigma(t + h) - path.sigma(t - h)) / (2 * h)
        assert abs(c["dalpha"] - da_self) <= 1e-8 + 1e-6 * abs(da_self)
        assert abs(c["dsigma"] - ds_self) <= 1e-8 + 1e-6 * abs(ds_self)
        if kind != "flow":
            # VP: alpha^2 + sigma^2 = 1 up to rounding of two square roots
            assert abs(c["alpha"] ** 2 + c["sigma"] ** 2 - 1.0) <= 4e-16 * 4
            assert abs(path.snr(t) - a_ref ** 2 / s_ref ** 2) <= 1e-11 * a_ref ** 2 / s_ref ** 2


def test_flow_endpoints():
    path = rsm.FlowPath()
    c0, c1 = path.coef(0.0), path.coef(1.0)
    assert (c0["alpha"], c0["sigma"], c1["alpha"], c1["sigma"]) == (1.0, 0.0, 0.0, 1.0)
    assert (c0["dalpha"], c0["dsigma"]) == (-1.0, 1.0)


def test_scaled_linear_table_at_integer_steps():
    """abar(k / T) = cumprod(1 - betas)[k], betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    path = rsm.VPPath("scaled_linear")
    table = np.cumprod(1.0 - sd15_betas())
    for k in (0, 1, 2, 20, 21, 381, 500, 781, 981, 998, 999):
        # the C core sums log1p(-beta) while cumprod multiplies: 1000 roundings of 1.1e-16 each
        # on either side, and t = k / T rounds the index by ~1e-16 relative (slope <= 0.012 / step)
        assert abs(path.coef(k / 1000)["alpha_bar"] - table[k]) <= 1e-12 * table[k] + 1e-15, k
    assert abs(path.coef(0.0)["alpha_bar"] - 0.99915) <= 1e-15  # abar_0 = 1 - beta_0 (diffusers)


def test_vp_linear_endpoints_and_monotone():
    path = rsm.VPPath("linear")
    assert path.coef(0.0)["alpha"] == 1.0 and path.coef(0.0)["sigma"] == 0.0
    ab = [path.coef(t)["alpha_bar"] for t in np.linspace(0, 1, 101)]
    assert np.all(np.diff(ab) < 0)


# ---- conversions -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ("flow",) + VP_SCHEDULES)
@pytest.mark.parametrize("pair", [("eps", "score"), ("velocity", "score"), ("x0", "eps"),
                                  ("velocity", "x0"), ("eps", "velocity"), ("x0", "score")])
def test_round_trips(kind, pair):
    path = make_path(kind)
    n, d = len(TIMES), 3
    x, u = rand((n, d), 1), rand((n, d), 2)
    t = np.array(TIMES)
    src, dst = pair
    mid = np.from_dlpack(path.convert(x, u, t, src, dst))
    back = np.from_dlpack(path.convert(x, mid, t, dst, src))
    # two affine maps with coefficients of size <= 1/sigma(0.05) ~ 20 in float64: rounding only
    np.testing.assert_allclose(back, u, rtol=1e-12, atol=1e-12)
    same = np.from_dlpack(path.convert(x, u, t, src, src))
    np.testing.assert_allclose(same, u, rtol=1e-14, atol=1e-14)


def test_flow_identities():
    """THEORY.md §2.2: x0 = x - t v, eps = x + (1 - t) v, s = -(x + (1 - t) v) / t,
    v = -(x + t s) / (1 - t)."""
    path = rsm.FlowPath()
    n, d = len(TIMES), 4
    x, v = rand((n, d), 3), rand((n, d), 4)
    t = np.array(TIMES)[:, None]
    conv = lambda src, dst, u: np.from_dlpack(path.convert(x, u, t[:, 0], src, dst))
    tol = dict(rtol=1e-13, atol=1e-13)  # one or two float64 roundings of O(10) numbers
    np.testing.assert_allclose(conv("velocity", "x0", v), x - t * v, **tol)
    np.testing.assert_allclose(conv("velocity", "eps", v), x + (1 - t) * v, **tol)
    np.testing.assert_allclose(conv("velocity", "score", v), -(x + (1 - t) * v) / t, **tol)
    s = rand((n, d), 5)
    np.testing.assert_allclose(conv("score", "velocity", s), -(x + t * s) / (1 - t), **tol)
    # x = (1 - t) x0 + t eps and v = eps - x0 for consistent (x0, eps)
    x0, eps = rand((n, d), 6), rand((n, d), 7)
    xt = np.asarray(path.noise(x0, eps, t[:, 0]))
    np.testing.assert_allclose(xt, (1 - t) * x0 + t * eps, **tol)
    v_true = eps - x0
    np.testing.assert_allclose(np.from_dlpack(path.convert(xt, v_true, t[:, 0], "velocity", "x0")), x0, **tol)
    np.testing.assert_allclose(np.from_dlpack(path.convert(xt, v_true, t[:, 0], "velocity", "eps")), eps, **tol)
    # Delta v = -(t / (1 - t)) Delta s at the same x_t
    s1, s2 = rand((n, d), 8), rand((n, d), 9)
    dv = conv("score", "velocity", s1) - conv("score", "velocity", s2)
    np.testing.assert_allclose(dv, -(t / (1 - t)) * (s1 - s2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", VP_SCHEDULES)
def test_vp_identities(schedule):
    """THEORY.md §2.1: s = -eps / sqrt(1 - abar), x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)
    = (x + (1 - abar) s) / sqrt(abar); velocity = alpha' x0 + sigma' eps."""
    path = rsm.VPPath(schedule)
    n, d = len(TIMES), 3
    x, eps = rand((n, d), 10), rand((n, d), 11)
    tt = np.array(TIMES) + 0.00037  # off the knots of the discrete table (velocity is one-sided there)
    ab = np_alpha_bar(schedule, tt)[:, None]
    conv = lambda src, dst, u: np.from_dlpack(path.convert(x, u, tt, src, dst))
    tol = dict(rtol=1e-11, atol=1e-11)  # 1/sqrt(abar) reaches ~60 at t = 0.95 (linear)
    s_ref = -eps / np.sqrt(1 - ab)
    np.testing.assert_allclose(conv("eps", "score", eps), s_ref, **tol)
    x0_ref = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    np.testing.assert_allclose(conv("eps", "x0", eps), x0_ref, **tol)
    np.testing.assert_allclose(conv("score", "x0", s_ref), (x + (1 - ab) * s_ref) / np.sqrt(ab), **tol)
    np.testing.assert_allclose(conv("score", "eps", s_ref), eps, **tol)
    # velocity from finite differences of the numpy alpha, sigma (h = 1e-6: ~1e-7 relative)
    h = 1e-6
    a_p, s_p = np_alpha_sigma(schedule, tt + h)
    a_m, s_m = np_alpha_sigma(schedule, tt - h)
    da, ds = ((a_p - a_m) / (2 * h))[:, None], ((s_p - s_m) / (2 * h))[:, None]
    v_ref = da * x0_ref + ds * eps
    np.testing.assert_allclose(conv("eps", "velocity", eps), v_ref, rtol=1e-6,
                               atol=1e-6 * np.abs(v_ref).max())
    # x_t from (x0, eps) and back
    xt = path.noise(x0_ref, eps, tt)
    np.testing.assert_allclose(xt, x, rtol=1e-12, atol=1e-12)


def test_float32_conversion_close_to_float64():
    path = rsm.VPPath("cosine")
    x, u = rand((5, 3), 12), rand((5, 3), 13)
    t = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    out64 = np.from_dlpack(path.convert(x, u, t, "eps", "x0"))
    out32 = np.from_dlpack(path.convert(x.astype(np.float32), u.astype(np.float32), t, "eps", "x0"))
    assert out32.dtype == np.float32
    # inputs rounded to float32 (6e-8 relative) times coefficients up to ~10
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-5)


# ---- Tweedie exactness of the Gaussian-mixture model -------------------------------------------

def np_mixture_posterior(means, stds, weights, alpha, sigma, x):
    """E[x0 | x_t], E[eps | x_t] of an isotropic mixture by per-component Gaussian conditioning,
    with the responsibilities from explicit log-densities (independent of rsm's code)."""
    D = means.shape[1]
    var = alpha ** 2 * stds ** 2 + sigma ** 2                       # [K]
    diff = x[:, None, :] - alpha * means[None]                      # [n, K, D]
    logp = (np.log(weights)[None] - 0.5 * (diff ** 2).sum(-1) / var[None]
            - 0.5 * D * np.log(2 * np.pi * var)[None])
    gamma = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))  # [n, K]
    x0_k = means[None] + (alpha * stds ** 2 / var)[None, :, None] * diff
    eps_k = (sigma / var)[None, :, None] * diff
    return (gamma[..., None] * x0_k).sum(1), (gamma[..., None] * eps_k).sum(1)


def np_mixture_log_density(means, stds, weights, alpha, sigma, x):
    D = means.shape[1]
    var = alpha ** 2 * stds ** 2 + sigma ** 2
    sq = ((x[:, None, :] - alpha * means[None]) ** 2).sum(-1)
    return logsumexp(np.log(weights)[None] - 0.5 * sq / var - 0.5 * D * np.log(2 * np.pi * var), axis=1)


@pytest.mark.parametrize("kind", ("flow", "linear", "cosine", "scaled_linear"))
def test_tweedie_single_gaussian(kind):
    """Data N(m, s^2 I): E[x0 | x_t] = m + alpha s^2 / (alpha^2 s^2 + sigma^2) (x - alpha m)."""
    path = make_path(kind)
    m, s = np.array([0.7, -1.3, 2.0]), 0.6
    model = rsm.GaussianMixtureModel(m[None], [s], [1.0], path)
    x = 2.0 * rand((len(TIMES), 3), 14)
    tt = np.array(TIMES)
    a, sg = np_alpha_sigma(kind, tt)
    a, sg = a[:, None], sg[:, None]
    x0_ref = m + a * s ** 2 / (a ** 2 * s ** 2 + sg ** 2) * (x - a * m)
    eps_ref = sg / (a ** 2 * s ** 2 + sg ** 2) * (x - a * m)
    x0, eps = (np.from_dlpack(v) for v in model.posterior(x, tt))
    tol = dict(rtol=1e-12, atol=1e-12)  # same closed form, float64 rounding only
    np.testing.assert_allclose(x0, x0_ref, **tol)
    np.testing.assert_allclose(eps, eps_ref, **tol)
    # forward() returns the native parameterization; the path maps it back to Tweedie's x0
    u = model.forward(x, tt)
    np.testing.assert_allclose(np.from_dlpack(path.x0_hat(x, u, tt)), x0_ref, rtol=1e-11, atol=1e-11)
    # score of N(alpha m, (alpha^2 s^2 + sigma^2) I)
    np.testing.assert_allclose(np.from_dlpack(path.score(x, u, tt)),
                               -(x - a * m) / (a ** 2 * s ** 2 + sg ** 2), rtol=1e-11, atol=1e-11)
    if kind == "flow":  # exact velocity E[eps - x0 | x_t]
        np.testing.assert_allclose(np.from_dlpack(u), eps_ref - x0_ref, rtol=1e-11, atol=1e-11)


MIX = dict(means=np.array([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]), stds=np.array([0.3, 0.5, 0.8]),
           weights=np.array([0.5, 0.3, 0.2]))


@pytest.mark.parametrize("kind", ("flow", "linear", "scaled_linear"))
def test_tweedie_mixture_against_numpy(kind):
    path = make_path(kind)
    model = rsm.GaussianMixtureModel(MIX["means"], MIX["stds"], MIX["weights"], path)
    x = 1.5 * rand((len(TIMES), 2), 15)
    tt = np.array(TIMES)
    x0, eps = (np.from_dlpack(v) for v in model.posterior(x, tt))
    for i, t in enumerate(tt):
        a, sg = np_alpha_sigma(kind, t)
        x0_ref, eps_ref = np_mixture_posterior(MIX["means"], MIX["stds"], MIX["weights"], a, sg, x[i:i + 1])
        # softmax responsibilities: float64 rounding amplified by |x0| ~ 3
        np.testing.assert_allclose(x0[i], x0_ref[0], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(eps[i], eps_ref[0], rtol=1e-11, atol=1e-11)
        # Tweedie: score = grad log p_t, checked against central differences of the numpy density
        u = model.forward(x[i:i + 1], t)
        score = np.from_dlpack(path.score(x[i:i + 1], u, t))[0]
        h = 1e-5
        fd = np.array([(np_mixture_log_density(MIX["means"], MIX["stds"], MIX["weights"], a, sg, x[i:i + 1] + h * e)
                        - np_mixture_log_density(MIX["means"], MIX["stds"], MIX["weights"], a, sg, x[i:i + 1] - h * e))[0] / (2 * h)
                       for e in np.eye(2)])
        # O(h^2) truncation with curvature up to 1/var_min^2 ~ 1e2..1e4 at small t; rounding 1e-16/h
        np.testing.assert_allclose(score, fd, rtol=1e-5, atol=1e-5)


def test_tweedie_mixture_monte_carlo():
    """Self-normalised importance estimate of E[x0 | x_t] with x0 drawn from the mixture and
    weights N(x_t; alpha x0, sigma^2 I): agrees within 5 standard errors."""
    path = rsm.FlowPath()
    model = rsm.GaussianMixtureModel(MIX["means"], MIX["stds"], MIX["weights"], path)
    rng = np.random.default_rng(16)
    M = 400_000
    comp = rng.choice(3, size=M, p=MIX["weights"])
    x0s = MIX["means"][comp] + MIX["stds"][comp, None] * rng.standard_normal((M, 2))
    for t, x in ((0.5, np.array([0.3, -0.4])), (0.7, np.array([-1.0, 0.5])), (0.3, np.array([0.8, 0.6]))):
        a, sg = 1 - t, t
        logw = -0.5 * ((x - a * x0s) ** 2).sum(1) / sg ** 2
        w = np.exp(logw - logw.max())
        w /= w.sum()
        est = (w[:, None] * x0s).sum(0)
        se = np.sqrt((w[:, None] ** 2 * (x0s - est) ** 2).sum(0))  # delta-method SE of the SNIS mean
        got = np.from_dlpack(model.posterior(x[None], t)[0])[0]
        assert np.all(np.abs(got - est) <= 5 * se + 1e-12), (t, got, est, se)
        assert np.all(se < 0.05)  # the check has power: the SE is small against |E[x0|x]| ~ 1


def test_mixture_forward_float32_matches_float64():
    path = rsm.VPPath("linear")
    m64 = rsm.GaussianMixtureModel(MIX["means"], MIX["stds"], MIX["weights"], path)
    m32 = rsm.GaussianMixtureModel(MIX["means"], MIX["stds"], MIX["weights"], path, dtype="float32")
    x = rand((7, 2), 17)
    tt = np.array(TIMES)
    o64 = np.from_dlpack(m64.forward(x, tt))
    o32 = np.from_dlpack(m32.forward(x.astype(np.float32), tt.astype(np.float32)))
    assert o32.dtype == np.float32
    # float32 inputs and times (t rounded by 6e-8) through coefficients of size <= ~10
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-5)
