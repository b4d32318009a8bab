"""Sample-quality metrics for low-dimensional toys: energy distance, MMD, mode coverage.

Why these: energy distance and MMD are two-sample statistics that need no density and are zero
exactly when the distributions agree, so they compare a model's samples with held-out data on any
toy; mode coverage and mode-weight error read off the typical failure modes of reward fine-tuning
(mode collapse, wrong mode proportions) on mixtures.  Everything is computed in float64, pairwise
terms in row chunks (memory stays bounded at any sample size), and inputs larger than `max_n`
rows are subsampled reproducibly (numpy Generator(PCG64(seed)), the same stream for either
argument, so swapping x and y gives the same value up to rounding).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["energy_distance", "mmd", "mode_coverage", "mode_weights_error", "summarize"]

#: elements of one [chunk, m] block of pairwise terms: 128 KB of float64 stays in cache (measured
#: ~3x faster than 16 MB blocks)
_BLOCK_ELEMENTS = 1 << 14


def _as_samples(x: Any, name: str, caller: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{caller}(): {name} must have shape [n, d], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int((~np.all(np.isfinite(arr), axis=1)).sum())
        raise ValueError(f"{caller}(): {name} has {bad} rows with NaN or inf")
    return arr


def _subsample(x: np.ndarray, max_n: int | None, seed: int) -> np.ndarray:
    if max_n is None or x.shape[0] <= max_n:
        return x
    rng = np.random.Generator(np.random.PCG64(seed))
    return x[np.sort(rng.choice(x.shape[0], size=int(max_n), replace=False))]


def _pair_sum(a: np.ndarray, b: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> float:
    """Σ_ij fn(|a_i − b_j|²) over all pairs, in row chunks of a so memory stays bounded.

    Squared distances use |a|² + |b|² − 2 a·b (one matrix product per chunk), clipped at 0; in
    float64 the cancellation error is ~1e-16 |a|², negligible for these statistics.  When a is b,
    the diagonal is set to exactly 0 (else √(rounding error) ~ 1e-8 would bias E|X − X'|)."""
    same = a is b
    chunk = max(1, _BLOCK_ELEMENTS // max(1, b.shape[0]))
    b_sq = np.einsum("nd,nd->n", b, b)
    total = 0.0
    for start in range(0, a.shape[0], chunk):
        block = a[start:start + chunk]
        sq = np.einsum("nd,nd->n", block, block)[:, None] + b_sq[None, :] - 2.0 * (block @ b.T)
        np.maximum(sq, 0.0, out=sq)
        if same:
            rows = np.arange(block.shape[0])
            sq[rows, start + rows] = 0.0
        total += float(fn(sq).sum())
    return total


def _prepare(x: Any, y: Any, max_n: int | None, seed: int, caller: str) -> tuple[np.ndarray, np.ndarray]:
    x = _as_samples(x, "x", caller)
    y = _as_samples(y, "y", caller)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{caller}(): x and y have different dimensions ({x.shape[1]} vs {y.shape[1]})")
    x, y = _subsample(x, max_n, seed), _subsample(y, max_n, seed)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"{caller}(): need at least 2 samples on each side, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def energy_distance(x: Any, y: Any, max_n: int | None = 4096, seed: int = 0) -> float:
    """Squared energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| between the samples x [n, d] and y [m, d].

    Unbiased: the within-sample terms are U-statistics (i ≠ j), so the estimate is ≈ 0 (and may be
    slightly negative) for two samples of the same law; its noise is O(1/n).  It is 0 in the limit
    iff the two distributions are equal.  Rows beyond max_n are subsampled (None: use all)."""
    x, y = _prepare(x, y, max_n, seed, "energy_distance")
    n, m = x.shape[0], y.shape[0]
    xy = _pair_sum(x, y, np.sqrt) / (n * m)
    xx = _pair_sum(x, x, np.sqrt) / (n * (n - 1))
    yy = _pair_sum(y, y, np.sqrt) / (m * (m - 1))
    return 2.0 * xy - xx - yy


def mmd(x: Any, y: Any, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0),
        max_n: int | None = 4096, seed: int = 0) -> float:
    """Unbiased MMD² with the kernel k(a, b) = Σ_h exp(−|a − b|² / (2h²)) over `bandwidths`.

    A sum over bandwidths is sensitive both to fine structure (small h) and to global shifts (large
    h) without tuning one.  The within-sample sums exclude i = j, so the estimate is ≈ 0 (possibly
    negative) for equal laws."""
    x, y = _prepare(x, y, max_n, seed, "mmd")
    h2 = np.asarray(bandwidths, dtype=np.float64).reshape(-1) ** 2
    if h2.size == 0 or np.any(h2 <= 0) or not np.all(np.isfinite(h2)):
        raise ValueError(f"mmd(): bandwidths must be finite and > 0, got {bandwidths!r}")
    scales = -0.5 / h2

    def kernel(sq: np.ndarray) -> np.ndarray:
        total = np.zeros_like(sq)
        for s in scales:
            total += np.exp(s * sq)
        return total

    n, m, diag = x.shape[0], y.shape[0], float(h2.size)  # k(a, a) = number of bandwidths
    xx = (_pair_sum(x, x, kernel) - n * diag) / (n * (n - 1))
    yy = (_pair_sum(y, y, kernel) - m * diag) / (m * (m - 1))
    xy = _pair_sum(x, y, kernel) / (n * m)
    return xx + yy - 2.0 * xy


def _nearest(samples: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, distance to it) per sample."""
    best = np.full(samples.shape[0], np.inf)
    index = np.zeros(samples.shape[0], dtype=np.int64)
    for k, c in enumerate(centres):
        diff = samples - c
        d2 = np.einsum("nd,nd->n", diff, diff)
        closer = d2 < best
        best[closer] = d2[closer]
        index[closer] = k
    return index, np.sqrt(best)


def _modes_of(modes: Any, caller: str) -> tuple[np.ndarray, float | None]:
    """Mode centres and default radius from an array or from a dataset with .modes/.mode_radius."""
    if hasattr(modes, "modes"):
        centres, radius = modes.modes, getattr(modes, "mode_radius", None)
        if centres is None:
            raise ValueError(f"{caller}(): dataset {getattr(modes, 'name', modes)!r} has no modes")
    else:
        centres, radius = modes, None
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[0] == 0:
        raise ValueError(f"{caller}(): modes must have shape [K, d] with K >= 1, got {centres.shape}")
    return centres, radius


def mode_coverage(samples: Any, modes: Any, radius: float | None = None,
                  min_fraction: float = 0.01) -> dict[str, Any]:
    """Which modes the samples reach.

    Each sample is assigned to its nearest mode centre and counts for it only if it lies within
    `radius` of it (otherwise it is an outlier).  A mode is covered when it holds at least
    `min_fraction` of all samples (and at least one sample).

    modes: centres [K, d], or a dataset with `.modes` (and `.mode_radius`, e.g. 3 stds for the
    Gaussian mixtures).  radius=None: the dataset's mode_radius, else half the smallest distance
    between two centres (so the balls never overlap).

    Returns dict(covered, total, fraction, per_mode_weights [K] (fraction of all samples per mode;
    sums to 1 − outlier_fraction), counts [K], outlier_fraction, radius)."""
    x = _as_samples(samples, "samples", "mode_coverage")
    centres, default_radius = _modes_of(modes, "mode_coverage")
    if x.shape[1] != centres.shape[1]:
        raise ValueError(f"mode_coverage(): samples are {x.shape[1]}-D but modes are {centres.shape[1]}-D")
    if radius is None:
        radius = default_radius
    if radius is None:
        if centres.shape[0] == 1:
            raise ValueError("mode_coverage(): give a radius (it cannot be inferred from a single mode)")
        d = centres[:, None, :] - centres[None, :, :]
        dist = np.sqrt(np.einsum("ijd,ijd->ij", d, d))
        np.fill_diagonal(dist, np.inf)
        radius = 0.5 * float(dist.min())
    radius = float(radius)
    if not radius > 0:
        raise ValueError(f"mode_coverage(): radius must be > 0, got {radius}")
    n, k = x.shape[0], centres.shape[0]
    index, dist = _nearest(x, centres)
    inside = dist <= radius
    counts = np.bincount(index[inside], minlength=k)
    weights = counts / n if n else np.zeros(k)
    covered = int(np.sum((counts >= 1) & (weights >= min_fraction)))
    return {"covered": covered, "total": k, "fraction": covered / k, "per_mode_weights": weights,
            "counts": counts, "outlier_fraction": float(1.0 - inside.mean()) if n else 0.0,
            "radius": radius}


def mode_weights_error(samples: Any, mixture: Any) -> float:
    """Total variation ½ Σ_k |ŵ_k − w_k| between the empirical mode weights (every sample assigned to
    its nearest component mean, no radius) and the mixture weights `mixture.weights`."""
    x = _as_samples(samples, "samples", "mode_weights_error")
    means = np.asarray(getattr(mixture, "means", getattr(mixture, "modes", None)), dtype=np.float64)
    weights = np.asarray(mixture.weights, dtype=np.float64)
    if means.ndim != 2 or means.shape[0] != weights.shape[0]:
        raise ValueError("mode_weights_error(): mixture needs .means [K, d] and .weights [K]")
    if x.shape[0] == 0:
        raise ValueError("mode_weights_error(): no samples")
    index, _ = _nearest(x, means)
    empirical = np.bincount(index, minlength=means.shape[0]) / x.shape[0]
    return 0.5 * float(np.abs(empirical - weights / weights.sum()).sum())


def summarize(samples: Any, dataset: Any, heldout: Any, max_n: int | None = 4096, seed: int = 0) -> dict[str, Any]:
    """All applicable metrics of `samples` against `dataset` and its held-out samples.

    Keys: n, nonfinite_fraction (rows with NaN/inf are dropped first and reported here),
    energy_distance, mmd (against heldout); mode_coverage (dict, see mode_coverage) where the
    dataset has modes; mode_weights_tv where it is a mixture with weights; log_likelihood (mean
    log-density of the samples, −inf if any falls outside the support) and in_support_fraction
    where the dataset has an exact density.  Metrics that cannot be computed are NaN."""
    raw = np.asarray(samples, dtype=np.float64)
    if raw.ndim == 1:
        raw = raw[:, None]
    finite = np.all(np.isfinite(raw), axis=1)
    x = raw[finite]
    out: dict[str, Any] = {"n": int(raw.shape[0]),
                           "nonfinite_fraction": float(1.0 - finite.mean()) if raw.shape[0] else 0.0}
    enough = x.shape[0] >= 2
    out["energy_distance"] = energy_distance(x, heldout, max_n=max_n, seed=seed) if enough else math.nan
    out["mmd"] = mmd(x, heldout, max_n=max_n, seed=seed) if enough else math.nan
    if getattr(dataset, "modes", None) is not None:
        out["mode_coverage"] = mode_coverage(x, dataset)
        if getattr(dataset, "weights", None) is not None and hasattr(dataset, "means"):
            out["mode_weights_tv"] = mode_weights_error(x, dataset) if x.shape[0] else math.nan
    if getattr(dataset, "has_log_prob", False):
        if x.shape[0]:
            lp = np.asarray(dataset.log_prob(x), dtype=np.float64)
            out["log_likelihood"] = float(lp.mean())
            out["in_support_fraction"] = float(np.isfinite(lp).mean())
        else:
            out["log_likelihood"] = out["in_support_fraction"] = math.nan
    return out
