"""rsm.datasets: samplers, exact densities (normalised, consistent with the samplers), and the exact
Gaussian-mixture ground truth (score, noised marginals, posterior mean, reward tilting)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rsm import datasets
from rsm.datasets import GaussianMixture

ALL = ["25gaussians", "8gaussians", "checkerboard", "rings", "spirals", "triangle", "two_moons"]
WITH_DENSITY = ["25gaussians", "8gaussians", "checkerboard", "rings", "triangle"]


def test_registry():
    assert datasets.names() == ALL
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*8gaussians"):
        datasets.get("nope")
    assert np.allclose(datasets.get("8gaussians", std=0.05).stds, 0.05)
    datasets.register("my_blob", lambda: GaussianMixture([[0.0, 0.0]], 1.0, name="my_blob"))
    try:
        assert datasets.get("my_blob").name == "my_blob"
        with pytest.raises(ValueError, match="already exists"):
            datasets.register("my_blob", lambda: None)
    finally:
        datasets._REGISTRY.pop("my_blob")


@pytest.mark.parametrize("name", ALL)
def test_sample_contract(name):
    ds = datasets.get(name)
    assert ds.name == name and ds.dim == 2
    x = ds.sample(1000, seed=3)
    assert x.shape == (1000, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, ds.sample(1000, seed=3))
    assert not np.array_equal(x, ds.sample(1000, seed=4))
    assert ds.sample(0).shape == (0, 2)
    if name != "triangle":  # the toys live in about [-2, 2]^2 (plus noise)
        assert np.abs(x).max() < 2.7
    with pytest.raises(ValueError, match="non-negative int"):
        ds.sample(-1)


@pytest.mark.parametrize("name", ["two_moons", "spirals"])
def test_no_density_raises_clearly(name):
    ds = datasets.get(name)
    assert not ds.has_log_prob and ds.modes is None
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        ds.log_prob(np.zeros((3, 2)))


def _grid(lo: float, hi: float, cells: int) -> tuple[np.ndarray, float]:
    """Cell centres of a cells x cells grid on [lo, hi]^2 and the cell area (midpoint rule)."""
    h = (hi - lo) / cells
    ticks = lo + h * (np.arange(cells) + 0.5)
    gx, gy = np.meshgrid(ticks, ticks)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), h * h


@pytest.mark.parametrize("name,half_width,cells", [("8gaussians", 3.5, 700), ("25gaussians", 3.0, 1200),
                                                   ("checkerboard", 2.5, 500), ("rings", 2.6, 1040),
                                                   ("triangle", 9.0, 600)])
def test_density_normalised_and_matches_sampler(name, half_width, cells):
    ds = datasets.get(name)
    assert ds.has_log_prob
    grid, area = _grid(-half_width, half_width, cells)
    lp = ds.log_prob(grid)
    assert lp.shape == (grid.shape[0],) and lp.dtype == np.float64
    p = np.exp(lp)
    assert abs(p.sum() * area - 1.0) < 5e-3
    # E_samples[log p] = ∫ p log p: the sampler draws from the density log_prob describes
    neg_entropy = float(np.sum(p[p > 0] * lp[p > 0]) * area)
    samples = ds.sample(40_000, seed=1)
    lp_samples = ds.log_prob(samples)
    assert np.all(np.isfinite(lp_samples))
    assert abs(lp_samples.mean() - neg_entropy) < 0.03


def test_mixture_parameters():
    eight = datasets.get("8gaussians")
    k = np.arange(8)
    np.testing.assert_allclose(eight.means, 2 * np.stack([np.cos(2 * np.pi * k / 8), np.sin(2 * np.pi * k / 8)], 1))
    np.testing.assert_allclose(eight.stds, 0.2)
    np.testing.assert_allclose(eight.weights, 1 / 8)
    np.testing.assert_array_equal(eight.modes, eight.means)
    assert eight.mode_radius == pytest.approx(0.6)
    grid = datasets.get("25gaussians")
    assert sorted(set(grid.means[:, 0])) == [-2, -1, 0, 1, 2] and len({tuple(m) for m in grid.means}) == 25
    np.testing.assert_allclose(grid.stds, 0.1)
    tri = datasets.get("triangle")
    s3 = math.sqrt(3)
    np.testing.assert_allclose(tri.means, [[3, -s3], [-3, -s3], [0, 2 * s3]])
    np.testing.assert_allclose(tri.weights, 1 / 3)
    np.testing.assert_allclose(tri.stds, 1.0)
    assert isinstance(tri, GaussianMixture)


def test_mixture_sampler_component_frequencies():
    gm = GaussianMixture([[0, 0], [5, 0], [0, 5]], [0.5, 1.0, 2.0], [0.2, 0.5, 0.3])
    x, comp = gm.sample_with_components(60_000, seed=0)
    np.testing.assert_allclose(np.bincount(comp) / len(comp), [0.2, 0.5, 0.3], atol=0.01)
    for k in range(3):
        np.testing.assert_allclose(x[comp == k].mean(0), gm.means[k], atol=0.05)
        np.testing.assert_allclose(x[comp == k].std(0), gm.stds[k], rtol=0.03)


def test_mixture_validation():
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixture([[0, 0]], 0.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0, 0], [1, 1]], 1.0, [-1, 2])
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        GaussianMixture([[0, 0]], 1.0).log_prob(np.zeros((3, 3)))


def _random_mixture(dim: int = 3, k: int = 4, seed: int = 0) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    return GaussianMixture(rng.normal(0, 2, (k, dim)), rng.uniform(0.4, 1.2, k), rng.uniform(0.5, 2.0, k))


@pytest.mark.parametrize("mixture", [datasets.get("8gaussians"), datasets.get("triangle"), _random_mixture()],
                         ids=["8gaussians", "triangle", "random3d"])
def test_score_matches_finite_differences(mixture):
    x = mixture.sample(50, seed=5).astype(np.float64) + 0.1
    h = 1e-5
    numeric = np.empty_like(x)
    for d in range(mixture.dim):
        e = np.zeros(mixture.dim)
        e[d] = h
        numeric[:, d] = (mixture.log_prob(x + e) - mixture.log_prob(x - e)) / (2 * h)
    np.testing.assert_allclose(mixture.score(x), numeric, rtol=1e-5, atol=1e-5)


def test_log_prob_far_from_data_is_finite_and_stable():
    gm = datasets.get("25gaussians")
    lp = gm.log_prob(np.array([[40.0, -40.0]]))
    assert np.isfinite(lp).all()
    assert np.isfinite(gm.score(np.array([[40.0, -40.0]]))).all()


# ------------------------------------------------------------------- tilting by a linear reward

def test_triangle_tilt_by_paper_reward():
    tri = datasets.get("triangle")
    tilted = tri.tilted()  # r(x) = -x1/2 + 3, alpha = 1
    expected = np.exp([-1.5, 1.5, 0.0])
    np.testing.assert_allclose(tilted.weights, expected / expected.sum(), rtol=1e-12)
    np.testing.assert_allclose(tilted.weights, [0.0391, 0.7856, 0.1753], atol=5e-5)
    np.testing.assert_allclose(tilted.means - tri.means, np.tile([-0.5, 0.0], (3, 1)), atol=1e-12)
    np.testing.assert_allclose(tilted.stds, tri.stds)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_tilted_density_is_reward_tilt(alpha):
    """log p*(x) − log p(x) − c·x/alpha must be the same constant (−log Z) for every x."""
    gm = _random_mixture(dim=2, k=5, seed=2)
    c = np.array([0.7, -0.3])
    tilted = gm.tilted(c, alpha=alpha)
    x = np.random.default_rng(0).normal(0, 3, (200, 2))
    diff = tilted.log_prob(x) - gm.log_prob(x) - x @ c / alpha
    assert np.ptp(diff) < 1e-9
    # and the constant is -log E_p[exp(c·x/alpha)], by Monte Carlo
    xs = gm.sample(400_000, seed=1).astype(np.float64)
    log_z = math.log(np.mean(np.exp(xs @ c / alpha)))
    assert diff[0] == pytest.approx(-log_z, abs=0.02)


def test_tilted_rejects_bad_arguments():
    tri = datasets.get("triangle")
    with pytest.raises(ValueError, match="2 entries"):
        tri.tilted([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alpha"):
        tri.tilted((1.0, 0.0), alpha=0.0)


# -------------------------------------------------------------------- noised marginals, posterior

PATHS = {"flow t=0.3": (0.7, 0.3), "flow t=0.8": (0.2, 0.8), "vp abar=0.5": (math.sqrt(0.5), math.sqrt(0.5))}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_marginal_matches_noised_samples(path):
    alpha, sigma = PATHS[path]
    gm = _random_mixture(dim=2, k=3, seed=4)
    marginal = gm.marginal(alpha, sigma)
    np.testing.assert_allclose(marginal.means, alpha * gm.means)
    np.testing.assert_allclose(marginal.variances, alpha ** 2 * gm.variances + sigma ** 2)
    x0 = gm.sample(200_000, seed=2).astype(np.float64)
    xt = alpha * x0 + sigma * np.random.default_rng(3).standard_normal(x0.shape)
    ref = marginal.sample(200_000, seed=5).astype(np.float64)
    np.testing.assert_allclose(xt.mean(0), ref.mean(0), atol=0.02)
    np.testing.assert_allclose(np.cov(xt.T), np.cov(ref.T), atol=0.05)
    # E over x_t of log p_t(x_t) agrees (a density-level check, not only moments)
    assert marginal.log_prob(xt).mean() == pytest.approx(marginal.log_prob(ref).mean(), abs=0.02)


def test_marginal_identity_and_degenerate():
    gm = _random_mixture()
    same = gm.marginal(1.0, 0.0)
    np.testing.assert_allclose(same.means, gm.means)
    np.testing.assert_allclose(same.stds, gm.stds)
    pure_noise = gm.marginal(0.0, 1.0)
    np.testing.assert_allclose(pure_noise.means, 0.0)
    np.testing.assert_allclose(pure_noise.stds, 1.0)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_posterior_mean_matches_monte_carlo(path):
    """E[x0 | x_t = x] by self-normalised importance sampling from the prior:
    Σ_i x0_i N(x; alpha x0_i, sigma² I) / Σ_i N(x; alpha x0_i, sigma² I)."""
    alpha, sigma = PATHS[path]
    gm = datasets.get("triangle")
    x0 = gm.sample(400_000, seed=7).astype(np.float64)
    queries = gm.marginal(alpha, sigma).sample(6, seed=8).astype(np.float64)
    exact = gm.posterior_mean(queries, alpha, sigma)
    for q, e in zip(queries, exact):
        logw = -0.5 * np.sum((q - alpha * x0) ** 2, axis=1) / sigma ** 2
        w = np.exp(logw - logw.max())
        w /= w.sum()
        assert 1.0 / np.sum(w ** 2) > 2000, "too few effective samples for this check"
        np.testing.assert_allclose(w @ x0, e, atol=0.05)


def test_posterior_mean_limits_and_per_row_times():
    gm = _random_mixture(dim=2, k=3, seed=1)
    x = gm.sample(20, seed=0).astype(np.float64)
    np.testing.assert_allclose(gm.posterior_mean(x, 1.0, 0.0), x, atol=1e-12)  # no noise: x0 = x
    np.testing.assert_allclose(gm.posterior_mean(x, 0.0, 1.0), np.tile(gm.weights @ gm.means, (20, 1)),
                               atol=1e-12)  # pure noise: the prior mean
    t = np.linspace(0.05, 0.95, 20)
    per_row = gm.posterior_mean(x, 1 - t, t)
    one_by_one = np.concatenate([gm.posterior_mean(x[i:i + 1], 1 - t[i], t[i]) for i in range(20)])
    np.testing.assert_allclose(per_row, one_by_one, rtol=1e-12)
    with pytest.raises(ValueError, match="one entry per row"):
        gm.posterior_mean(x, np.ones(3), 0.5)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_marginal_score_is_tweedie_and_matches_marginal(path):
    alpha, sigma = PATHS[path]
    gm = _random_mixture(dim=2, k=4, seed=3)
    x = gm.marginal(alpha, sigma).sample(30, seed=1).astype(np.float64)
    np.testing.assert_allclose(gm.marginal_score(x, alpha, sigma), gm.marginal(alpha, sigma).score(x),
                               rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------- other toys

def test_checkerboard_density_values():
    board = datasets.get("checkerboard")
    black = np.array([[-1.5, -1.5], [-0.5, -0.5], [0.5, 0.5], [1.5, -0.5], [-1.5, 0.5]])
    white = np.array([[-0.5, -1.5], [0.5, -0.5], [1.5, 0.5]])
    outside = np.array([[2.5, 0.0], [0.0, -2.01], [10.0, 10.0]])
    np.testing.assert_allclose(board.log_prob(black), math.log(1 / 8))
    assert np.all(board.log_prob(white) == -np.inf)
    assert np.all(board.log_prob(outside) == -np.inf)
    assert board.modes.shape == (8, 2)
    x = board.sample(5000)
    assert np.all(np.isfinite(board.log_prob(x)))
    counts = np.bincount(np.argmin(((x[:, None, :] - board.modes[None]) ** 2).sum(-1), axis=1), minlength=8)
    np.testing.assert_allclose(counts / 5000, 1 / 8, atol=0.02)


def test_rings_radial_density_integrates_to_one_with_truncation():
    """Along a ray, ∫ p(ρ, 0) 2πρ dρ = 1 — exact also when the radius truncation at 0 matters."""
    for rings in (datasets.get("rings"), datasets.Rings(radii=(0.05, 0.3), noise=0.1)):
        rho = np.linspace(1e-6, 4.0, 400_001)
        p = np.exp(rings.log_prob(np.stack([rho, np.zeros_like(rho)], 1)))
        f = p * 2 * np.pi * rho
        assert float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(rho))) == pytest.approx(1.0, abs=1e-4)


def test_rings_sampler_radii():
    rings = datasets.get("rings")
    x = rings.sample(20_000, seed=2).astype(np.float64)
    rho = np.linalg.norm(x, axis=1)
    nearest = np.argmin(np.abs(rho[:, None] - rings.radii), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=4) / len(rho), 0.25, atol=0.015)
    np.testing.assert_allclose(np.std(rho - rings.radii[nearest]), 0.05, rtol=0.05)
    angle = np.arctan2(x[:, 1], x[:, 0])
    np.testing.assert_allclose(np.histogram(angle, bins=8, range=(-np.pi, np.pi))[0] / len(angle), 1 / 8, atol=0.01)


def test_tilted_quadratic_matches_importance_weighting():
    """p*(x) ∝ p(x) exp(r(x)/alpha) for r = -s|x - c|^2/2: the closed form against self-normalised
    importance weights of exact samples."""
    from rsm.datasets import get

    mix = get("8gaussians")
    center, scale, alpha = np.array([2.0, 0.5]), 1.5, 0.7
    tilt = mix.tilted_quadratic(center, scale, alpha)
    x = mix.sample(400_000, seed=3).astype(np.float64)
    logw = -scale * ((x - center) ** 2).sum(1) / (2 * alpha)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean_is = (w[:, None] * x).sum(0)
    mean_cf = (tilt.weights[:, None] * tilt.means).sum(0)
    np.testing.assert_allclose(mean_cf, mean_is, atol=0.01)
    # the density integrates to one and is proportional to p(x) exp(r/alpha)
    grid = np.stack(np.meshgrid(np.linspace(-4, 4, 401), np.linspace(-4, 4, 401)), -1).reshape(-1, 2)
    dens = np.exp(tilt.log_prob(grid))
    assert dens.sum() * (8 / 400) ** 2 == pytest.approx(1.0, abs=1e-3)
    ratio = tilt.log_prob(grid) - mix.log_prob(grid) + scale * ((grid - center) ** 2).sum(1) / (2 * alpha)
    assert np.ptp(ratio) < 1e-8
