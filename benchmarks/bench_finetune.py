"""One fine-tuning iteration on the 2D toy, rsm vs the same iteration in PyTorch eager (same
process, same threads), MLP 256x3, the 10-step SD3 grid, a quadratic reward, AdamW:

- Flow-GRPO: 64 prompts x group 16 (1024 samples), Flow-GRPO's SDE (a = 0.7) with log-probs,
  group advantages, PPO ratio clip + KL (beta 0.004) on the 9 trained transitions, backward.
  torch: the rollout under no_grad, then per transition policy forward (with grad), reference
  forward, per-element-mean Gaussian log-probs, PPO + KL, backward; one AdamW step.
- rsm-zo (the flow redesign, THEORY.md §9.2): 64 roots, an ODE root each, k_i single-step SDE
  branches from the root state at t_i continued by the ODE to t = 0, group advantages per
  (root, t_i), fairclip2 matching hinge + KL on the branch rows with weights k_avg / k_i, the
  ODE KL-anchor rows at the 5 untrained transitions 4..8 (root states, weight k_avg, §9.2.5),
  clip, AdamW. Two budgets: lowsnr2 scaled to 16 children per root ([3, 3, 4, 6, 0, 0, 0, 0, 0]:
  1024 samples and branch rows per iteration, as Flow-GRPO's 64 x 16) and the preset's own
  lowsnr2 ([6, 6, 8, 10, 0, 0, 0, 0, 0]: 30 per root, 1920 samples); both + 320 anchor rows. torch: benchmarks/zo_twin.py, checked against rsm
  before any timing (float32 on the benchmark geometry, float64 on the same geometry with the
  policy moved off the rollout's parameters); a disagreement stops the script.

rsm: `rsm.Trainer(...).step()` (rollout and objective in C, orchestrated in Python).
After the timings: the share of rsm's iteration in rollout / reward (+ advantages) / update, and
the same split of the torch iteration."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import THREADS, finish, measure_pair, row, setup_threads  # noqa: E402
from torch_twin import randomize_output_layer, twin_of  # noqa: E402
from zo_twin import ZoTwin, check  # noqa: E402

PROMPTS, GROUP, A, BETA, EPS, LR = 64, 16, 0.7, 0.004, 1e-4, 1e-4
CENTER = torch.tensor([2.0, 0.0])
# lowsnr2 (THEORY.md §9.2.4: 6 6 8 10 on the four noisiest transitions) scaled to 16 children per root
ZO_BUDGET_16 = [3, 3, 4, 6, 0, 0, 0, 0, 0]
ZO_BUDGET_PRESET = [6, 6, 8, 10, 0, 0, 0, 0, 0]
# matmul FLOPs of one forward per row (2 x (66x256 + 6 x 256x256 + 256x2))
FWD_ROW = 2 * (66 * 256 + 6 * 256 * 256 + 256 * 2)
# the twin check's tolerances (max |diff| / max |ref|; the update: |diff| / |ref| over all
# parameters): float32 on the benchmark iteration, float64. The float32 update gets 1e-3: AdamW's
# first step is g / (|g| + eps) per element, which turns the ~1e-6 differences of gradient
# elements near zero into large relative differences of their steps (float64: 1e-9 everywhere).
TOL32 = {"update": 1e-3}
TOL64 = {}


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


def models(dtype="float32"):
    ref = rsm.MLP(2, 256, 3, seed=0, dtype=dtype)
    randomize_output_layer(ref)
    return ref.copy(), ref


def zo_trainer(budget, dtype="float32"):
    policy, ref = models(dtype)
    return rsm.Trainer(policy, ref, rsm.rewards.quadratic([2.0, 0.0]), "rsm-zo", batch_size=PROMPTS,
                       group_size=GROUP, budget=list(budget), kl_every=0)


def zo_flops(budget, roots=PROMPTS, steps=10):
    """Rollout: the root's `steps` forwards + each branch's forwards from t_i down (steps - i);
    training: per branch row and per KL-anchor row (the root states at the budget's zero
    entries, never the last transition) policy forward + reference forward + backward (2
    forwards)."""
    rollout = roots * steps + sum(roots * k * (steps - i) for i, k in enumerate(budget))
    anchors = sum(1 for i in range(min(len(budget), steps - 1)) if budget[i] == 0)
    train = 4 * roots * (sum(budget) + anchors)
    return FWD_ROW * (rollout + train), rollout, train


def twin_check(budget) -> None:
    """Fail loudly unless rsm's iteration and the torch twin are the same computation."""
    for dtype, tol, default, perturb in (("float32", TOL32, 1e-4, 0.0), ("float64", TOL64, 1e-9, 2e-3)):
        trainer = zo_trainer(budget, dtype)
        errs = check(trainer, ZoTwin(trainer, [2.0, 0.0]), perturb=perturb)
        print(f"  rsm-zo twin check, budget {budget}, {dtype}"
              f"{', policy moved off the rollout' if perturb else ''}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        bad = {k: v for k, v in errs.items() if not v <= tol.get(k, default)}
        if bad:
            raise SystemExit(f"rsm-zo twin check FAILED ({dtype}, tolerance {default:g}, "
                             f"{tol or ''}): {bad}")


class _Timed:
    """Wraps a callable (or an object's method) and adds its wall time to acc[key]."""

    def __init__(self, fn, acc, key):
        self.fn, self.acc, self.key = fn, acc, key

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.acc[self.key] += time.perf_counter() - t0

    def __getattr__(self, name):
        return getattr(self.fn, name)


def rsm_shares(trainer, iterations=5) -> dict:
    """Fractions of Trainer.step() spent in the rollout (samplers), the reward call plus the group
    advantages, the update (forwards, objective, backwards, AdamW) and the rest (step()'s
    bookkeeping), over `iterations` steps. The C rollout calls the reward from inside
    _rollout_rows (the benchmarked presets make no other reward call), so its time moves from
    "rollout" to "reward+adv". Instance attributes shadow the methods for the measurement only."""
    acc = {"rollout": 0.0, "reward+adv": 0.0, "update": 0.0, "step": 0.0, "reward": 0.0}
    trainer._rollout_rows = _Timed(trainer._rollout_rows, acc, "rollout")
    trainer.rollout = _Timed(trainer.rollout, acc, "reward+adv")
    trainer.update = _Timed(trainer.update, acc, "update")
    reward_fn = trainer.reward   # an instance attribute: restored, not deleted
    trainer.reward = _Timed(reward_fn, acc, "reward")
    try:
        for _ in range(iterations):
            t0 = time.perf_counter()
            trainer.step()
            acc["step"] += time.perf_counter() - t0
    finally:
        for name in ("_rollout_rows", "rollout", "update"):
            del trainer.__dict__[name]
        trainer.reward = reward_fn
    reward = acc.pop("reward")
    acc["reward+adv"] -= acc["rollout"] - reward   # rollout() includes _rollout_rows
    acc["rollout"] -= reward
    total = acc.pop("step")
    acc["other"] = total - sum(acc.values())
    return {k: v / total for k, v in acc.items()}


def torch_zo_shares(twin, gen, iterations=5) -> dict:
    acc = {"rollout": 0.0, "reward+adv": 0.0, "update": 0.0}
    for _ in range(iterations):
        t0 = time.perf_counter()
        out = twin.rollout(gen)
        t1 = time.perf_counter()
        adv, mask = twin.advantages(twin.reward(out["x0"]), out["rows"])
        t2 = time.perf_counter()
        twin.opt.zero_grad()
        twin.loss_backward(out["rows"], adv, mask)
        twin.step()
        t3 = time.perf_counter()
        for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2)):
            acc[k] += dt
    total = sum(acc.values())
    return {k: v / total for k, v in acc.items()}


