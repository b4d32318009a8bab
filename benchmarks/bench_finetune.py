"""One fine-tuning iteration of Flow-GRPO on the 2D toy, rsm vs the same iteration in PyTorch eager
(same process, same threads): MLP 256x3, 64 prompts x group 16 (1024 samples), the 10-step SD3
grid, Flow-GRPO's SDE (a = 0.7) with log-probs, a quadratic reward, group advantages, PPO ratio
clip + KL (beta 0.004) on the 9 trained transitions, backward, AdamW.

rsm: `rsm.Trainer(...).step()` (rollout and objective in C, orchestrated in Python).
torch: the rollout under no_grad, then per transition policy forward (with grad), reference
forward, per-element-mean Gaussian log-probs, PPO + KL, backward; one AdamW step."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import THREADS, finish, measure_pair, row, setup_threads  # noqa: E402
from torch_twin import randomize_output_layer, twin_of  # noqa: E402

PROMPTS, GROUP, A, BETA, EPS, LR = 64, 16, 0.7, 0.004, 1e-4, 1e-4
CENTER = torch.tensor([2.0, 0.0])


def torch_iteration(policy, ref, opt, ts, coef, gen):
    n = PROMPTS * GROUP
    with torch.no_grad():
        x = torch.randn(n, 2, generator=gen)
        xs, zs, logps = [x], [], []
        for i in range(len(ts) - 1):
            t = torch.full((n,), float(ts[i]))
            u = policy(x, t)
            cx, cu, std = coef[i]
            mean = cx * x - cu * u
            z = torch.randn(n, 2, generator=gen)
            x = mean + std * z
            logps.append((-(z**2) / 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).mean(1))
            xs.append(x)
            zs.append(z)
        r = -0.5 * ((x - CENTER) ** 2).sum(1)
        g = r.view(PROMPTS, GROUP)
        adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1).clamp(-5, 5)
    opt.zero_grad()
    for i in range(len(ts) - 2):  # the last transition is sampled, not trained (Flow-GRPO)
        t = torch.full((n,), float(ts[i]))
        cx, cu, std = coef[i]
        mean = cx * xs[i] - cu * policy(xs[i], t)
        with torch.no_grad():
            mean_ref = cx * xs[i] - cu * ref(xs[i], t)
        logp = (-((xs[i + 1] - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * np.log(2 * np.pi)).mean(1)
        ratio = torch.exp(logp - logps[i])
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - EPS, 1 + EPS))
        kl = ((mean - mean_ref) ** 2).mean(1) / (2 * std**2)
        ((loss + BETA * kl).sum() / (n * (len(ts) - 2))).backward()
    opt.step()


def main() -> int:
    setup_threads()
    rows = []
    ref = rsm.MLP(2, 256, 3, seed=0)
    randomize_output_layer(ref)
    policy = ref.copy()
    reward = rsm.rewards.quadratic([2.0, 0.0])
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=PROMPTS, group_size=GROUP,
                          lr=LR)
    ts = trainer.ts
    coef = [(c["A"], -c["K"], c["std"]) for c in rsm.step_coefficients(trainer.path, ts, "sde", noise_level=A)]
    tp, tr = twin_of(policy), twin_of(ref)
    for p in tr.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(tp.parameters(), lr=LR, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    rsm_s, torch_s = measure_pair(trainer.step, lambda: torch_iteration(tp, tr, opt, ts, coef, gen),
                                  min_sample_s=0.2, repeats=5, warmup=1)
    # matmul FLOPs: rollout 10 forwards, training 9 x (policy fwd + ref fwd + backward = 2 fwd)
    fwd = 2 * (66 * 256 + 6 * 256 * 256 + 256 * 2) * PROMPTS * GROUP
    rows.append(row("fine-tuning iteration", f"flow-grpo 64x16, 10 steps", rsm_s, torch_s,
                    fwd * (10 + 9 * 4)))
    finish(rows, f"Fine-tuning iteration, rsm vs PyTorch eager ({THREADS} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
