"""The pathwise pieces, which run as Python loops over the model's C VJP rather than through the
one C update: DRaFT-K's backward through the last K sampler steps, and the discrete lean adjoint
of Adjoint Matching (whose rows then go through the C update like every other method's)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .setting import Setting


def lean_adjoint(ref: Any, s: Setting, batch: Any) -> tuple[dict[int, np.ndarray], int]:
    """The discrete lean adjoint of Adjoint Matching (Domingo-Enrich et al. 2024):
    a_S = grad r(x0) / alpha, a_i = A_i a_{i+1} + J_ref(x_i)^T (K_i a_{i+1}), i.e. the VJP
    of the reference sampler's mean map along the sampled trajectory (the control's own
    dependence dropped: "lean"). Returns ({step: a_i [n, D]} in score units, i = 0..S (a_S the
    terminal one), its NFE)."""
    dtype = s.dtype
    a = (batch["grad"] / s.cfg["alpha"]).astype(dtype)
    adjoint = {len(s.ts) - 1: a}
    states = batch["states"]
    for i in range(len(s.ts) - 2, -1, -1):
        c = s.sde[i]
        _, dx, _ = ref.forward_and_vjp(states[i], s.ts[i], np.ascontiguousarray(c["K"] * a),
                                       batch.get("cond_x0"))
        a = (c["A"] * a + np.from_dlpack(dx)).astype(dtype)
        adjoint[i] = a
    return adjoint, 2 * states[0].shape[0] * (len(s.ts) - 1)


def draft_grad(policy: Any, s: Setting, batch: Any) -> tuple[np.ndarray, dict]:
    """DRaFT-K: L = -mean r(x0) with x0 from the last K sampler steps differentiated and the
    earlier states held fixed. Backward through x_{i+1} = A x_i + K u(x_i) (+ std z, the noise
    held fixed: AlignProp's reparameterised DDPM steps): the adjoint a_i = A a_{i+1} +
    J_x^T (K a_{i+1}), dtheta += J_theta^T (K a_{i+1}), with the coefficients of the sampler the
    rollout ran (the ODE's, or the SDE's whose noise then is a constant). (grad, stats)."""
    states = batch["states"]
    steps = len(s.ts) - 1
    coefs = s.sde if s.cfg["rollout"] == "sde" else s.det_coef
    n = batch["x0"].shape[0]
    a = (-batch["grad"] / n).astype(policy.dtype)     # dL / dx0
    grads = np.zeros(policy.num_params, dtype=policy.dtype)
    nfe = 0
    for i in range(steps - 1, steps - 1 - s.cfg["truncation"], -1):
        c = coefs[i]
        ct = np.ascontiguousarray((c["K"] * a).astype(policy.dtype))
        _, dx, dparams = policy.forward_and_vjp(states[i], s.ts[i], ct, batch["cond_x0"])
        grads += np.from_dlpack(dparams)
        a = (c["A"] * a + np.from_dlpack(dx)).astype(policy.dtype)
        nfe += 2 * n
    return grads, {"loss": float(-batch["rewards"][batch["valid"]].mean()), "kl": 0.0,
                   "train_nfe": nfe, "clip_fraction_per_step": {}}


def draft_update(policy: Any, optimizer: Any, s: Setting, batches: list, stats: dict) -> dict:
    """DRaFT-K's `inner_epochs` optimizer steps, each on the mean gradient over the rollout
    micro-batches (DRaFT's loss is a per-batch mean). Returns `stats` completed."""
    for epoch in range(s.cfg["inner_epochs"]):
        grads, loss = None, 0.0
        for b in batches:
            g, st = draft_grad(policy, s, b)
            grads = g if grads is None else grads + g
            stats["train_nfe"] += st["train_nfe"]
            loss += st["loss"]
        grads = grads / len(batches)
        stats["grad_norm"] = optimizer.step(grads)
        if epoch == 0:
            stats["loss"], stats["kl"], stats["kl_anchor"] = loss / len(batches), 0.0, 0.0
    stats["clip_fraction"], stats["clip_fraction_per_step"] = 0.0, []
    return stats
