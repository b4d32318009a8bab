"""rsm.metrics (energy distance, MMD, mode coverage, mode-weight error, summarize) and rsm.plot
(PNG files are written; skipped without matplotlib)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from rsm import datasets, metrics


def _naive_energy(x: np.ndarray, y: np.ndarray) -> float:
    def d(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    n, m = len(x), len(y)
    return 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))


def _naive_mmd(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-sq / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * k(x, y).mean())


def test_energy_distance_and_mmd_match_naive_formulas():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 3)), rng.normal(0.3, 1.2, size=(90, 3))
    assert metrics.energy_distance(x, y) == pytest.approx(_naive_energy(x, y), rel=1e-9)
    bw = (0.3, 1.0)
    assert metrics.mmd(x, y, bandwidths=bw) == pytest.approx(_naive_mmd(x, y, bw), rel=1e-9)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(250, 2))
    big = metrics.energy_distance(x, y), metrics.mmd(x, y)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 7)  # one row per chunk
    small = metrics.energy_distance(x, y), metrics.mmd(x, y)
    np.testing.assert_allclose(small, big, rtol=1e-9)


def test_energy_distance_closed_form_1d_gaussians():
    """For N(0,1) vs N(mu,1): 2E|X−Y| − 2E|X−X'| with X−Y ~ N(−mu, 2), X−X' ~ N(0, 2)."""
    mu = 1.0
    s = math.sqrt(2.0)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * s * s)) + mu * math.erf(mu / (s * math.sqrt(2)))
    exact = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    estimates = []
    for seed in range(5):  # for unequal laws the estimator's noise is O(1/sqrt(n)), ≈ 0.03 here
        rng = np.random.default_rng(seed)
        estimates.append(metrics.energy_distance(rng.normal(0, 1, 4000), rng.normal(mu, 1, 4000)))
    assert np.mean(estimates) == pytest.approx(exact, abs=0.04)


@pytest.mark.parametrize("metric", [metrics.energy_distance, metrics.mmd], ids=["energy", "mmd"])
def test_same_distribution_near_zero_shifted_positive_symmetric(metric):
    ds = datasets.get("8gaussians")
    x, y = ds.sample(3000, seed=1), ds.sample(3000, seed=2)
    same = metric(x, y)
    shifted = metric(x, y + np.float32(0.3))
    assert abs(same) < 2e-3  # the unbiased estimators fluctuate around 0 with O(1/n) noise
    assert shifted > 20 * max(abs(same), 1e-4)
    assert metric(y, x) == pytest.approx(same, abs=1e-12)
    assert metric(y + np.float32(0.3), x) == pytest.approx(shifted, rel=1e-10)


def test_subsampling_is_reproducible():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5000, 2)), rng.normal(0.1, 1, size=(6000, 2))
    a = metrics.energy_distance(x, y, max_n=500, seed=7)
    assert metrics.energy_distance(x, y, max_n=500, seed=7) == a
    assert metrics.energy_distance(x, y, max_n=500, seed=8) != a
    assert metrics.mmd(x, y, max_n=500, seed=7) == metrics.mmd(x, y, max_n=500, seed=7)


def test_metric_input_validation():
    with pytest.raises(ValueError, match="different dimensions"):
        metrics.energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.mmd(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.energy_distance(np.zeros((1, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="bandwidths"):
        metrics.mmd(np.zeros((5, 2)), np.zeros((5, 2)), bandwidths=(0.0,))


# ---------------------------------------------------------------------------------- mode metrics

def test_mode_coverage_exact_samples_cover_all_modes():
    ds = datasets.get("8gaussians")
    cov = metrics.mode_coverage(ds.sample(4000, seed=0), ds)
    assert (cov["covered"], cov["total"], cov["fraction"]) == (8, 8, 1.0)
    assert cov["radius"] == pytest.approx(0.6)  # 3 stds
    assert cov["outlier_fraction"] < 0.02  # P(|N(0, I_2)| > 3) = e^{-4.5} ≈ 1.1%
    np.testing.assert_allclose(cov["per_mode_weights"], 1 / 8, atol=0.02)
    assert cov["per_mode_weights"].sum() == pytest.approx(1 - cov["outlier_fraction"])


def test_mode_coverage_half_the_modes():
    ds = datasets.get("8gaussians")
    x, comp = ds.sample_with_components(8000, seed=1)
    cov = metrics.mode_coverage(x[comp < 4], ds.modes, radius=0.6)
    assert (cov["covered"], cov["total"], cov["fraction"]) == (4, 8, 0.5)
    assert np.all(cov["per_mode_weights"][4:] == 0)
    np.testing.assert_allclose(cov["per_mode_weights"][:4], 0.25, atol=0.03)


def test_mode_coverage_threshold_outliers_and_default_radius():
    modes = np.array([[0.0, 0.0], [4.0, 0.0]])
    x = np.concatenate([np.zeros((995, 2)), np.full((5, 2), [4.0, 0.0]), np.full((10, 2), 50.0)])
    cov = metrics.mode_coverage(x, modes)  # radius: half the smallest distance between modes
    assert cov["radius"] == 2.0
    assert cov["covered"] == 1  # 5 of 1010 samples < 1%: not covered
    assert metrics.mode_coverage(x, modes, min_fraction=0.001)["covered"] == 2
    assert cov["outlier_fraction"] == pytest.approx(10 / 1010)
    np.testing.assert_array_equal(cov["counts"], [995, 5])
    with pytest.raises(ValueError, match="no modes"):
        metrics.mode_coverage(x, datasets.get("two_moons"))


def test_mode_weights_error():
    ds = datasets.get("8gaussians")
    x, comp = ds.sample_with_components(8000, seed=2)
    assert metrics.mode_weights_error(x, ds) < 0.03
    assert metrics.mode_weights_error(x[comp == 0], ds) == pytest.approx(1 - 1 / 8)
    tilted = datasets.get("triangle").tilted()
    assert metrics.mode_weights_error(tilted.sample(20_000, seed=3), tilted) < 0.02
    assert metrics.mode_weights_error(datasets.get("triangle").sample(20_000), tilted) > 0.4


# ------------------------------------------------------------------------------------ summarize

def test_summarize_keys_by_dataset_kind():
    eight = datasets.get("8gaussians")
    heldout = eight.sample(2000, seed=9)
    s = metrics.summarize(eight.sample(2000, seed=1), eight, heldout)
    assert {"n", "energy_distance", "mmd", "mode_coverage", "mode_weights_tv", "log_likelihood",
            "in_support_fraction", "nonfinite_fraction"} <= set(s)
    assert s["mode_coverage"]["covered"] == 8 and s["in_support_fraction"] == 1.0
    assert s["log_likelihood"] == pytest.approx(eight.log_prob(heldout).mean(), abs=0.1)

    moons = datasets.get("two_moons")
    s = metrics.summarize(moons.sample(1000, seed=1), moons, moons.sample(1000, seed=2))
    assert "mode_coverage" not in s and "log_likelihood" not in s and abs(s["energy_distance"]) < 0.01

    board = datasets.get("checkerboard")
    x = board.sample(1000, seed=1)
    x[:10] = [[-0.5, -1.5]]  # a white square: outside the support
    s = metrics.summarize(x, board, board.sample(1000, seed=2))
    assert s["in_support_fraction"] == pytest.approx(0.99) and s["log_likelihood"] == -np.inf
    assert "mode_weights_tv" not in s and s["mode_coverage"]["covered"] == 8


def test_summarize_drops_nonfinite_rows():
    eight = datasets.get("8gaussians")
    x = eight.sample(1000, seed=1)
    x[:100] = np.nan
    s = metrics.summarize(x, eight, eight.sample(1000, seed=2))
    assert s["nonfinite_fraction"] == pytest.approx(0.1) and np.isfinite(s["energy_distance"])
    s = metrics.summarize(np.full((10, 2), np.inf), eight, eight.sample(100))
    assert math.isnan(s["energy_distance"]) and math.isnan(s["mmd"])


# ------------------------------------------------------------------------------------------ plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from rsm import plot

    ds = datasets.get("8gaussians")
    out = plot.scatter_compare({"data": ds.sample(500), "model": ds.sample(50, seed=1) * 1.1},
                               tmp_path / "sub" / "scatter.png", title="compare", lim=3.0,
                               log_prob_fn=ds.log_prob)
    _assert_png(out)
    _assert_png(plot.scatter_compare({"moons": datasets.get("two_moons").sample(300)}, tmp_path / "auto.png"))
    rows = [{"step": i, "loss": 1.0 / (i + 1), "reward": math.sin(i / 10)} for i in range(300)]
    rows[5].pop("reward")  # a key missing on some steps is fine
    _assert_png(plot.history(rows, ["loss", "reward"], tmp_path / "history.png", log_y=True))
    xs = np.cumsum(np.random.default_rng(0).normal(0, 0.1, (11, 100, 2)), axis=0)
    _assert_png(plot.trajectories(xs, tmp_path / "paths.png", n_paths=20, title="paths"))


def test_density_contour_on_axes(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rsm import plot

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    assert plot.density_contour(ax, datasets.get("rings").log_prob, 2.5) is not None
    assert plot.density_contour(ax, lambda xy: np.full(len(xy), -np.inf), 2.5) is None
    fig.savefig(tmp_path / "contour.png")
    _assert_png(tmp_path / "contour.png")


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    from rsm import plot

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot.scatter_compare({"a": np.zeros((3, 2))}, tmp_path / "x.png")
