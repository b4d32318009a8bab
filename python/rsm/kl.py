"""KL divergence between the path measures of two models under one stochastic sampler
(THEORY.md §2.3, §11): the method-independent "how far has the policy moved" of a fine-tuning run.

Both measures start at the same prior and take Gaussian steps x' = mu(x) + std_i z with the same
std_i, mu_i(x) = A_i x + K_i u(x, t_i) (rsm.sampling.step_coefficients). The chain rule of KL
then gives, exactly,

    KL(P_theta || P_ref) = E_{x ~ P_theta} sum_{i: std_i > 0} |mu_theta,i(x_i) - mu_ref,i(x_i)|^2 / (2 std_i^2)
                         = E_{x ~ P_theta} sum_i K_i^2 |u_theta(x_i, t_i) - u_ref(x_i, t_i)|^2 / (2 std_i^2),

a Monte-Carlo average over trajectories of theta only in the states it visits. Steps with
std_i = 0 (DDPM into t = 0) have no density and are left out. Values are nats per sample (summed
over the data dimensions), in float64 whatever the models' dtype."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._args import seed_int
from .sampling import _sampler_kind, sample, step_coefficients


def check_samples(n: Any, func: str, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{func}(): {name}={n!r} must be a positive int (trajectories)")
    return int(n)


def check_grid(ts: Any, func: str, name: str) -> np.ndarray:
    try:
        grid = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{func}(): {name} must be a 1-d array of times, got {type(ts).__name__}") from None
    if (grid.ndim != 1 or grid.shape[0] < 2 or not np.all(np.isfinite(grid))
            or np.any(np.diff(grid) >= 0) or grid[0] > 1 or grid[-1] < 0):
        raise ValueError(f"{func}(): {name} must be a strictly decreasing 1-d grid of times in "
                         f"[0, 1] with >= 2 points, got {np.asarray(ts)!r}")
    return grid


def check_noise_level(a: Any, func: str, name: str) -> float:
    if isinstance(a, bool):
        raise ValueError(f"{func}(): {name} must be a float, got bool")
    try:
        a = float(a)
    except (TypeError, ValueError):
        raise ValueError(f"{func}(): {name} must be a float, got {type(a).__name__}") from None
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"{func}(): {name}={a} must be finite and > 0 (at 0 the SDE is an ODE, "
                         "whose path measures have no density)")
    return a


def path_kl_terms(policy: Any, ref: Any, path: Any, ts: Any, n: int, *, sampler: str = "sde",
                  noise_level: float = 0.7, seed: int = 0, cond: Any = None) -> tuple[np.ndarray, int]:
    """The per-step terms [steps] of path_kl and the network evaluations they took (n per
    sampler step of the policy, as counted by the C sampler, plus n per reference forward)."""
    n = check_samples(n, "path_kl", "n")
    ts = check_grid(ts, "path_kl", "ts")
    noise_level = check_noise_level(noise_level, "path_kl", "noise_level")
    kind, eta = _sampler_kind(sampler, None, "path_kl")
    if kind in ("euler", "heun") or (kind == "ddim" and eta == 0.0):
        raise ValueError(f"path_kl(): sampler must be stochastic ('sde', 'ddpm' or 'ddim' with "
                         f"eta > 0), got {sampler!r}")
    seed = seed_int(seed, "path_kl")
    traj = sample(policy, n, path, sampler, ts=ts, noise_level=noise_level, seed=int(seed),
                  cond=cond, return_trajectory=True)
    coef = step_coefficients(path, ts, sampler, noise_level=noise_level)
    terms, nfe = np.zeros(len(coef)), int(traj.nfe)
    for i, c in enumerate(coef):
        if not c["std"] > 0:
            continue
        u_ref = np.from_dlpack(ref.forward(traj.xs[i], ts[i], cond)).astype(np.float64)
        nfe += n
        du = traj.outputs[i].astype(np.float64).reshape(n, -1) - u_ref.reshape(n, -1)
        terms[i] = c["K"] ** 2 / (2.0 * c["std"] ** 2) * float((du * du).sum(1).mean())
    return terms, nfe


def path_kl(policy: Any, ref: Any, path: Any, ts: Any, n: int = 256, *, sampler: str = "sde",
            noise_level: float = 0.7, seed: int = 0, cond: Any = None, per_step: bool = False) -> Any:
    """Monte-Carlo KL(P_policy || P_ref) between the path measures of `policy` and `ref` under
    `sampler` ("sde": Flow-GRPO's SDE with noise level `noise_level` on the flow path; "ddpm" on
    the VP path) on the grid ts, from n trajectories of the policy drawn with `seed` (see the
    module docstring; nats per sample). cond: the models' conditions for the n trajectories.
    per_step=True returns the terms [steps] (their sum is the KL) instead of the sum.
    rsm.Trainer.path_kl calls this with the trainer's sampler, grid, noise level and seed."""
    terms, _ = path_kl_terms(policy, ref, path, ts, n, sampler=sampler, noise_level=noise_level,
                             seed=seed, cond=cond)
    return terms if per_step else float(terms.sum())
