"""The Flow-GRPO SDE step written independently of the library (THEORY.md §2.2), the oracle the
preset-equivalence and path-KL tests compare the C sampler's coefficients against."""
import numpy as np


def flow_sde_step(ts, i, a):
    """Step i of Flow-GRPO's SDE on the grid ts at noise level a: (cx, cu, std, sigma, dt) with
    mean mu = cx x - cu v, std = sigma sqrt(dt), sigma = a sqrt(t / (1 - t*)), t* = ts[1] at t = 1."""
    t, t_next = ts[i], ts[i + 1]
    dt = t - t_next
    t_star = ts[1] if t >= 1 else t
    sig = a * np.sqrt(t / (1 - t_star))
    cx = 1 - sig**2 * dt / (2 * t)
    cu = (1 + sig**2 * (1 - t) / (2 * t)) * dt
    return cx, cu, sig * np.sqrt(dt), sig, dt
