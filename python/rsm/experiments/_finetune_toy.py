"""The 2D fine-tuning toy shared by the Fig. 3-6 and Fig. 8-11 experiments (THEORY.md §8, §9, §14).

Reference: an MLP pretrained on 8 gaussians (flow matching, or denoising on the VP path for the
diffusion presets). Reward: r(x) = -|x - (2, 0)|^2 / 2, alpha = 1, so the reward-tilted target
p* ∝ p_data exp(r / alpha) is again a Gaussian mixture with an exact density
(GaussianMixture.tilted_quadratic).

What the paper could not measure, we can: the fine-tuned model's deterministic sampler is an
invertible map x_S -> x_0 made of steps x' = A x + K u(x, t), so its samples have the exact density

    log p_theta(x_0) = log N(x_S; 0, I) - sum_i log |det(A_i I + K_i du/dx(x_i, t_i))|

(the Jacobian du/dx of the 2D network from two VJPs per step). Together with the exact densities
of p_data and p* this gives KL(p_theta || p_data) and KL(p_theta || p*) by plain Monte Carlo over
the model's own samples, with no density estimation.

Those KLs are of the terminal marginal. Every checkpoint also carries `kl_path`, the comparable
whole-path KL(P_theta || P_ref) that the Trainer reports (Trainer.path_kl, the history column;
rsm.kl.path_kl): here with ONE protocol for every method of a path kind, whatever grid, sampler
and noise level its preset trains with (the Trainer's own column uses the preset's grid and noise
level, so it would differ between presets): flow: Flow-GRPO's SDE at noise level 0.7 on the
10-step SD3 grid; VP: DDPM on 20 uniform steps; the same KL_PATH_SEED for every model and
checkpoint (common random numbers), so the differences between methods are not sampling noise
of independent draws."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

import rsm
from rsm import datasets, metrics
from rsm.sampling import sample, step_coefficients, time_grid

CENTER = np.array([2.0, 0.0])
ALPHA = 1.0
# the path-KL protocol shared by every method (module docstring): (sampler, grid, steps)
KL_PATH = {"flow": ("sde", "sd3", 10), "vp": ("ddpm", "uniform", 20)}
KL_PATH_NOISE = 0.7
KL_PATH_SEED = 20240


@dataclass
class Toy:
    """Everything one experiment run shares: data, reward, exact target, pretrained references."""

    data: Any
    reward: Any
    target: Any
    target_x: np.ndarray
    refs: dict            # path kind ("flow" / "vp") -> pretrained MLP
    paths: dict           # path kind -> rsm path
    eval_n: int
    eval_steps: int
    kl_path_n: int        # trajectories of the path KL (module docstring)


def full_seeds(default: int = 3) -> int:
    """Seeds of a full-mode run: `default`, or RSM_EXPERIMENT_SEEDS when set (to fit a run into
    a deadline; the summary records the seeds it ran)."""
    value = os.environ.get("RSM_EXPERIMENT_SEEDS", "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"RSM_EXPERIMENT_SEEDS must be a positive integer, got {value!r}")
    return int(value)


def make_toy(quick: bool, seed: int = 0, kinds: tuple[str, ...] = ("flow",)) -> Toy:
    """Pretrain the references once per run (seconds) and build the exact target."""
    data = datasets.get("8gaussians")
    hidden, depth, steps = (64, 2, 800) if quick else (96, 2, 2500)
    train = data.sample(20_000 if quick else 50_000, seed=seed)
    refs, paths = {}, {}
    for kind in kinds:
        path = rsm.FlowPath() if kind == "flow" else rsm.VPPath("linear")
        model = rsm.MLP(2, hidden=hidden, depth=depth, seed=seed)
        rsm.pretrain(model, train, path, steps=steps, batch_size=256, lr=2e-3, seed=seed,
                     warmup_steps=100, lr_schedule="cosine", progress=False)
        refs[kind], paths[kind] = model, path
    reward = rsm.rewards.quadratic(CENTER, scale=1.0)
    target = data.tilted_quadratic(CENTER, 1.0, ALPHA)
    n = 600 if quick else 2000
    return Toy(data, reward, target, target.sample(n, seed=seed + 101).astype(np.float64), refs,
               paths, n, 40 if quick else 50, 128 if quick else 512)


def sample_with_log_density(model: Any, path: Any, n: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x0 [n, 2] float64, log p_model(x0) [n]) for the deterministic sampler (Euler ODE on the
    flow path, DDIM eta = 0 on the VP path) on a uniform grid, by the change of variables above."""
    kind = "ode" if path.kind == "flow" else "ddim"
    ts = time_grid(steps, path, "uniform")
    traj = sample(model, n, path, kind, ts=ts, seed=seed, return_trajectory=True)
    coefs = step_coefficients(path, ts, kind)
    x_start = traj.xs[0].astype(np.float64)
    log_p = -0.5 * (x_start ** 2).sum(1) - np.log(2 * np.pi)
    dim = x_start.shape[1]
    for i in range(traj.steps):
        x = np.ascontiguousarray(traj.xs[i])
        jac = np.empty((n, dim, dim))
        for k in range(dim):  # row k of du/dx = J^T e_k
            cot = np.zeros_like(x)
            cot[:, k] = 1.0
            dx, _ = model.vjp(x, ts[i], cot)
            jac[:, k, :] = np.from_dlpack(dx)
        step_map = coefs[i]["A"] * np.eye(dim)[None] + coefs[i]["K"] * jac
        _, logdet = np.linalg.slogdet(step_map)
        log_p -= logdet
    return traj.x.astype(np.float64), log_p


def path_kl(toy: Toy, model: Any, kind: str = "flow") -> float:
    """KL(P_model || P_ref) over whole paths of the kind's fixed SDE (module docstring): what
    Trainer.path_kl computes, on one grid, noise level and seed for every method."""
    sampler, grid, steps = KL_PATH[kind]
    path = toy.paths[kind]
    return float(rsm.kl.path_kl(model, toy.refs[kind], path, time_grid(steps, path, grid),
                                toy.kl_path_n, sampler=sampler, noise_level=KL_PATH_NOISE,
                                seed=KL_PATH_SEED))


def evaluate(toy: Toy, model: Any, kind: str = "flow", seed: int = 7) -> dict[str, float]:
    """Reward, exact KLs to the data and to p*, energy distance to p* of the model's samples
    (fixed eval noise: every model is evaluated on the same prior draws), and the path KL to
    the reference (kl_path)."""
    x, log_p = sample_with_log_density(model, toy.paths[kind], toy.eval_n, toy.eval_steps, seed)
    ok = np.all(np.isfinite(x), axis=1) & np.isfinite(log_p)
    x, log_p = x[ok], log_p[ok]
    return {"reward": float(toy.reward.value(x).mean()), "kl_path": path_kl(toy, model, kind),
            "kl_data": float(np.mean(log_p - toy.data.log_prob(x))),
            "kl_target": float(np.mean(log_p - toy.target.log_prob(x))),
            "ed_target": float(metrics.energy_distance(x, toy.target_x, max_n=2000)),
            "finite": float(ok.mean())}


def exact_reference_numbers(toy: Toy) -> dict[str, float]:
    """The exact target's own reward and its KL to the data (the ideal end point)."""
    x = toy.target.sample(20_000, seed=5).astype(np.float64)
    return {"reward": float(toy.reward.value(x).mean()),
            "kl_data": float(np.mean(toy.target.log_prob(x) - toy.data.log_prob(x)))}
