"""Auxiliary mechanisms of published first-order methods that the RSM redesigns prune
(THEORY.md §6.3.1, §6.3.3, §10, Figs. 8-11): VGG-Flow's learned value-gradient network g_phi with
its consistency loss, Residual nabla-DB's learned residual h_phi with its forward and backward
losses, and an offline replay buffer. Each plugs into rsm.Trainer through `AuxTrainer`, so the
ablations "with / without the mechanism" share every other line of the fine-tuning loop.

The auxiliary networks are rsm.MLP instances trained with their own rsm.AdamW; every gradient
goes through the C core (model.vjp / forward_keep + backward): a loss here only forms the
cotangent on the network output.

1. VGG-Flow value-gradient network (flow path, presets with the Tweedie estimator "fo-tweedie").
   The value gradient is modelled as the analytic Tweedie reward gradient plus a learned
   refinement, grad V(x, t) ~ g(x, t) + g_phi(x, t), g = grad r(x0_hat(x, t)). The velocity
   target becomes v_ref - lambda eta(t) (g + g_phi). Consistency: for the deterministic sampler's
   step x' = A x + K u(x, t), the value of a state is the value of its successor, so its gradient
   is transported by the step's transposed Jacobian (the discrete form of the finite-difference
   residual of VGG-Flow's consistency loss, §6.3.1):
       res_i = g(x_i) + g_phi(x_i, t_i) - sg[ A a_{i+1} + J_u(x_i)^T (K a_{i+1}) ],
       a_{i+1} = g(x_{i+1}) + g_phi(x_{i+1}, t_{i+1}),   a_S = grad r(x_0)   (t_S = 0: x0_hat = x),
       L(phi) = mean_i mean_n |res_i|^2 + c_terminal mean_n |g_phi(x_0, 0)|^2.
   (semi-gradient: the successor's term is a fixed target, as in TD learning.)

2. Residual nabla-DB residual (VP path, presets with the forward-residual estimator
   "fo-residual"). For Gaussian transitions with equal variance, detailed balance of the tilted
   process pi* ∝ pi_ref exp(V_t' (x') - V_t(x)) in gradient form reads
       forward:   (mu_theta(x) - mu_ref(x)) / s^2          =  grad V_t'(x')
       backward:  grad_x [log pi_theta(x'|x) - log pi_ref(x'|x)] = -grad V_t(x).
   The pruned baseline models grad V ~ lambda g (g = the reward gradient the preset uses); the
   original adds a learned residual h_phi: grad V(x, t) ~ lambda g + h_phi(x, t). The policy's
   forward residual then targets lambda g + h_phi(x', t'), and h_phi is fitted by
       L_fwd(phi)  = mean |h_phi(x', t') - sg[(mu_theta - mu_ref)/s^2 - lambda g]|^2
       L_bwd(phi)  = mean |h_phi(x, t)   - sg[-grad_x(log pi_theta - log pi_ref) - lambda g]|^2.
   The backward loss's gradient with respect to theta would need a derivative of a VJP (a
   Hessian-vector product through the network), which the C core does not provide; here the
   backward loss trains h_phi only, which is where it adds information (it pins h_phi to the
   policy's own transition kernel instead of letting it absorb the forward residual).

3. ReplayBuffer: keeps the training rows (and their reward gradients) of the last `capacity`
   rollouts and adds `replay` of them to every update of a first-order method (SQDF's offline
   buffer; the rows' targets depend only on stored states and reward gradients, so they stay
   valid off-policy)."""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from ._args import positive_int, seed_int
from .trainer import Trainer
from .training import AdamW

__all__ = ["ValueGradientNet", "ResidualNet", "ReplayBuffer", "AuxTrainer",
           "consistency_targets", "consistency_loss", "residual_targets", "regression_loss"]


