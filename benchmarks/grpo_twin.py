"""A PyTorch eager Flow-GRPO loop, written as Flow-GRPO's authors run it (rollout under no_grad
with the SDE and its log-probs, reward, group advantages, then per trained transition a policy
forward with grad, a reference forward, the PPO ratio clip and the KL, backward; global grad-norm
clip; AdamW), for benchmarks/bench_time_to_reward.py.

The hyper-parameters are read from an rsm.Trainer running the "flow-grpo" preset (so both sides
run the same configuration); the per-step sampler scalars (A, K, std) come from
rsm.step_coefficients. `check_gradient` compares the loss gradient with rsm's
Trainer.loss_and_grad on rsm's own recorded rollout before anything is timed.

  step       x' = A x + K u(x, t) + std z                         (Flow-GRPO's SDE, a = noise_level)
  log-prob   mean over dims of the Gaussian log-density of x' given x
  advantage  per group: clip((r - mean) / (std + adv_eps), +-adv_clip), population std
  loss       per row and trained transition (all but the last):
               max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) + beta |mu - mu_ref|^2 / (2 std^2 D)
             averaged over rows and transitions."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from torch_twin import flat_grads, twin_of  # noqa: E402


class FlowGrpoTwin:
    def __init__(self, trainer: rsm.Trainer, center, scale: float = 1.0, reward: rsm.Reward | None = None) -> None:
        """center, scale: the quadratic reward -scale |x - center|^2 / 2 in torch; reward: any other
        rsm reward, scored as the black box Flow-GRPO treats it (its values, no gradient)."""
        cfg = trainer.cfg
        if (cfg["rollout"], cfg["form"], cfg["reweight"], cfg["train_steps"]) != ("sde", "ppo", "base", "no_last"):
            raise ValueError("FlowGrpoTwin covers the flow-grpo preset")
        self.policy, self.ref = twin_of(trainer.policy), twin_of(trainer.ref)
        for p in self.ref.parameters():
            p.requires_grad_(False)
        self.dtype = self.policy.input.weight.dtype
        self.center = None if reward is not None else torch.tensor(center, dtype=self.dtype)
        self.black_box = reward
        self.scale = float(scale)
        self.prompts, self.group = trainer.batch_size, trainer.group_size
        self.ts = np.asarray(trainer.ts, dtype=np.float64)
        coef = rsm.step_coefficients(trainer.path, self.ts, "sde", noise_level=cfg["noise_level"])
        self.coef = [(float(c["A"]), float(c["K"]), float(c["std"])) for c in coef]
        # the released conventions (rsm.conventions): group mean over the batch's std
        # ("batch") or the group's, samples with advantage exactly 0 dropped from the loss
        # ("drop": policy and KL rows and the normaliser), and the KL divided by 2 s~^2 =
        # 2 std^2 / dt ("released": dt times the exact step KL)
        self.adv_std, self.ddof = cfg["adv_std"], int(cfg["adv_ddof"])
        self.drop = cfg["zero_std"] == "drop"
        self.kl_scale = [float(c["dt"]) if cfg["kl_denominator"] == "released" else 1.0 for c in coef]
        self.eps, self.beta = cfg["clip_eps"], cfg["kl"]
        self.adv_eps, self.adv_clip = cfg["adv_eps"], cfg["adv_clip"]
        self.max_grad_norm = cfg["max_grad_norm"]
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.steps = len(self.ts) - 1

    @property
    def n(self) -> int:
        return self.prompts * self.group

    def nfe(self) -> int:
        """Network evaluations of one iteration, counted as rsm counts them (rollout forwards;
        per trained row policy forward + reference forward + backward)."""
        return self.n * self.steps + 3 * self.n * (self.steps - 1)

    def _logp(self, x_next, mean, std):
        return (-((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(1)

    def rollout(self, gen: torch.Generator):
        with torch.no_grad():
            x = torch.randn(self.n, 2, generator=gen, dtype=self.dtype)
            xs, logps = [x], []
            for i in range(self.steps):
                a, k, std = self.coef[i]
                mean = a * x + k * self.policy(x, torch.full((self.n,), float(self.ts[i]), dtype=self.dtype))
                x = mean + std * torch.randn(self.n, 2, generator=gen, dtype=self.dtype)
                logps.append(self._logp(x, mean, std))
                xs.append(x)
        return xs, logps

    def reward(self, x0):
        if self.black_box is not None:
            values = self.black_box.value(x0.detach().to(torch.float64).numpy())
            return torch.as_tensor(np.asarray(values), dtype=self.dtype)
        return -0.5 * self.scale * ((x0 - self.center) ** 2).sum(1)

    def advantages(self, r):
        g = r.view(self.prompts, self.group)
        std = (r.std(unbiased=self.ddof == 1) if self.adv_std == "batch"
               else g.std(1, unbiased=self.ddof == 1, keepdim=True))
        adv = (g - g.mean(1, keepdim=True)) / (std + self.adv_eps)
        return adv.clamp(-self.adv_clip, self.adv_clip).view(-1)

    def loss_backward(self, xs, logps, adv) -> None:
        """Accumulates the loss gradient in the policy's .grad (one backward per transition)."""
        keep = (adv != 0).to(self.dtype) if self.drop else torch.ones_like(adv)
        norm = float(keep.sum()) * (self.steps - 1)
        for i in range(self.steps - 1):  # the last transition is sampled, not trained
            a, k, std = self.coef[i]
            t = torch.full((xs[i].shape[0],), float(self.ts[i]), dtype=self.dtype)
            mean = a * xs[i] + k * self.policy(xs[i], t)
            with torch.no_grad():
                mean_ref = a * xs[i] + k * self.ref(xs[i], t)
            ratio = torch.exp(self._logp(xs[i + 1], mean, std) - logps[i])
            loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - self.eps, 1 + self.eps))
            kl = self.kl_scale[i] * ((mean - mean_ref) ** 2).mean(1) / (2 * std**2)
            ((keep * (loss + self.beta * kl)).sum() / norm).backward()

    def iteration(self, gen: torch.Generator) -> float:
        """One Flow-GRPO iteration; returns the rollout's mean reward."""
        xs, logps = self.rollout(gen)
        with torch.no_grad():
            r = self.reward(xs[-1])
            adv = self.advantages(r)
        self.opt.zero_grad(set_to_none=True)
        self.loss_backward(xs, logps, adv)
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.opt.step()
        return float(r.mean())


