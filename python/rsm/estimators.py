"""Value-guidance estimators Psi_hat(x_t) ~ Psi(x_t) = grad_x log E[exp(r(x0)/alpha) | x_t]
(THEORY.md §3.2, §7), in score units, for diagnostics and the estimator study (Fig. 2).

Each estimator takes states x[n, D] at step `step` of a time grid `ts` and returns Psi_hat[n, D];
they run the C samplers and the model's VJP. `exact_value_gradient` gives the ground truth for
Gaussian-mixture data with a linear reward (closed form, THEORY.md §12.4).

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
                        jacobian: bool = True, alpha: float = 1.0, cond: Any = None,
                        reward_cond: Any = None) -> np.ndarray:
    reward = _reward(reward)
    if not reward.differentiable:
        raise ValueError("first_order_tweedie(): the reward must be differentiable")
    x = np.ascontiguousarray(x)
    n = x.shape[0]
    # cond goes to the model (its own layout); the reward gets reward_cond (default: cond)
    u = np.from_dlpack(model.forward(x, t, cond))
    x0_hat = np.from_dlpack(path.x0_hat(x, u, np.full(n, t)))
    _, g, _ = reward(_as_tensor(np.ascontiguousarray(x0_hat)), cond if reward_cond is None else reward_cond)
    g = g.astype(x.dtype)
    if not jacobian:
        return g / alpha
    # x0_hat = p_x x + p_u u(x): (d x0_hat / dx)^T g = p_x g + p_u J_u^T g
    p_x = np.from_dlpack(path.x0_hat(np.ones_like(x[:1]), np.zeros_like(x[:1]), np.full(1, t)))[0, 0]
    p_u = np.from_dlpack(path.x0_hat(np.zeros_like(x[:1]), np.ones_like(x[:1]), np.full(1, t)))[0, 0]
    dx, _ = model.vjp(x, t, np.ascontiguousarray((p_u * g).astype(x.dtype)), cond)
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


# ---- estimator-study additions (Fig. 2; THEORY.md §7.1, §7.2, §8.2-8.4) ---------------------------
#
#   first_order_lookahead   FO-k-ODE: k probability-flow ODE steps (DDIM eta = 0 on VP, Euler on
#                           flow) from t to 0, Psi_hat = grad_x r(x0^ODE(x)) / alpha by the adjoint
#                           through the k steps (model VJPs). k = 1 is Tweedie (DPS).
#   first_order_partial     FO-partial: N reparameterised stochastic rollouts from ts[step] to
#                           ts[end], Tweedie at ts[end], Psi_hat = grad_x mean_n r(x0_hat) / alpha
#                           through the rollout (noises held fixed) and the network.
#   zeroth_order_partial    the same rollouts, zeroth order: (std_i/B_i) mean_n (R_n - R_bar) z_n /
#                           alpha with R = r(x0_hat(x_end)) (ZO lookahead, THEORY.md §7.2).
#   zeroth_order_branching  Branch-GRPO trees: N = roots x n_branch^n_split endpoints per state,
#                           every row split into n_branch children before n_split evenly spaced
#                           steps (the first at the state itself); control-variate ZO over the
#                           endpoints. branching_cost gives the network evaluations per endpoint.
# Stochasticity localisation is zeroth_order(..., continuation="localized").


def _check_states(x: Any, func: str) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{func}(): x must be states [n, D] with n >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{func}(): x must be finite")
    return x


def _check_count(value: Any, func: str, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{func}(): {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _stochastic_sampler(path: Any) -> str:
    return "sde" if path.kind == "flow" else "ddpm"


def _tweedie_coefficients(path: Any, t: float, dtype: Any) -> tuple[float, float]:
    """(p_x, p_u) with x0_hat = p_x x + p_u u (affine in the native output u at fixed t)."""
    one = np.ones((1, 1), dtype=dtype)
    zero = np.zeros((1, 1), dtype=dtype)
    p_x = float(np.from_dlpack(path.x0_hat(one, zero, np.full(1, t)))[0, 0])
    p_u = float(np.from_dlpack(path.x0_hat(zero, one, np.full(1, t)))[0, 0])
    return p_x, p_u


def _input_vjp(model: Any, x: np.ndarray, t: float, cotangent: np.ndarray) -> np.ndarray:
    """J_u(x, t)^T cotangent through the model's own VJP (C for the MLP), as float64."""
    dx, _ = model.vjp(np.ascontiguousarray(x), t, np.ascontiguousarray(cotangent.astype(x.dtype)))
    return np.asarray(np.from_dlpack(dx) if hasattr(dx, "__dlpack__") else dx, dtype=np.float64)


