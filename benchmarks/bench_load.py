"""Step times on an idle machine and with competing busy processes, rsm vs PyTorch eager.

Three workloads on the 2D toy (MLP dim 2, width 256, depth 3, float32), as in bench_mlp.py and
bench_finetune.py:

  pretrain step   B = 256, flow matching, AdamW (rsm: _C.pretrain_steps, 10 steps per call)
  ODE sampler     20 Euler steps, B = 256
  fine-tuning     one Flow-GRPO iteration, 64 prompts x 16 (1024 samples, 10-step SD3 grid, SDE
                  rollout with log-probs, PPO clip + KL, backward, AdamW): rsm.Trainer.step()
                  vs bench_finetune.torch_iteration

Load levels: 0, 1 and 2 busy processes (`python -c "while True: pass"`), started and stopped by
this script. Each variant runs in its own fresh process (so every OpenMP runtime starts with its
own environment) and measures each workload at the levels in turn, interleaved (0 1 2 0 1 2:
`--rounds N`, default 2; the median is kept), so that the other tenants of a shared machine weigh
on all levels alike:

  rsm            rsm as installed: its threading policy (passive OpenMP waiting, set when rsm._C
                 loads unless the user chose OMP_WAIT_POLICY / GOMP_SPINCOUNT)
  rsm-spin       rsm with libgomp's default waiting (GOMP_SPINCOUNT=300000): rsm before the
                 policy
  torch          PyTorch eager as a user runs it (its own defaults)
  torch-passive  PyTorch eager with OMP_WAIT_POLICY=passive (what the policy does for torch)

All use their default thread count (the cores this process may use). Reported: ms per step,
and the ratio of each level to the idle level of the same variant, and rsm vs torch at the same
load. The machine may be shared: the 1-minute load average before each level is printed.

Run: python benchmarks/bench_load.py [--quick] [--rounds N] [--levels 0,1,2] [--json PATH]"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("pretrain step B=256", "ODE sampler 20 steps B=256", "fine-tuning iteration flow-grpo 64x16")
VARIANTS = {"rsm": {}, "rsm-spin": {"GOMP_SPINCOUNT": "300000"}, "torch": {},
            "torch-passive": {"OMP_WAIT_POLICY": "passive"}}


# ---- worker: one variant, every workload, one process -------------------------------------------

def _measure(fn, once, min_sample_s, budget_s, max_samples=5):
    """Median seconds per call: samples of `inner` calls (about min_sample_s each, from `once`, the
    duration of a warm call) until at least 2 samples (1 when a call takes over 2 s) and budget_s
    seconds, at most max_samples (a step that a loaded machine slows down 100x must not hold the
    benchmark for an hour)."""
    inner = max(1, int(min_sample_s / max(once, 1e-6)))
    least = 1 if once > 2.0 else 2
    samples = []
    start = time.perf_counter()
    while len(samples) < max_samples and (len(samples) < least or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


class _Busy:
    """Keeps `n` busy processes (python -c "while True: pass") running; set(n) adds or stops some."""

    def __init__(self):
        self.procs = []

    def set(self, n: int) -> None:
        while len(self.procs) < n:
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        while len(self.procs) > n:
            p = self.procs.pop()
            p.kill()
            p.wait()
        time.sleep(0.5)


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


def worker(variant: str, quick: bool, levels, rounds: int) -> None:
    """Every workload at every load level, the levels interleaved (0 1 2 0 1 2 ...) so that the
    other tenants of a shared machine weigh on all of them alike; prints {workload: {level: s}}."""
    sys.path.insert(0, HERE)
    work = _torch_workloads() if variant.startswith("torch") else _rsm_workloads()
    busy = _Busy()
    out = {}
    try:
        for name, (fn, per_call) in work.items():
            fn()  # warm-up
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
            samples = {lv: [] for lv in levels}
            for _ in range(rounds):
                for lv in levels:
                    busy.set(lv)
                    samples[lv].append(_measure(fn, once, 0.1 if quick else 0.2, 0.5 if quick else 1.0))
            busy.set(0)
            out[name] = {str(lv): statistics.median(v) / per_call for lv, v in samples.items()}
    finally:
        busy.set(0)
    print(json.dumps(out))


# ---- driver -------------------------------------------------------------------------------------

def _run_variant(variant: str, quick: bool, levels, rounds) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                            "OMP_NUM_THREADS")}
    env.update(VARIANTS[variant])
    args = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--rounds", str(rounds),
            "--levels", ",".join(map(str, levels))] + (["--quick"] if quick else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    quick = "--quick" in sys.argv
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else (1 if quick else 2)
    levels = (tuple(int(v) for v in sys.argv[sys.argv.index("--levels") + 1].split(","))
              if "--levels" in sys.argv else (0, 1, 2))
    if "--worker" in sys.argv:
        worker(sys.argv[sys.argv.index("--worker") + 1], quick, levels, rounds)
        return 0
    load_before = os.getloadavg()[0]
    results = {}
    for v in VARIANTS:
        results[v] = _run_variant(v, quick, levels, rounds)
        print(f"  {v}: " + "; ".join(f"{w.split()[0]} " + ", ".join(f"{lv} busy {1e3 * s:.1f} ms" for lv, s in r.items())
                                     for w, r in results[v].items()), flush=True)
    cores = len(os.sched_getaffinity(0))
    print(f"\n### Step time under load ({cores} cores; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; levels interleaved, {rounds} round(s), medians)\n")
    print("| workload | variant | " + " | ".join(f"{lv} busy ms" + (" (x 0 busy)" if lv else "") for lv in levels) + " |")
    print("|---|---|" + "---|" * len(levels))
    for w in WORKLOADS:
        for v in VARIANTS:
            r = results[v][w]
            base = r[str(levels[0])]
            cells = [f"{1e3 * r[str(lv)]:.1f}" + (f" ({r[str(lv)] / base:.2f}x)" if lv != levels[0] else "")
                     for lv in levels]
            print(f"| {w} | {v} | " + " | ".join(cells) + " |")
    print("\n| workload | " + " | ".join(f"torch / rsm, {lv} busy" for lv in levels) + " | "
          + " | ".join(f"rsm-spin / rsm, {lv} busy" for lv in levels) + " |")
    print("|---|" + "---|" * (2 * len(levels)))
    for w in WORKLOADS:
        cells = [results["torch"][w][str(lv)] / results["rsm"][w][str(lv)] for lv in levels]
        cells += [results["rsm-spin"][w][str(lv)] / results["rsm"][w][str(lv)] for lv in levels]
        print(f"| {w} | " + " | ".join(f"{c:.2f}x" for c in cells) + " |")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"load_before": load_before, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
