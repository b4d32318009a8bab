"""2D toy distributions, with exact log-densities wherever one exists.

Why exact densities: fine-tuning results on toys are only trustworthy when they can be checked
against ground truth.  Gaussian mixtures therefore also expose the exact score, the exact noised
marginals of either probability path, the exact posterior mean E[x0 | x_t] and the exact
reward-tilted target p*(x) ∝ p(x) exp(r(x)/α) for linear rewards.

Every dataset has `.name`, `.dim`, `.sample(n, seed=0) -> float32 [n, dim]` (reproducible: a fresh
numpy Generator(PCG64(seed)) per call), `.log_prob(x) -> float64 [n]` (NotImplementedError when
there is no closed form), `.modes` (mode centres used by `rsm.metrics.mode_coverage`, or None)
and `.mode_radius` (default radius for that coverage metric).

Registry: `names()` lists the datasets, `get(name, **kwargs)` builds one:

    8gaussians    8 isotropic Gaussians, means on a circle of radius 2, std 0.2, equal weights
    25gaussians   5x5 grid on {-2,-1,0,1,2}^2, std 0.1, equal weights
    triangle      the 3-Gaussian triangle of the RSM paper, std 1, weights exactly 1/3
    checkerboard  uniform on the 8 "black" unit squares of a 4x4 board on [-2,2]^2
    rings         4 concentric rings, radii 0.5/1.0/1.5/2.0, radial noise 0.05, equal weights
    two_moons     two interleaved half circles (no closed-form density)
    spirals       two interleaved spirals (no closed-form density)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Checkerboard",
    "Dataset",
    "GaussianMixture",
    "Rings",
    "Spirals",
    "Triangle",
    "TwoMoons",
    "eight_gaussians",
    "get",
    "names",
    "register",
    "twenty_five_gaussians",
]


def _rng(seed: int) -> np.random.Generator:
    from ._args import seed_int

    return np.random.Generator(np.random.PCG64(seed_int(seed, "sample")))


def _check_n(n: Any) -> int:
    from ._args import MAX_SIZE

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_SIZE:
        raise ValueError(f"sample(): n must be a non-negative int, at most 2**40, got {n!r}")
    return int(n)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log Σ exp(a) along `axis`, stable, and -inf (not NaN) where every term is -inf."""
    m = np.max(a, axis=axis, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m_safe), axis=axis, keepdims=True)) + m_safe
    return np.squeeze(out, axis=axis)