def _adjoint(model: Any, traj: Any, coefs: list[dict], adjoint: np.ndarray) -> np.ndarray:
    """Pull a cotangent on the last state of `traj` back to its first: every step is
    x' = A x + K u(x, t) + std z with z held fixed, so a <- A a + J_u^T (K a) (THEORY.md §2.3)."""
    for j in range(traj.steps - 1, -1, -1):
        c = coefs[j]
        adjoint = c["A"] * adjoint + _input_vjp(model, traj.xs[j], float(traj.ts[j]), c["K"] * adjoint)
    return adjoint


def _even_grid(path: Any, t_start: float, t_end: float, steps: int) -> np.ndarray:
    """steps + 1 evenly spaced times from t_start down to t_end; on a discrete VP table they are
    rounded to the table's indices."""
    ts = np.linspace(t_start, t_end, steps + 1)
    if getattr(path, "discrete", False):
        T = path.num_train_steps
        ts = np.round(ts * T) / T
        if len(np.unique(ts)) != len(ts):
            raise ValueError(f"{steps} steps do not fit between t = {t_start} and {t_end} on a "
                             f"{T}-step table")
    return ts


def first_order_lookahead(model: Any, path: Any, reward: Any, x: Any, t: float, k: int, *,
                          alpha: float = 1.0) -> np.ndarray:
    """FO-k-ODE (THEORY.md §7.1, toy "SQDF_2stepODE" for k = 2): integrate the probability-flow ODE
    from t to 0 in k even steps (DDIM eta = 0 on VP paths, Euler on flow paths; each step is one
    network evaluation, the last lands on x0 = Tweedie of the last state) and return
    grad_x r(x0^ODE(x)) / alpha, the adjoint through the k steps by the model's VJP.
    Deterministic; k = 1 is first_order_tweedie(jacobian=True)."""
    reward = _reward(reward)
    if not reward.differentiable:
        raise ValueError("first_order_lookahead(): the reward must be differentiable")
    x = _check_states(x, "first_order_lookahead")
    k = _check_count(k, "first_order_lookahead", "k")
    if not 0.0 < float(t) <= 1.0:
        raise ValueError(f"first_order_lookahead(): t must be in (0, 1], got {t!r}")
    sampler = "ode" if path.kind == "flow" else "ddim"
    ts = _even_grid(path, float(t), 0.0, k)
    traj = sample(model, x.shape[0], path, sampler, ts=ts, x_init=x, return_trajectory=True)
    coefs = step_coefficients(path, ts, sampler)
    _, g, _ = reward(_as_tensor(traj.x), None)
    return _adjoint(model, traj, coefs, np.asarray(g, dtype=np.float64)) / alpha


def _partial_rollouts(model: Any, path: Any, x: np.ndarray, ts: np.ndarray, step: int,
                      end: int, n_samples: int, noise_level: float, seed: int, func: str):
    ts = np.asarray(ts, dtype=np.float64)
    step = _check_count(step, func, "step", 0)
    end = _check_count(end, func, "end", 0)
    n_samples = _check_count(n_samples, func, "n_samples")
    if not step < end < len(ts):
        raise ValueError(f"{func}(): need step < end < len(ts) = {len(ts)}, got step={step}, end={end}")
    n = x.shape[0]
    sampler = _stochastic_sampler(path)
    grid = ts[step:end + 1]
    traj = sample(model, n * n_samples, path, sampler, ts=grid, x_init=np.repeat(x, n_samples, axis=0),
                  noise_level=noise_level, seed=seed, return_trajectory=True)
    t_end = float(grid[-1])
    u = np.from_dlpack(model.forward(traj.x, t_end))
    x0_hat = np.ascontiguousarray(np.from_dlpack(path.x0_hat(traj.x, u, np.full(len(u), t_end))))
    return traj, grid, sampler, x0_hat


