"""Value-guidance estimators Psi_hat(x_t) ~ Psi(x_t) = grad_x log E[exp(r(x0)/alpha) | x_t]
(RSM-SPEC §3.2, §7), in score units, for diagnostics and the estimator study (Fig. 2).

Each estimator takes states x[n, D] at step `step` of a time grid `ts` and returns Psi_hat[n, D];
they run the C samplers and the model's VJP. `exact_value_gradient` gives the ground truth for
Gaussian-mixture data with a linear reward (closed form, RSM-SPEC §12.4).

  zeroth_order       (sigma_i / B_i) mean_k A_k z_k / alpha over N continuations from each state:
                     one stochastic step (the z), then the SDE ("sde") or the ODE ("localized",
                     stochasticity localisation) to t = 0. A = r (no control variate), r - mean r
                     (control variate) or, with weighting="exponential", alpha (e^{r/alpha} /
                     mean e^{r/alpha} - 1), which targets grad log E e^{r/alpha} without the
                     first-order expansion in r / alpha.
  first_order_tweedie   grad_x r(x0_hat(x)) / alpha through the network (jacobian=True, "DPS") or
                     grad r at x0_hat with the Jacobian dropped (VGG-Flow's current-state g).
  first_order_terminal  mean over N SDE continuations of grad r(x0) / alpha (the RSM-FO estimator;
                     identity Jacobian).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .rewards import Reward
from .sampling import sample, step_coefficients


def _reward(reward: Any) -> Reward:
    return reward if isinstance(reward, Reward) else Reward(reward)


def _score_coefficient(path: Any, ts: np.ndarray, step: int, sampler: str, noise_level: float) -> tuple[float, float]:
    """(std_i, B_i) of step `step`: B = d mean / d score = K * conv (conv = d u / d s at fixed x)."""
    c = step_coefficients(path, ts, sampler, noise_level=noise_level)[step]
    coef = path.coef(ts[step])
    if path.kind == "flow":
        conv = -ts[step] / (1 - ts[step])   # v = -(x + t s)/(1 - t)
    else:
        conv = -coef["sigma"]               # eps = -sigma s
    return c["std"], c["K"] * conv


def zeroth_order(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int, n_samples: int,
                 *, control_variate: bool = True, continuation: str = "sde", alpha: float = 1.0,
                 weighting: str = "linear", noise_level: float = 0.7, seed: int = 0) -> np.ndarray:
    reward = _reward(reward)
    x = np.ascontiguousarray(x)
    ts = np.asarray(ts, dtype=np.float64)
    n, dim = x.shape
    sampler = "sde" if path.kind == "flow" else "ddpm"
    grid = ts[step:]
    window = None if continuation == "sde" else (0, 1)
    if continuation not in ("sde", "localized"):
        raise ValueError(f"zeroth_order(): continuation must be 'sde' or 'localized', got {continuation!r}")
    traj = sample(model, n * n_samples, path, sampler, ts=grid, x_init=np.repeat(x, n_samples, axis=0),
                  noise_level=noise_level, sde_window=window, seed=seed, return_trajectory=True)
    r, _, _ = reward(_as_tensor(traj.x), None)
    r = r.reshape(n, n_samples)
    z = traj.noises[0].reshape(n, n_samples, dim).astype(np.float64)
    if weighting == "exponential":
        e = np.exp((r - r.max(1, keepdims=True)) / alpha)
        adv = alpha * (e / e.mean(1, keepdims=True) - 1.0)
    elif weighting == "linear":
        adv = r - r.mean(1, keepdims=True) if control_variate else r
    else:
        raise ValueError(f"zeroth_order(): weighting must be 'linear' or 'exponential', got {weighting!r}")
    std, B = _score_coefficient(path, grid, 0, sampler, noise_level)
    return (std / B) * (adv[:, :, None] * z).mean(1) / alpha


def first_order_tweedie(model: Any, path: Any, reward: Any, x: Any, t: float, *,
                        jacobian: bool = True, alpha: float = 1.0) -> np.ndarray:
    reward = _reward(reward)
    if not reward.differentiable:
        raise ValueError("first_order_tweedie(): the reward must be differentiable")
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    u = np.from_dlpack(model.forward(x, t))
    x0_hat = np.from_dlpack(path.x0_hat(x, u, np.full(n, t)))
    _, g, _ = reward(_as_tensor(np.ascontiguousarray(x0_hat)), None)
    g = g.astype(x.dtype)
    if not jacobian:
        return g / alpha
    # x0_hat = p_x x + p_u u(x): (d x0_hat / dx)^T g = p_x g + p_u J_u^T g
    p_x = np.from_dlpack(path.x0_hat(np.ones_like(x[:1]), np.zeros_like(x[:1]), np.full(1, t)))[0, 0]
    p_u = np.from_dlpack(path.x0_hat(np.zeros_like(x[:1]), np.ones_like(x[:1]), np.full(1, t)))[0, 0]
    dx, _ = model.vjp(x, t, np.ascontiguousarray((p_u * g).astype(x.dtype)))
    return (p_x * g + np.asarray(np.from_dlpack(dx) if hasattr(dx, "__dlpack__") else dx)) / alpha


def first_order_terminal(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int,
                         n_samples: int, *, alpha: float = 1.0, noise_level: float = 0.7,
                         seed: int = 0) -> np.ndarray:
    reward = _reward(reward)
    x = np.ascontiguousarray(x)
    n, dim = x.shape
    ts = np.asarray(ts, dtype=np.float64)
    sampler = "sde" if path.kind == "flow" else "ddpm"
    traj = sample(model, n * n_samples, path, sampler, ts=ts[step:], noise_level=noise_level,
                  x_init=np.repeat(x, n_samples, axis=0), seed=seed, return_trajectory=True)
    _, g, _ = reward(_as_tensor(traj.x), None)
    return g.reshape(n, n_samples, dim).mean(1) / alpha


def exact_value_gradient(mixture: Any, path: Any, x: Any, t: float, reward_grad: Any,
                         alpha: float = 1.0) -> np.ndarray:
    """Psi(x, t) = grad log p*_t(x) - grad log p_t(x) for p0 an isotropic Gaussian mixture and a
    linear reward with gradient c: p* is the tilted mixture (closed form), both noised by the path's
    (alpha(t), sigma(t)) (RSM-SPEC §12.4). Exact for the KL-regularised optimum (memoryless)."""
    c = path.coef(t)
    tilted = mixture.tilted(reward_grad, alpha)
    x = np.asarray(x, dtype=np.float64)
    return tilted.marginal_score(x, c["alpha"], c["sigma"]) - mixture.marginal_score(x, c["alpha"], c["sigma"])


def _as_tensor(x: np.ndarray) -> Any:
    from . import from_dlpack

    return from_dlpack(np.ascontiguousarray(x))


def first_order_next(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int,
                     n_samples: int = 1, *, x_next: Any = None, jacobian: bool = True,
                     alpha: float = 1.0, noise_level: float = 0.7, pcpo_weight: float = 0.0,
                     seed: int = 0) -> np.ndarray:
    """FO-next (RSM-SPEC §7.1): Psi_hat(x_t) = g = grad_{x'} r(x0_hat(x')) / alpha at the NEXT
    state x' of one stochastic step t_i -> t_{i+1} from x, with Tweedie's x0_hat of `model` at
    t_{i+1} and (jacobian=True) the gradient through the network, averaged over n_samples next
    states. Given x_next[n, D] (the next states a rollout actually sampled: Residual nabla-DB,
    SQDF), g is evaluated there and nothing is sampled (n_samples must be 1)."""
    x = np.ascontiguousarray(x)
    ts = np.asarray(ts, dtype=np.float64)
    n, dim = x.shape
    if not 0 <= step < len(ts) - 1:
        raise ValueError(f"first_order_next(): step={step} must be in [0, {len(ts) - 1})")
    if x_next is None:
        sampler = "sde" if path.kind == "flow" else "ddpm"
        traj = sample(model, n * n_samples, path, sampler, ts=ts[step:step + 2],
                      x_init=np.repeat(x, n_samples, axis=0), noise_level=noise_level,
                      pcpo_weight=pcpo_weight, seed=seed, return_trajectory=True)
        x_next = traj.x
    else:
        if n_samples != 1:
            raise ValueError(f"first_order_next(): n_samples={n_samples} with given x_next: must be 1")
        x_next = np.ascontiguousarray(x_next, dtype=x.dtype)
        if x_next.shape != x.shape:
            raise ValueError(f"first_order_next(): x_next has shape {x_next.shape}, expected {x.shape}")
    g = first_order_tweedie(model, path, reward, x_next, float(ts[step + 1]), jacobian=jacobian,
                            alpha=alpha)
    return np.asarray(g).reshape(n, n_samples, dim).mean(1)