def fmt_shares(shares: dict) -> str:
    return ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items())


def main() -> int:
    setup_threads()
    rows, notes = [], []
    quick = "--quick" in sys.argv
    repeats = 3 if quick else 5

    # ---- Flow-GRPO
    policy, ref = models()
    reward = rsm.rewards.quadratic([2.0, 0.0])
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=PROMPTS, group_size=GROUP,
                          lr=LR, kl_every=0)
    ts = trainer.ts
    coef = [(c["A"], -c["K"], c["std"]) for c in rsm.step_coefficients(trainer.path, ts, "sde", noise_level=A)]
    tp, tr = twin_of(policy), twin_of(ref)
    for p in tr.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(tp.parameters(), lr=LR, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    rsm_s, torch_s = measure_pair(trainer.step, lambda: torch_iteration(tp, tr, opt, ts, coef, gen),
                                  min_sample_s=0.2, repeats=repeats, warmup=1)
    # matmul FLOPs: rollout 10 forwards, training 9 x (policy fwd + ref fwd + backward = 2 fwd)
    rows.append(row("fine-tuning iteration", "flow-grpo 64x16, 10 steps", rsm_s, torch_s,
                    FWD_ROW * PROMPTS * GROUP * (10 + 9 * 4)))
    notes.append(f"flow-grpo: rsm shares {fmt_shares(rsm_shares(trainer))}")

    # ---- rsm-zo: the twin check first, then the timings
    print("### rsm-zo twin check (max |diff| / max |ref|)\n")
    for budget in (ZO_BUDGET_16, ZO_BUDGET_PRESET):
        twin_check(budget)
    for budget, label in ((ZO_BUDGET_16, "rsm-zo 64 roots x 16 branches [3,3,4,6], 10 steps"),
                          (ZO_BUDGET_PRESET, "rsm-zo 64 roots x 30 branches [6,6,8,10] (preset), 10 steps")):
        trainer = zo_trainer(budget)
        twin = ZoTwin(trainer, [2.0, 0.0])
        gen = torch.Generator().manual_seed(0)
        rsm_s, torch_s = measure_pair(trainer.step, lambda: twin.iteration(gen), min_sample_s=0.2,
                                      repeats=repeats, warmup=1)
        flops, rollout, train = zo_flops(budget)
        rows.append(row("fine-tuning iteration", label, rsm_s, torch_s, flops))
        notes.append(f"{label}: {rollout} rollout + {train} training row-forwards "
                     f"({flops / 1e9:.2f} GFLOP); rsm shares {fmt_shares(rsm_shares(trainer))}; "
                     f"torch shares {fmt_shares(torch_zo_shares(twin, gen))}")
    finish(rows, f"Fine-tuning iteration, rsm vs PyTorch eager ({THREADS} threads, "
                 f"load average {os.getloadavg()[0]:.2f} at the end)")
    print()
    for n in notes:
        print("- " + n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