def _f(x: Any, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def regression_loss(net: Any, x: np.ndarray, t: float, target: np.ndarray, weight: float,
                    normalizer: float) -> tuple[float, np.ndarray, np.ndarray]:
    """weight * sum_n |net(x_n, t) - target_n|^2 / normalizer: (loss, flat dphi, output).
    One forward whose activations serve the backward."""
    out_t, token = net.forward_keep(_f(x, net.dtype), t)
    out = np.from_dlpack(out_t).astype(np.float64)
    diff = out - target
    loss = weight * float((diff ** 2).sum()) / normalizer
    cot = _f(2.0 * weight * diff / normalizer, net.dtype)
    _, dparams = net.backward(cot, token)
    return loss, np.array(np.from_dlpack(dparams), dtype=np.float64), out


# --------------------------------------------------------------------------- VGG-Flow g_phi
def consistency_targets(policy: Any, ts: np.ndarray, coefs: list[dict], states: list[np.ndarray],
                        g_rows: list[np.ndarray], g_terminal: np.ndarray,
                        g_phi: list[np.ndarray], g_phi_terminal: np.ndarray) -> list[np.ndarray]:
    """The transported value gradients sg[A a_{i+1} + J_u(x_i)^T (K a_{i+1})] for every step i
    (see the module docstring); states[i] = x_i (i < S), g_rows[i] = g(x_i), g_phi[i] =
    g_phi(x_i, t_i) as numbers (targets carry no gradient)."""
    steps = len(states)
    targets: list[np.ndarray] = [None] * steps  # type: ignore[list-item]
    for i in range(steps):
        a_next = (g_terminal + g_phi_terminal) if i == steps - 1 else (g_rows[i + 1] + g_phi[i + 1])
        c = coefs[i]
        cot = _f(c["K"] * a_next, policy.dtype)
        dx, _ = policy.vjp(_f(states[i], policy.dtype), ts[i], cot)
        targets[i] = c["A"] * a_next + np.from_dlpack(dx).astype(np.float64)
    return targets


def consistency_loss(net: Any, ts: np.ndarray, states: list[np.ndarray], g_rows: list[np.ndarray],
                     targets: list[np.ndarray], x_terminal: np.ndarray,
                     c_terminal: float) -> tuple[float, np.ndarray]:
    """L(phi) of the module docstring at fixed targets: (loss, flat gradient over phi)."""
    steps = len(states)
    n = states[0].shape[0]
    loss, grad = 0.0, np.zeros(net.num_params)
    for i in range(steps):
        l, d, _ = regression_loss(net, states[i], ts[i], targets[i] - g_rows[i], 1.0, n * steps)
        loss += l
        grad += d
    l, d, _ = regression_loss(net, x_terminal, 0.0, np.zeros_like(x_terminal), c_terminal, n)
    return loss + l, grad + d


class _AuxNet:
    """An auxiliary network x, t -> [n, D] (an rsm.MLP) with its own AdamW (gradient norm
    clipped to 1) and `updates` optimizer steps per fine-tuning iteration."""

    def __init__(self, dim: int, hidden: int, depth: int, lr: float, updates: int, seed: int,
                 dtype: str) -> None:
        from .models import MLP

        self.net = MLP(dim, hidden=hidden, depth=depth, seed=seed, dtype=dtype)
        self.optimizer = AdamW(self.net, lr=lr, max_grad_norm=1.0)
        self.updates = positive_int(updates, type(self).__name__, "updates")

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        return np.from_dlpack(self.net.forward(_f(x, self.net.dtype), t)).astype(np.float64)


class ValueGradientNet(_AuxNet):
    """VGG-Flow's g_phi (an rsm.MLP) with its optimizer and the consistency update."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, lr: float = 1e-3,
                 c_terminal: float = 1000.0, updates: int = 1, seed: int = 0,
                 dtype: str = "float32") -> None:
        super().__init__(dim, hidden, depth, lr, updates, seed, dtype)
        self.c_terminal = float(c_terminal)


# ---------------------------------------------------------------- Residual nabla-DB h_phi
def residual_targets(policy: Any, ref: Any, row: dict, coef: dict, lam: float,
                     g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward target at x', backward target at x) of the module docstring for one transition
    row (x, x', u_old) with step coefficients mu = A x + K u, std s; g [n, D] the prior's reward
    gradient. The backward target needs one VJP of the policy and one of the reference."""
    x, x_next = _f(row["x"], policy.dtype), row["x_next"].astype(np.float64)
    t, A, K, s = coef["t"], coef["A"], coef["K"], coef["std"]
    u_pol = row["u_old"].astype(np.float64)
    u_ref = np.from_dlpack(ref.forward(x, t)).astype(np.float64)
    mu_pol = A * x + K * u_pol
    mu_ref = A * x + K * u_ref
    forward = (mu_pol - mu_ref) / s ** 2 - lam * g
    # grad_x log pi(x'|x) = (A (x' - mu) + J_u^T K (x' - mu)) / s^2
    grads = []
    for model, mu in ((policy, mu_pol), (ref, mu_ref)):
        r = (x_next - mu) / s ** 2
        dx, _ = model.vjp(x, t, _f(K * r, model.dtype))
        grads.append(A * r + np.from_dlpack(dx).astype(np.float64))
    backward = -(grads[0] - grads[1]) - lam * g
    return forward, backward


class ResidualNet(_AuxNet):
    """Residual nabla-DB's h_phi (an rsm.MLP) with its optimizer; `backward_loss` switches the
    backward residual on."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, lr: float = 1e-3,
                 backward_loss: bool = True, updates: int = 1, seed: int = 0,
                 dtype: str = "float32") -> None:
        super().__init__(dim, hidden, depth, lr, updates, seed, dtype)
        self.backward_loss = bool(backward_loss)


# ------------------------------------------------------------------------------ replay buffer
class ReplayBuffer:
    """The training rows of the last `capacity` rollouts of a first-order method; `replay` old
    rows (sampled uniformly, seeded) join every update."""

    def __init__(self, capacity: int = 8, replay: int = 1, seed: int = 0) -> None:
        self.capacity = positive_int(capacity, "ReplayBuffer", "capacity")
        self.replay = positive_int(replay, "ReplayBuffer", "replay", minimum=0)
        self.batches: deque = deque(maxlen=self.capacity)
        self.rng = np.random.Generator(np.random.PCG64(seed_int(seed, "ReplayBuffer")))

    def augment(self, batch: dict) -> dict:
        """A batch with `replay` old rollouts' rows appended (their per-trajectory arrays
        concatenated behind the current ones), then the current rollout is stored."""
        old = list(self.batches)
        chosen = [old[k] for k in self.rng.choice(len(old), size=min(self.replay, len(old)), replace=False)] if old else []
        self.batches.append({"rows": [r.copy() for r in batch["rows"]], "grad": batch["grad"].copy(),
                             "valid": batch["valid"].copy(), "mask": batch["mask"].copy()})
        if not chosen:
            return batch
        out = batch.copy()
        rows = list(batch["rows"])
        grads, valid, mask = [batch["grad"]], [batch["valid"]], [batch["mask"]]
        offset = batch["grad"].shape[0]
        for b in chosen:
            for r in b["rows"]:
                moved = r.copy()
                moved["traj"] = r["traj"] + offset
                rows.append(moved)
            grads.append(b["grad"])
            valid.append(b["valid"])
            mask.append(b["mask"])
            offset += b["grad"].shape[0]
        out.update(rows=rows, grad=np.concatenate(grads), valid=np.concatenate(valid),
                   mask=np.concatenate(mask))
        return out


# ------------------------------------------------------------------------------ the trainer
class AuxTrainer(Trainer):
    """rsm.Trainer with optional auxiliary mechanisms:

      value_net  ValueGradientNet (presets with estimator "fo-tweedie", flow path)
      residual   ResidualNet      (presets with estimator "fo-residual", SDE rollouts)
      replay     ReplayBuffer     (first-order presets)

    Each history row gains aux_nfe (network evaluations of the mechanism: auxiliary-network
    forwards/backwards and the extra policy/reference VJPs), which is also added to nfe; the
    mechanism's time is inside `seconds`, as it is part of the step."""

    def __init__(self, *args: Any, value_net: ValueGradientNet | None = None,
                 residual: ResidualNet | None = None, replay: ReplayBuffer | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        est = self.cfg["estimator"]
        if value_net is not None and est != "fo-tweedie":
            raise ValueError(f"AuxTrainer: value_net needs a preset with estimator 'fo-tweedie', got {est!r}")
        if residual is not None and (est != "fo-residual" or self.cfg["rollout"] != "sde"):
            raise ValueError(f"AuxTrainer: residual needs a preset with estimator 'fo-residual' and SDE "
                             f"rollouts, got {est!r} / {self.cfg['rollout']!r}")
        if replay is not None and self.cfg["family"] != "first-order":
            raise ValueError("AuxTrainer: replay needs a first-order preset")
        if self.geometry.accumulate != 1:
            raise ValueError(f"AuxTrainer: accumulate={self.geometry.accumulate}: the auxiliary "
                             "mechanisms train on one rollout per step; use accumulate=1")
        self.value_net, self.residual, self.replay = value_net, residual, replay
        self._aux_nfe = 0
        self.aux_log: list[dict] = []

    def step(self) -> dict[str, Any]:
        """Trainer.step with the mechanisms inside the timed region (they run in rollout); the
        reward statistics are those of this iteration's own rollout (not of replayed rows)."""
        self._aux_nfe = 0
        return super().step()

    def _step_scores(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        return batch["own_rewards"], batch["own_valid"]

    def _step_extra_nfe(self) -> dict[str, int]:
        return {"aux_nfe": int(self._aux_nfe)}

    def rollout(self, micro: int = 0) -> dict[str, Any]:
        batch = super().rollout(micro)
        batch["own_rewards"], batch["own_valid"] = batch["rewards"], batch["valid"]
        if self.value_net is not None:
            self._apply_value_net(batch)
        if self.residual is not None:
            self._apply_residual(batch)
        if self.replay is not None:
            batch = self.replay.augment(batch)
        return batch

    # g_phi: train on this rollout (consistency), then add it to the Tweedie gradients
    def _apply_value_net(self, batch: dict) -> None:
        vn = self.value_net
        rows = sorted(batch["rows"], key=lambda r: r["step"])
        if [r["step"] for r in rows] != list(range(len(self.ts) - 1)):
            raise ValueError("AuxTrainer: value_net needs every step as a training row (train_steps='all')")
        states = [r["x"].astype(np.float64) for r in rows]
        g_rows = [batch["grad_rows"][r["index"]].astype(np.float64) for r in rows]
        coefs = self.det_coef
        n, steps = states[0].shape[0], len(states)
        record = {"t": [float(self.ts[i]) for i in range(steps)]}
        for _ in range(vn.updates):
            g_phi = [vn(states[i], self.ts[i]) for i in range(steps)]
            g_phi_terminal = vn(batch["x0"], 0.0)
            targets = consistency_targets(self.policy, self.ts, coefs, states, g_rows, batch["grad"],
                                          g_phi, g_phi_terminal)
            loss, grad = consistency_loss(vn.net, self.ts, states, g_rows, targets, batch["x0"], vn.c_terminal)
            vn.optimizer.step(_f(grad, vn.net.dtype))
            # forwards (steps + 1), policy VJPs (steps, counted 2), g_phi forward+backward (steps + 1, 2)
            self._aux_nfe += n * ((steps + 1) + 2 * steps + 2 * (steps + 1))
        record["loss"] = loss
        for r in rows:
            corr = vn(r["x"], self.ts[r["step"]])
            self._aux_nfe += n
            batch["grad_rows"][r["index"]] = batch["grad_rows"][r["index"]] + corr
            record.setdefault("g_phi_norm", []).append(float(np.linalg.norm(corr, axis=1).mean()))
            record.setdefault("g_norm", []).append(float(np.linalg.norm(g_rows[r["step"]], axis=1).mean()))
        self.aux_log.append(record)

    # h_phi: fit on this rollout (forward and optionally backward residual), then feed the policy
    # target lambda g + h_phi(x', t') through the prior gradient g + h_phi / lambda
    def _apply_residual(self, batch: dict) -> None:
        rs, lam = self.residual, self.cfg["reward_scale"]
        record = {"t": [], "h_norm": [], "prior_norm": []}
        grad = batch["grad"].astype(np.float64)
        total = 0.0
        for _ in range(rs.updates):
            dphi = np.zeros(rs.net.num_params)
            count = sum(len(r["traj"]) for r in batch["rows"]) * (2 if rs.backward_loss else 1)
            for row in batch["rows"]:
                c = self.sde[row["step"]]
                g = grad[row["traj"]]
                fwd, bwd = residual_targets(self.policy, self.ref, row, c, lam, g)
                n = fwd.shape[0]
                self._aux_nfe += n + (4 * n if rs.backward_loss else 0)  # ref forward; 2 VJPs
                l, d, _ = regression_loss(rs.net, row["x_next"], c["t_next"], fwd, 1.0, count)
                total, dphi = total + l, dphi + d
                if rs.backward_loss:
                    l, d, _ = regression_loss(rs.net, row["x"], c["t"], bwd, 1.0, count)
                    total, dphi = total + l, dphi + d
                self._aux_nfe += 2 * n * (2 if rs.backward_loss else 1)
            rs.optimizer.step(_f(dphi, rs.net.dtype))
        # per-row prior gradients: rows no longer share one terminal g, so give each row its own
        # trajectory slots (a copy of the batch's per-trajectory arrays, one block per row)
        grads, valid, mask, rows, offset = [], [], [], [], 0
        for row in batch["rows"]:
            c = self.sde[row["step"]]
            h = rs(row["x_next"], c["t_next"])
            self._aux_nfe += len(row["traj"])
            g = grad[row["traj"]]
            grads.append(g + h / lam)
            valid.append(batch["valid"][row["traj"]])
            mask.append(batch["mask"][row["traj"]])
            moved = row.copy()
            moved["traj"] = offset + np.arange(len(row["traj"]))
            offset += len(row["traj"])
            rows.append(moved)
            record["t"].append(float(c["t_next"]))
            record["h_norm"].append(float(np.linalg.norm(h, axis=1).mean()))
            record["prior_norm"].append(float(np.linalg.norm(lam * g, axis=1).mean()))
        batch.update(rows=rows, grad=np.concatenate(grads), valid=np.concatenate(valid),
                     mask=np.concatenate(mask))
        record["loss"] = total
        self.aux_log.append(record)