class Dataset:
    """Base class: a distribution on R^dim that can be sampled (and maybe evaluated)."""

    name: str = "dataset"
    dim: int = 2
    #: mode centres [K, dim] for mode-coverage metrics, or None when the data has no point modes
    modes: np.ndarray | None = None
    #: a sample within this distance of a mode centre counts for that mode (rsm.metrics default)
    mode_radius: float | None = None

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n samples as float32 [n, dim]; the same (n, seed) always gives the same array."""
        raise NotImplementedError

    def log_prob(self, x: Any) -> np.ndarray:
        """Exact log-density (float64 [n]) of the rows of x."""
        raise NotImplementedError(f"dataset {self.name!r} has no closed-form density; "
                                  f"use sample-based metrics (rsm.metrics.energy_distance, mmd) instead")

    @property
    def has_log_prob(self) -> bool:
        """Whether `log_prob` is implemented (exact)."""
        return type(self).log_prob is not Dataset.log_prob

    def _rows(self, x: Any, caller: str) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim == 1 and arr.shape[0] == self.dim:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{caller}(): x must have shape [n, {self.dim}], got {arr.shape}")
        return arr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ------------------------------------------------------------------------------ Gaussian mixtures


class GaussianMixture(Dataset):
    """p(x) = Σ_k w_k N(x; μ_k, σ_k² I): an isotropic Gaussian mixture, everything in closed form.

    means [K, D], stds [K] (a scalar is broadcast), weights [K] (normalised here)."""

    def __init__(self, means: Any, stds: Any, weights: Any = None, name: str = "gaussian_mixture") -> None:
        means = np.array(np.atleast_2d(np.asarray(means, dtype=np.float64)))
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(f"GaussianMixture: means must have shape [K, D] with K >= 1, got {means.shape}")
        k = means.shape[0]
        stds = np.array(np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,)))
        if weights is None:
            weights = np.full(k, 1.0 / k)
        weights = np.array(np.broadcast_to(np.asarray(weights, dtype=np.float64), (k,)))
        if not (np.all(np.isfinite(means)) and np.all(np.isfinite(stds)) and np.all(np.isfinite(weights))):
            raise ValueError("GaussianMixture: means, stds and weights must be finite")
        if np.any(stds <= 0):
            raise ValueError(f"GaussianMixture: stds must be > 0, got {stds}")
        if np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"GaussianMixture: weights must be >= 0 with a positive sum, got {weights}")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()
        self.name = name
        self.dim = means.shape[1]

    # modes are the component means; the coverage radius is 3 standard deviations
    @property
    def modes(self) -> np.ndarray:  # type: ignore[override]
        return self.means

    @property
    def mode_radius(self) -> float:  # type: ignore[override]
        return 3.0 * float(self.stds.max())

    @property
    def variances(self) -> np.ndarray:
        """σ_k² per component, [K]."""
        return self.stds ** 2

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, K={self.num_components}, dim={self.dim}, "
                f"stds={np.array2string(self.stds, precision=4)}, "
                f"weights={np.array2string(self.weights, precision=4)})")

    # -------------------------------------------------------------------------------- sampling

    def sample_with_components(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 [n, D], component index int64 [n]) — the labels help test mode metrics."""
        n = _check_n(n)
        rng = _rng(seed)
        comp = rng.choice(self.num_components, size=n, p=self.weights)
        noise = rng.standard_normal((n, self.dim))
        x = self.means[comp] + self.stds[comp, None] * noise
        return x.astype(np.float32), comp.astype(np.int64)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return self.sample_with_components(n, seed)[0]

    # ------------------------------------------------------------------------------- densities

    def component_log_probs(self, x: Any) -> np.ndarray:
        """log w_k + log N(x; μ_k, σ_k² I) for every row and component, float64 [n, K]."""
        x = self._rows(x, "component_log_probs")
        var = self.variances
        sq = np.empty((x.shape[0], self.num_components))
        for k in range(self.num_components):  # a loop over K keeps memory at O(n D), not O(n K D)
            diff = x - self.means[k]
            sq[:, k] = np.einsum("nd,nd->n", diff, diff)
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights)
        return log_w - 0.5 * sq / var - 0.5 * self.dim * np.log(2.0 * math.pi * var)

    def log_prob(self, x: Any) -> np.ndarray:
        return _logsumexp(self.component_log_probs(x), axis=1)

    def responsibilities(self, x: Any) -> np.ndarray:
        """p(k | x), float64 [n, K] (rows sum to 1)."""
        joint = self.component_log_probs(x)
        return np.exp(joint - _logsumexp(joint, axis=1)[:, None])

    def score(self, x: Any) -> np.ndarray:
        """∇_x log p(x) = Σ_k p(k|x) (μ_k − x) / σ_k², float64 [n, D]."""
        x = self._rows(x, "score")
        r = self.responsibilities(x)
        return (r / self.variances) @ self.means - (r / self.variances).sum(axis=1, keepdims=True) * x

    # -------------------------------------------------------------------- noised marginals, posteriors

    def marginal(self, alpha: float, sigma: float) -> GaussianMixture:
        """The law of x_t = alpha x0 + sigma ε (x0 ~ self, ε ~ N(0, I)): again an isotropic mixture,
        means alpha μ_k, variances alpha² σ_k² + sigma², same weights.

        Flow path: alpha = 1 − t, sigma = t.  VP path: alpha = √ᾱ_t, sigma = √(1 − ᾱ_t)."""
        alpha, sigma = float(alpha), float(sigma)
        var = alpha ** 2 * self.variances + sigma ** 2
        if np.any(var <= 0):
            raise ValueError(f"marginal(): alpha={alpha}, sigma={sigma} give a degenerate (zero-variance) mixture")
        return GaussianMixture(alpha * self.means, np.sqrt(var), self.weights, name=f"{self.name}_marginal")

    def posterior_mean(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """E[x0 | x_t = x] exactly, for x_t = alpha x0 + sigma ε; float64 [n, D].

        Per component, (x0, x_t) is jointly Gaussian, so E[x0 | x_t, k] = μ_k + (alpha σ_k² / v_k)
        (x_t − alpha μ_k) with v_k = alpha² σ_k² + sigma²; these are mixed by the posterior
        responsibilities p(k | x_t) of the noised marginal.  alpha and sigma are scalars or [n]
        arrays (one time per row)."""
        x = self._rows(x, "posterior_mean")
        a, s = self._row_coefficients(alpha, sigma, x.shape[0])
        var = a ** 2 * self.variances + s ** 2  # [n, K], marginal variance per component
        if np.any(var <= 0):
            raise ValueError("posterior_mean(): alpha and sigma give a zero-variance marginal")
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights)
        joint = np.empty((x.shape[0], self.num_components))
        for k in range(self.num_components):
            diff = x - a * self.means[k]
            joint[:, k] = np.einsum("nd,nd->n", diff, diff)
        joint = log_w - 0.5 * joint / var - 0.5 * self.dim * np.log(2.0 * math.pi * var)
        resp = np.exp(joint - _logsumexp(joint, axis=1)[:, None])  # p(k | x_t), [n, K]
        gain = a * self.variances / var  # alpha σ_k² / v_k, [n, K]
        out = np.zeros_like(x)
        for k in range(self.num_components):
            out += resp[:, k:k + 1] * (self.means[k] + gain[:, k:k + 1] * (x - a * self.means[k]))
        return out

    @staticmethod
    def _row_coefficients(alpha: Any, sigma: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """alpha, sigma (scalars, or one value per row) as float64 [n, 1] columns."""
        columns = []
        for label, value in (("alpha", alpha), ("sigma", sigma)):
            arr = np.asarray(value, dtype=np.float64)
            arr = arr.reshape(-1) if arr.ndim else arr
            if arr.ndim and arr.shape[0] not in (1, n):
                raise ValueError(f"{label} must be a scalar or have one entry per row ({n}), got {arr.shape[0]}")
            columns.append(np.broadcast_to(arr, (n,))[:, None])
        return columns[0], columns[1]

    def marginal_score(self, x: Any, alpha: Any, sigma: Any) -> np.ndarray:
        """∇ log p_t(x) of the noised marginal, via Tweedie: (alpha E[x0|x] − x) / sigma²."""
        x = self._rows(x, "marginal_score")
        a, s = self._row_coefficients(alpha, sigma, x.shape[0])
        if np.any(s <= 0):
            raise ValueError("marginal_score(): sigma must be > 0 (use score() for the clean data)")
        return (a * self.posterior_mean(x, alpha, sigma) - x) / s ** 2

    # ------------------------------------------------------------------------------ reward tilting

    def tilted(self, reward_grad: Any, alpha: float = 1.0) -> GaussianMixture:
        """The reward-tilted target p*(x) ∝ p(x) exp(r(x)/alpha) for a linear reward r(x) = c·x + b.

        N(x; μ, σ² I) exp(c·x/alpha) = exp(c·μ/alpha + σ²|c|²/(2 alpha²)) N(x; μ + σ² c/alpha, σ² I)
        (complete the square), so the tilt is again an isotropic mixture: same stds, means shifted
        by σ_k² c/alpha, weights ∝ w_k exp(c·μ_k/alpha + σ_k²|c|²/(2 alpha²)).  The bias b cancels
        in the normalisation, so only the gradient c is needed."""
        c = np.asarray(reward_grad, dtype=np.float64).reshape(-1)
        if c.shape != (self.dim,):
            raise ValueError(f"tilted(): reward_grad must have {self.dim} entries, got shape {c.shape}")
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"tilted(): alpha must be a finite number > 0, got {alpha}")
        var = self.variances
        with np.errstate(divide="ignore"):
            log_w = np.log(self.weights) + self.means @ c / alpha + var * float(c @ c) / (2.0 * alpha ** 2)
        log_w -= _logsumexp(log_w, axis=0)
        return GaussianMixture(self.means + var[:, None] * c / alpha, self.stds, np.exp(log_w),
                               name=f"{self.name}_tilted")


    def tilted_quadratic(self, center: Any, scale: float = 1.0, alpha: float = 1.0) -> GaussianMixture:
        """The tilted target for r(x) = -scale |x - center|^2 / 2 (rsm.rewards.quadratic).

        N(x; mu, s^2 I) exp(r(x)/alpha) is Gaussian again (product of Gaussians): precision
        1/s^2 + scale/alpha, mean v (mu/s^2 + scale center/alpha), and weight proportional to
        the overlap N(mu; center, (s^2 + alpha/scale) I)."""
        p = np.asarray(center, dtype=np.float64).reshape(-1)
        if p.shape != (self.dim,):
            raise ValueError(f"tilted_quadratic(): center must have {self.dim} entries, got shape {p.shape}")
        if not (scale > 0 and alpha > 0):
            raise ValueError("tilted_quadratic(): scale and alpha must be > 0")
        var = self.variances
        k = scale / alpha
        new_var = 1.0 / (1.0 / var + k)
        means = new_var[:, None] * (self.means / var[:, None] + k * p[None, :])
        spread = var + 1.0 / k
        log_w = (np.log(self.weights) - ((self.means - p) ** 2).sum(1) / (2 * spread)
                 - 0.5 * self.dim * np.log(spread))
        log_w -= _logsumexp(log_w, axis=0)
        return GaussianMixture(means, np.sqrt(new_var), np.exp(log_w), name=f"{self.name}_tilted")