def check_gradient(trainer: rsm.Trainer, twin: FlowGrpoTwin, perturb: float = 0.0, seed: int = 5) -> dict:
    """max |diff| / max |rsm| of the rollout log-probs, advantages and the loss gradient on rsm's
    recorded rollout (trainer.rollout(): states, log-probs, advantages). perturb > 0 moves both
    policies by the same random amount first, so the ratio differs from 1 and the KL term acts.
    Leaves the trainer's parameters moved by `perturb` (use a throw-away trainer)."""
    batch = trainer.rollout()
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(twin.dtype)  # noqa: E731
    rows = sorted(batch["rows"], key=lambda r: r["step"])
    if [r["step"] for r in rows] != list(range(twin.steps - 1)):
        raise ValueError("check_gradient(): expected one row block per trained transition")
    if perturb:
        rng = np.random.default_rng(seed)
        p = np.from_dlpack(trainer.policy.params)
        p += (perturb * rng.standard_normal(p.shape)).astype(p.dtype)
        state = {k: torch.from_numpy(np.array(v)) for k, v in trainer.policy.named_params().items()}
        twin.policy.load_state_dict(state, strict=False)
    xs = [as_t(r["x"]) for r in rows] + [as_t(rows[-1]["x_next"])]
    # rsm records the log-density summed over dims; the preset's objective (mean_over_dims) and
    # the twin use the mean over dims
    logps = [as_t(r["log_prob"]) / xs[0].shape[1] for r in rows]
    errs = {}
    # the twin's own log-prob of rsm's recorded transitions under the rollout policy
    if not perturb:
        with torch.no_grad():
            mine = []
            for i, r in enumerate(rows):
                a, k, std = twin.coef[i]
                t = torch.full((xs[i].shape[0],), float(twin.ts[i]), dtype=twin.dtype)
                mine.append(twin._logp(as_t(r["x_next"]), a * xs[i] + k * twin.policy(xs[i], t), std))
        errs["log-probs"] = max(_rel(m, l) for m, l in zip(mine, logps))
    errs["advantages"] = _rel(twin.advantages(twin.reward(as_t(batch["x0"]))), batch["adv"])
    grads, _ = trainer.loss_and_grad(batch)
    twin.opt.zero_grad()
    twin.loss_backward(xs, logps, as_t(batch["adv"]))
    errs["gradient"] = _rel(flat_grads(twin.policy, trainer.policy), grads)
    return errs


def _rel(a, b) -> float:
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