def first_order_partial(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int, end: int,
                        n_samples: int, *, alpha: float = 1.0, noise_level: float = 0.7,
                        seed: int = 0) -> np.ndarray:
    """FO-partial (THEORY.md §7.1, toy "lookahead --mode first"): n_samples reparameterised
    stochastic rollouts (DDPM on VP, Flow-GRPO's SDE on flow) from ts[step] to ts[end], Tweedie
    x0_hat at ts[end], and Psi_hat = grad_x mean_n r(x0_hat(x_end^n)) / alpha, pulled back through
    the Tweedie map, the rollout's steps (noises fixed) and the network by the model's VJP."""
    reward = _reward(reward)
    if not reward.differentiable:
        raise ValueError("first_order_partial(): the reward must be differentiable")
    x = _check_states(x, "first_order_partial")
    traj, grid, sampler, x0_hat = _partial_rollouts(model, path, x, ts, step, end, n_samples,
                                                    noise_level, seed, "first_order_partial")
    _, g, _ = reward(_as_tensor(x0_hat), None)
    g = np.asarray(g, dtype=np.float64)
    p_x, p_u = _tweedie_coefficients(path, float(grid[-1]), traj.x.dtype)
    adjoint = p_x * g + _input_vjp(model, traj.x, float(grid[-1]), p_u * g)
    coefs = step_coefficients(path, grid, sampler, noise_level=noise_level)
    adjoint = _adjoint(model, traj, coefs, adjoint)
    n, dim = x.shape
    return adjoint.reshape(n, n_samples, dim).mean(1) / alpha


def zeroth_order_partial(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int, end: int,
                         n_samples: int, *, alpha: float = 1.0, noise_level: float = 0.7,
                         seed: int = 0) -> np.ndarray:
    """Zeroth-order lookahead (THEORY.md §7.2, toy "lookahead --mode zeroth"): the rollouts of
    first_order_partial, the return R = r(x0_hat(x_end)) scored at ts[end] instead of at t = 0,
    and Psi_hat = (std_0 / B_0) mean_n (R_n - R_bar) z_n / alpha with z the first step's noise."""
    reward = _reward(reward)
    x = _check_states(x, "zeroth_order_partial")
    traj, grid, sampler, x0_hat = _partial_rollouts(model, path, x, ts, step, end, n_samples,
                                                    noise_level, seed, "zeroth_order_partial")
    r, _, _ = reward(_as_tensor(x0_hat), None)
    n, dim = x.shape
    r = np.asarray(r, dtype=np.float64).reshape(n, n_samples)
    z = traj.noises[0].reshape(n, n_samples, dim).astype(np.float64)
    std, B = _score_coefficient(path, grid, 0, sampler, noise_level)
    return (std / B) * ((r - r.mean(1, keepdims=True))[:, :, None] * z).mean(1) / alpha


def _branch_steps(steps: int, n_split: int) -> list[int]:
    return [int(round(j * steps / n_split)) for j in range(n_split)]


def branching_cost(steps: int, n_split: int, n_branch: int) -> float:
    """Network evaluations per endpoint of a branching tree over `steps` steps, relative to
    independent trajectories (THEORY.md §8.4: (sum_j n_branch^j segment_j) / (steps E)); 1 for
    (1, 1). Counts exactly what zeroth_order_branching's sampler runs."""
    steps = _check_count(steps, "branching_cost", "steps")
    n_split = _check_count(n_split, "branching_cost", "n_split")
    n_branch = _check_count(n_branch, "branching_cost", "n_branch")
    if n_split > steps:
        raise ValueError(f"branching_cost(): n_split = {n_split} > steps = {steps}")
    bounds = _branch_steps(steps, n_split) + [steps]
    evals = sum(n_branch ** (j + 1) * (bounds[j + 1] - bounds[j]) for j in range(n_split))
    return evals / (steps * n_branch ** n_split)


def zeroth_order_branching(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int,
                           n_samples: int, n_split: int, n_branch: int, *, alpha: float = 1.0,
                           noise_level: float = 0.7, seed: int = 0) -> np.ndarray:
    """Branch-GRPO's estimator (THEORY.md §7.2, §8.4): from each state, n_samples / E roots with
    E = n_branch^n_split endpoints each; every row splits into n_branch children before the
    n_split evenly spaced steps round(j S / n_split) of the S remaining steps (the first split at
    the state itself, so the first step's noises already differ). Psi_hat = (std_0 / B_0)
    mean over endpoints (r - r_bar) z_1 / alpha; endpoints share prefixes, so they cost
    branching_cost(S, n_split, n_branch) network evaluations each."""
    reward = _reward(reward)
    x = _check_states(x, "zeroth_order_branching")
    n_split = _check_count(n_split, "zeroth_order_branching", "n_split")
    n_branch = _check_count(n_branch, "zeroth_order_branching", "n_branch")
    n_samples = _check_count(n_samples, "zeroth_order_branching", "n_samples")
    ts = np.asarray(ts, dtype=np.float64)
    grid = ts[_check_count(step, "zeroth_order_branching", "step", 0):]
    steps = len(grid) - 1
    if steps < n_split:
        raise ValueError(f"zeroth_order_branching(): {steps} steps after `step` cannot hold "
                         f"n_split = {n_split} splits")
    endpoints = n_branch ** n_split
    if n_samples % endpoints:
        raise ValueError(f"zeroth_order_branching(): n_samples = {n_samples} must be a multiple of "
                         f"n_branch^n_split = {endpoints}")
    roots = n_samples // endpoints
    n, dim = x.shape
    sampler = _stochastic_sampler(path)
    traj = sample(model, n * roots, path, sampler, ts=grid, x_init=np.repeat(x, roots, axis=0),
                  noise_level=noise_level, seed=seed, return_trajectory=True,
                  branch_steps=_branch_steps(steps, n_split), branch_factor=n_branch)
    r, _, _ = reward(_as_tensor(traj.x), None)
    r = np.asarray(r, dtype=np.float64).reshape(n, n_samples)   # children are contiguous rows
    z = traj.noises[0].reshape(n, n_samples, dim).astype(np.float64)
    std, B = _score_coefficient(path, grid, 0, sampler, noise_level)
    return (std / B) * ((r - r.mean(1, keepdims=True))[:, :, None] * z).mean(1) / alpha