def eight_gaussians(std: float = 0.2, radius: float = 2.0) -> GaussianMixture:
    """8 equal-weight Gaussians with means (r cos 2πk/8, r sin 2πk/8)."""
    angles = 2.0 * math.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(means, std, None, name="8gaussians")


def twenty_five_gaussians(std: float = 0.1, spacing: float = 1.0) -> GaussianMixture:
    """25 equal-weight Gaussians on the grid {-2,-1,0,1,2}² (times `spacing`)."""
    grid = spacing * np.arange(-2, 3, dtype=np.float64)
    gx, gy = np.meshgrid(grid, grid, indexing="ij")
    return GaussianMixture(np.stack([gx.ravel(), gy.ravel()], axis=1), std, None, name="25gaussians")


class Triangle(GaussianMixture):
    """The 3-Gaussian triangle of the RSM paper: μ1 = (3, −√3), μ2 = (−3, −√3), μ3 = (0, 2√3),
    std 1.  Weights are exactly 1/3 everywhere (the paper's training sampler used 0.33/0.33/0.34;
    we use the exact thirds for sampling too so samples and density agree)."""

    def __init__(self, std: float = 1.0) -> None:
        s3 = math.sqrt(3.0)
        super().__init__([[3.0, -s3], [-3.0, -s3], [0.0, 2.0 * s3]], std, [1.0, 1.0, 1.0], name="triangle")

    def tilted(self, reward_grad: Any = (-0.5, 0.0), alpha: float = 1.0) -> GaussianMixture:
        """Default: the paper's reward r(x) = −x₁/2 + 3, for which the tilted weights are
        (e^{−1.5}, e^{1.5}, 1)/Z ≈ (0.0391, 0.7856, 0.1753) and every mean shifts by (−0.5, 0)."""
        return super().tilted(reward_grad, alpha)


