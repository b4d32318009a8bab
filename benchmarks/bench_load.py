"""Step times on an idle machine and with competing busy processes, rsm vs PyTorch eager.

Three workloads on the 2D toy (MLP dim 2, width 256, depth 3, float32), as in bench_mlp.py and
bench_finetune.py:

  pretrain step   B = 256, flow matching, AdamW (rsm: _C.pretrain_steps, 10 steps per call)
  ODE sampler     20 Euler steps, B = 256
  fine-tuning     one Flow-GRPO iteration, 64 prompts x 16 (1024 samples, 10-step SD3 grid, SDE
                  rollout with log-probs, PPO clip + KL, backward, AdamW): rsm.Trainer.step()
                  vs bench_finetune.torch_iteration

Load levels: 0, 1 and 2 busy processes (`python -c "while True: pass"`), started and stopped by
this script. At each level, each variant runs in its own fresh process (so every OpenMP runtime
starts with its own environment), twice, alternating (A B C A B C), and the median is kept:

  rsm            rsm as installed: its threading policy (passive OpenMP waiting, set when rsm._C
                 loads unless the user chose OMP_WAIT_POLICY / GOMP_SPINCOUNT)
  rsm-spin       rsm with libgomp's default waiting (GOMP_SPINCOUNT=300000): rsm before the
                 policy
  torch          PyTorch eager as a user runs it (its own defaults)

All use their default thread count (the cores this process may use). Reported: ms per step,
and the ratio of each level to the idle level of the same variant, and rsm vs torch at the same
load. The machine may be shared: the 1-minute load average before each level is printed.

Run: python benchmarks/bench_load.py [--quick] [--json PATH]"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("pretrain step B=256", "ODE sampler 20 steps B=256", "fine-tuning iteration flow-grpo 64x16")
VARIANTS = {"rsm": {}, "rsm-spin": {"GOMP_SPINCOUNT": "300000"}, "torch": {}}


# ---- worker: one variant, every workload, one process -------------------------------------------

def _measure(fn, min_sample_s, repeats):
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_sample_s / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def _rsm_workloads():
    import numpy as np

    import rsm
    from bench_mlp import ring_data

    data = ring_data()
    path = rsm.FlowPath()
    model = rsm.MLP(2, 256, 3, seed=0)
    opt = rsm.AdamW(model, lr=1e-3, max_grad_norm=0.0)
    state = {"k": 0}

    def pretrain():  # 10 steps
        rsm._C.pretrain_steps(model._core, opt._core, path._core, data, None, 256, 0.0, 1.0, 1e-3,
                              0, 0, state["k"], 10)
        state["k"] += 10

    seed = {"s": 0}

    def ode():
        rsm.sample(model, 256, path, "ode", steps=20, seed=seed["s"])
        seed["s"] += 1

    from bench_finetune import CENTER, GROUP, LR, PROMPTS, models

    policy, ref = models()
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic(np.asarray(CENTER, dtype=float).tolist()),
                          "flow-grpo", batch_size=PROMPTS, group_size=GROUP, lr=LR, kl_every=0)
    return {WORKLOADS[0]: (pretrain, 10), WORKLOADS[1]: (ode, 1), WORKLOADS[2]: (trainer.step, 1)}


def _torch_workloads():
    import torch

    import rsm
    from bench_finetune import A, LR, models, torch_iteration
    from bench_mlp import ring_data, torch_ode
    from torch_twin import twin_of

    data_t = torch.from_numpy(ring_data())
    twin = twin_of(rsm.MLP(2, 256, 3, seed=0))
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def pretrain():
        idx = torch.randint(0, data_t.shape[0], (256,), generator=gen)
        x0 = data_t[idx]
        t = torch.rand(256, generator=gen)
        eps = torch.randn(256, 2, generator=gen)
        xt = (1 - t)[:, None] * x0 + t[:, None] * eps
        loss = torch.nn.functional.mse_loss(twin(xt, t), eps - x0)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    def ode():
        torch_ode(twin, torch.randn(256, 2, generator=gen))

    policy_r, ref_r = models()
    policy, ref = twin_of(policy_r), twin_of(ref_r)
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=1e-4)
    ts = rsm.Trainer(policy_r, ref_r, rsm.rewards.quadratic([2.0, 0.0]), "flow-grpo").ts
    coef = [(c["A"], -c["K"], c["std"]) for c in rsm.step_coefficients(rsm.FlowPath(), ts, "sde", noise_level=A)]

    def finetune():
        torch_iteration(policy, ref, opt, ts, coef, gen)

    return {WORKLOADS[0]: (pretrain, 1), WORKLOADS[1]: (ode, 1), WORKLOADS[2]: (finetune, 1)}


def worker(variant: str, quick: bool) -> None:
    sys.path.insert(0, HERE)
    work = _torch_workloads() if variant == "torch" else _rsm_workloads()
    out = {}
    for name, (fn, per_call) in work.items():
        out[name] = _measure(fn, 0.1 if quick else 0.25, 3 if quick else 5) / per_call
    print(json.dumps(out))


# ---- driver -------------------------------------------------------------------------------------

def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _run_variant(variant: str, quick: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "OMP_NUM_THREADS")}
    env.update(VARIANTS[variant])
    args = [sys.executable, os.path.abspath(__file__), "--worker", variant] + (["--quick"] if quick else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    quick = "--quick" in sys.argv
    if "--worker" in sys.argv:
        worker(sys.argv[sys.argv.index("--worker") + 1], quick)
        return 0
    levels = (0, 1, 2)
    rounds = 1 if quick else 2
    results = {}  # (level, variant) -> {workload: seconds}
    loads = {}
    for level in levels:
        procs = _busy(level)
        try:
            time.sleep(1.0)
            loads[level] = os.getloadavg()[0]
            samples = {v: [] for v in VARIANTS}
            for _ in range(rounds):
                for v in VARIANTS:
                    samples[v].append(_run_variant(v, quick))
                    print(f"  busy={level} {v}: " + ", ".join(
                        f"{k.split()[0]} {1e3 * s:.1f} ms" for k, s in samples[v][-1].items()), flush=True)
            for v in VARIANTS:
                results[(level, v)] = {w: statistics.median(s[w] for s in samples[v]) for w in WORKLOADS}
        finally:
            _stop(procs)
    cores = len(os.sched_getaffinity(0))
    print(f"\n### Step time under load ({cores} cores; load average before each level: "
          + ", ".join(f"{lv} busy: {loads[lv]:.1f}" for lv in levels) + ")\n")
    print("| workload | variant | idle ms | 1 busy ms (x idle) | 2 busy ms (x idle) |")
    print("|---|---|---|---|---|")
    for w in WORKLOADS:
        for v in VARIANTS:
            base = results[(0, v)][w]
            cells = [f"{1e3 * base:.1f}"] + [f"{1e3 * results[(lv, v)][w]:.1f} ({results[(lv, v)][w] / base:.2f}x)"
                                             for lv in levels[1:]]
            print(f"| {w} | {v} | " + " | ".join(cells) + " |")
    print("\n| workload | torch / rsm idle | 1 busy | 2 busy | torch / rsm-spin idle | 1 busy | 2 busy |")
    print("|---|---|---|---|---|---|---|")
    for w in WORKLOADS:
        r = [results[(lv, "torch")][w] / results[(lv, "rsm")][w] for lv in levels]
        s = [results[(lv, "torch")][w] / results[(lv, "rsm-spin")][w] for lv in levels]
        print(f"| {w} | " + " | ".join(f"{x:.2f}x" for x in r + s) + " |")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"loads": loads, "results": {f"{lv}/{v}": r for (lv, v), r in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