def exact_value_gradient(mixture: Any, path: Any, x: Any, t: float, reward_grad: Any,
                         alpha: float = 1.0) -> np.ndarray:
    """Psi(x, t) = grad log p*_t(x) - grad log p_t(x) for p0 an isotropic Gaussian mixture and a
    linear reward with gradient c: p* is the tilted mixture (closed form), both noised by the path's
    (alpha(t), sigma(t)) (THEORY.md §12.4). Exact for the KL-regularised optimum (memoryless)."""
    c = path.coef(t)
    tilted = mixture.tilted(reward_grad, alpha)
    x = np.asarray(x, dtype=np.float64)
    return tilted.marginal_score(x, c["alpha"], c["sigma"]) - mixture.marginal_score(x, c["alpha"], c["sigma"])


def _as_tensor(x: np.ndarray) -> Any:
    from ._C import from_dlpack

    return from_dlpack(np.ascontiguousarray(x))


def first_order_next(model: Any, path: Any, reward: Any, x: Any, ts: Any, step: int,
                     n_samples: int = 1, *, x_next: Any = None, jacobian: bool = True,
                     alpha: float = 1.0, noise_level: float = 0.7, pcpo_weight: float = 0.0,
                     seed: int = 0, cond: Any = None, reward_cond: Any = None) -> np.ndarray:
    """FO-next (THEORY.md §7.1): Psi_hat(x_t) = g = grad_{x'} r(x0_hat(x')) / alpha at the NEXT
    state x' of one stochastic step t_i -> t_{i+1} from x, with Tweedie's x0_hat of `model` at
    t_{i+1} and (jacobian=True) the gradient through the network, averaged over n_samples next
    states. Given x_next[n, D] (the next states a rollout actually sampled: Residual nabla-DB,
    SQDF), g is evaluated there and nothing is sampled (n_samples must be 1). cond: the rows'
    conditions in the model's layout; reward_cond: what the reward receives (default: cond)."""
    x = np.ascontiguousarray(x)
    ts = np.asarray(ts, dtype=np.float64)
    n, dim = x.shape
    if not 0 <= step < len(ts) - 1:
        raise ValueError(f"first_order_next(): step={step} must be in [0, {len(ts) - 1})")
    if x_next is None:
        sampler = "sde" if path.kind == "flow" else "ddpm"
        traj = sample(model, n * n_samples, path, sampler, ts=ts[step:step + 2],
                      x_init=np.repeat(x, n_samples, axis=0), noise_level=noise_level,
                      pcpo_weight=pcpo_weight, seed=seed, return_trajectory=True,
                      cond=None if cond is None else np.repeat(np.asarray(cond), n_samples, axis=0))
        x_next = traj.x
        if cond is not None:
            cond = np.repeat(np.asarray(cond), n_samples, axis=0)
            reward_cond = None if reward_cond is None else np.repeat(np.asarray(reward_cond), n_samples, axis=0)
    else:
        if n_samples != 1:
            raise ValueError(f"first_order_next(): n_samples={n_samples} with given x_next: must be 1")
        x_next = np.ascontiguousarray(x_next, dtype=x.dtype)
        if x_next.shape != x.shape:
            raise ValueError(f"first_order_next(): x_next has shape {x_next.shape}, expected {x.shape}")
    g = first_order_tweedie(model, path, reward, x_next, float(ts[step + 1]), jacobian=jacobian,
                            alpha=alpha, cond=cond, reward_cond=reward_cond)
    return np.asarray(g).reshape(n, n_samples, dim).mean(1)