# ------------------------------------------------------------------------------- other toys


class Checkerboard(Dataset):
    """Uniform on the 8 "black" unit squares of a 4x4 board over [-2, 2]²: the square with lower-left
    corner (−2 + i, −2 + j) is black when i + j is even.  Density 1/8 there, 0 elsewhere."""

    def __init__(self) -> None:
        self.name = "checkerboard"
        self.dim = 2
        ij = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=np.float64)
        self._corners = ij - 2.0  # lower-left corners, [8, 2]
        self.modes = self._corners + 0.5
        # every point of a square lies within √2/2 of its centre
        self.mode_radius = math.sqrt(0.5)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        n = _check_n(n)
        rng = _rng(seed)
        square = rng.integers(0, len(self._corners), size=n)
        return (self._corners[square] + rng.random((n, 2))).astype(np.float32)

    def log_prob(self, x: Any) -> np.ndarray:
        """log(1/8) on the black squares (half-open cells [a, a+1)), −inf elsewhere."""
        x = self._rows(x, "log_prob")
        cell = np.floor(x + 2.0)
        inside = np.all((cell >= 0) & (cell <= 3), axis=1) & (cell.sum(axis=1) % 2 == 0)
        return np.where(inside, math.log(1.0 / 8.0), -np.inf)


def _log_ndtr(z: np.ndarray) -> np.ndarray:
    """log Φ(z) for the normalisation of the radius truncated at 0 (z = r_k / s is large here)."""
    z = np.asarray(z, dtype=np.float64)
    return np.log(0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in z.ravel()]).reshape(z.shape))


class Rings(Dataset):
    """Concentric rings: pick ring k with weight w_k, radius ρ ~ N(r_k, s²) truncated to ρ > 0,
    angle uniform.  Default radii (0.5, 1.0, 1.5, 2.0), s = 0.05, equal weights.

    Exact density in the plane (polar Jacobian 1/(2π|x|)):
        p(x) = Σ_k w_k φ((|x| − r_k)/s) / (s Φ(r_k/s)) / (2π |x|).
    The truncation is handled exactly by the Φ(r_k/s) normaliser (≈ 1 for the defaults); the density
    has an integrable 1/|x| singularity at the origin, where log_prob returns +inf."""

    def __init__(self, radii: Any = (0.5, 1.0, 1.5, 2.0), noise: float = 0.05, weights: Any = None) -> None:
        self.name = "rings"
        self.dim = 2
        self.radii = np.asarray(radii, dtype=np.float64).reshape(-1)
        self.noise = float(noise)
        if np.any(self.radii < 0) or self.noise <= 0:
            raise ValueError("Rings: radii must be >= 0 and noise > 0")
        k = len(self.radii)
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64).reshape(k)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("Rings: weights must be >= 0 with a positive sum")
        self.weights = w / w.sum()
        self.modes = None
        self._log_norm = _log_ndtr(self.radii / self.noise)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        n = _check_n(n)
        rng = _rng(seed)
        ring = rng.choice(len(self.radii), size=n, p=self.weights)
        rho = self.radii[ring] + self.noise * rng.standard_normal(n)
        bad = rho <= 0
        while np.any(bad):  # exact truncation by rejection (essentially never runs for the defaults)
            rho[bad] = self.radii[ring[bad]] + self.noise * rng.standard_normal(int(bad.sum()))
            bad = rho <= 0
        theta = rng.uniform(0.0, 2.0 * math.pi, size=n)
        return np.stack([rho * np.cos(theta), rho * np.sin(theta)], axis=1).astype(np.float32)

    def log_prob(self, x: Any) -> np.ndarray:
        x = self._rows(x, "log_prob")
        rho = np.sqrt(np.einsum("nd,nd->n", x, x))
        z = (rho[:, None] - self.radii) / self.noise
        with np.errstate(divide="ignore"):
            radial = (np.log(self.weights) - 0.5 * z ** 2 - 0.5 * math.log(2.0 * math.pi)
                      - math.log(self.noise) - self._log_norm)
            return _logsumexp(radial, axis=1) - np.log(2.0 * math.pi * rho)


class TwoMoons(Dataset):
    """Two interleaved half circles (upper: (cos θ, sin θ); lower: (1 − cos θ, 0.5 − sin θ)), θ uniform
    on [0, π], Gaussian noise of std `noise` added in those unit-radius coordinates, then centred and
    scaled by 4/3 so x spans about [−2, 2] (y about [−1, 1]).  No closed-form density."""

    def __init__(self, noise: float = 0.05) -> None:
        self.name = "two_moons"
        self.dim = 2
        self.noise = float(noise)
        self.modes = None

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        n = _check_n(n)
        rng = _rng(seed)
        upper = rng.random(n) < 0.5
        theta = rng.uniform(0.0, math.pi, size=n)
        x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
        y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
        pts = np.stack([x, y], axis=1) + self.noise * rng.standard_normal((n, 2))
        return ((pts - np.array([0.5, 0.25])) * (4.0 / 3.0)).astype(np.float32)


class Spirals(Dataset):
    """Two interleaved spirals: θ = θ0 + turns·2π·√u (u uniform, so points are spread evenly along
    the arc), radius 2θ/θ_max, the second spiral is the first rotated by π; plus Gaussian noise of
    std `noise`.  Fits in about [−2, 2]².  No closed-form density."""

    def __init__(self, noise: float = 0.05, turns: float = 1.5) -> None:
        self.name = "spirals"
        self.dim = 2
        self.noise = float(noise)
        self.turns = float(turns)
        self.modes = None

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        n = _check_n(n)
        rng = _rng(seed)
        theta0 = 0.5
        theta_max = theta0 + 2.0 * math.pi * self.turns
        theta = theta0 + (theta_max - theta0) * np.sqrt(rng.random(n))
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        r = 2.0 * theta / theta_max
        pts = sign[:, None] * np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        return (pts + self.noise * rng.standard_normal((n, 2))).astype(np.float32)


# ------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Dataset]] = {
    "8gaussians": eight_gaussians,
    "25gaussians": twenty_five_gaussians,
    "triangle": Triangle,
    "checkerboard": Checkerboard,
    "rings": Rings,
    "two_moons": TwoMoons,
    "spirals": Spirals,
}


def names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> Dataset:
    """Build the dataset `name`; kwargs go to its constructor (e.g. get("8gaussians", std=0.1))."""
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(names())}") from None
    return factory(**kwargs)


def register(name: str, factory: Callable[..., Dataset], *, overwrite: bool = False) -> None:
    """Add a dataset factory to the registry (so scripts can refer to it by name)."""
    if not isinstance(name, str) or not name:
        raise TypeError("register(): name must be a non-empty str")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register(): dataset {name!r} already exists (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def __getattr__(name: str):
    """The image data sets (rsm.image_datasets) are reachable here too: rsm.datasets.digits,
    rsm.datasets.shapes, ... (imported on first use)."""
    from . import image_datasets

    if name in image_datasets.__all__:
        return getattr(image_datasets, name)
    raise AttributeError(f"module 'rsm.datasets' has no attribute {name!r}")
