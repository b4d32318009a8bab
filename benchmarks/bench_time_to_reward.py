"""Time (and network evaluations) to reach a fixed reward level on held-out 2D tasks.

Methods, each with its preset's defaults, the same pretrained model, reward, batch (32 prompts /
roots, group 16) and seeds:

  (a) torch flow-grpo   Flow-GRPO in PyTorch eager as its authors run it (benchmarks/grpo_twin.py:
                        rollout, reward, advantages, update); its loss gradient is checked against
                        rsm's flow-grpo (float64, on rsm's recorded rollout) before any timing
  (b) rsm flow-grpo     rsm.Trainer(..., "flow-grpo")
  (c) rsm rsm-zo        rsm.Trainer(..., "rsm-zo") (the zeroth-order redesign)
  (d) rsm rsm-fo        rsm.Trainer(..., "rsm-fo") (first order: the quadratic reward is differentiable)

Tasks (none is used by a preset, an experiment or a test): a 2D Gaussian mixture pretrained by
flow matching (MLP width 128, depth 3) and a quadratic reward r(x) = -|x - c|^2 / 2 whose optimum c
sits between modes, on a mode, or far outside the data.

After every iteration the policy is evaluated (not timed): the mean reward of 1024 samples of its
probability-flow ODE (20 Euler steps, fixed noise), the same evaluation for every method. The
target is fixed per task: the pretrained model's evaluation reward r0 plus 60% of the gap to the
reward's maximum (0): level = 0.4 r0. Reported per method: iterations, network evaluations (rsm's
count: rollout forwards + 3 per trained row) and CPU seconds until the evaluation first reaches
the level; median and range over the seeds; whether it held (the evaluation reward after 8 more
iterations). One thread for rsm and torch (on a shared machine single-thread CPU time is the
steadier clock; wall seconds are reported too).

Run: python benchmarks/bench_time_to_reward.py [--quick] [--json PATH]"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from grpo_twin import FlowGrpoTwin, check_gradient  # noqa: E402
from zo_twin import flat_params  # noqa: E402

WIDTH, DEPTH, PROMPTS, GROUP = 128, 3, 32, 16
METHODS = ("torch flow-grpo", "rsm flow-grpo", "rsm rsm-zo", "rsm rsm-fo")
TASKS = {
    # name: (mixture means, std, reward centre)
    "between-modes": ([[-2.5, -1.0], [2.5, -1.0], [0.0, 2.5]], 0.5, [0.0, 0.0]),
    "on-a-mode": ([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]], 0.35, [2.0, -2.0]),
    "far-outside": ([[-1.0, 0.0], [1.0, 0.0]], 0.4, [3.0, 4.0]),
}
EVAL_N, EVAL_STEPS, EVAL_SEED = 1024, 20, 12345
HOLD = 8


def mixture(means, std, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    means = np.asarray(means, dtype=np.float64)
    return (means[rng.integers(0, len(means), n)] + std * rng.standard_normal((n, 2))).astype(np.float32)


def quad(center):
    c = np.asarray(center, dtype=np.float64)
    return lambda x: float(np.mean(-0.5 * ((np.asarray(x, np.float64) - c) ** 2).sum(1)))


def gradient_check(base) -> dict:
    """float64: rsm's flow-grpo gradient vs the torch loop's, on rsm's recorded rollout, at the
    rollout parameters (ratio 1: the PPO term) and moved off them (the clip and the KL)."""
    out = {}
    m64 = rsm.MLP(2, WIDTH, DEPTH, seed=0, dtype="float64")
    m64.load_params(np.from_dlpack(base.params).astype(np.float64))
    for perturb in (0.0, 1e-3):
        trainer = rsm.Trainer(m64.copy(), m64, rsm.rewards.quadratic([0.5, 0.5]), "flow-grpo",
                              batch_size=8, group_size=8, seed=3, kl_every=0)
        errs = check_gradient(trainer, FlowGrpoTwin(trainer, [0.5, 0.5]), perturb=perturb)
        out[f"perturb {perturb:g}"] = errs
        bad = {k: v for k, v in errs.items() if not v <= 1e-9}
        if bad:
            raise SystemExit(f"torch Flow-GRPO loop disagrees with rsm's flow-grpo: {bad} ({errs})")
    return out


def run(method, base, center, level, seed, max_iters, hold=HOLD, **overrides):
    """Iterations until the evaluation reaches `level` (or max_iters), then HOLD more."""
    reward = rsm.rewards.quadratic(center)
    score = quad(center)
    policy = base.copy()
    name = method.split()[1]
    trainer = rsm.Trainer(policy, base, reward, name, batch_size=PROMPTS, group_size=GROUP, seed=seed,
                          kl_every=0, **overrides)
    if method.startswith("torch"):
        twin = FlowGrpoTwin(trainer, center)
        gen = torch.Generator().manual_seed(seed)
        template = base.copy()

        def step():
            twin.iteration(gen)
            return twin.nfe()

        def current():
            template.load_params(flat_params(twin.policy, template).astype(np.float32))
            return template
    else:
        def step():
            return trainer.step()["nfe"]

        def current():
            return policy

    def eval_now():
        x = np.from_dlpack(rsm.sample(current(), EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS,
                                      seed=EVAL_SEED))
        return score(x)

    cpu = wall = 0.0
    nfe = 0
    curve = [eval_now()]
    reached = None
    it = 0
    while it < max_iters and (reached is None or it < reached["iters"] + hold):
        c0, w0 = time.process_time(), time.perf_counter()
        nfe += step()
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
        it += 1
        curve.append(eval_now())
        if reached is None and curve[-1] >= level:
            reached = {"iters": it, "nfe": nfe, "cpu": cpu, "wall": wall}
    return {"reached": reached, "final": curve[-1], "best": max(curve), "curve": curve,
            "cpu_per_iter": cpu / it, "nfe_per_iter": nfe / it}


def summarize(runs):
    hit = [r["reached"] for r in runs if r["reached"]]
    if not hit:
        return None
    med = {k: statistics.median(h[k] for h in hit) for k in ("iters", "nfe", "cpu", "wall")}
    rng = {k: (min(h[k] for h in hit), max(h[k] for h in hit)) for k in ("iters", "nfe", "cpu", "wall")}
    return {"hits": len(hit), "median": med, "range": rng}


ZO_ABLATIONS = {
    "preset": {},
    "lr 3e-4": {"lr": 3e-4},
    "lr 1e-4": {"lr": 1e-4},
    "no KL-anchor rows": {"kl_anchor": 0.0},
    "no KL (beta 0, anchors 0)": {"kl": 0.0, "kl_anchor": 0.0},
    "KL beta 0.04": {"kl": 0.04},
    "budget [3,3,4,6]": {"budget": [3, 3, 4, 6, 0, 0, 0, 0, 0]},
    "budget [4]*9 (every step)": {"budget": [4] * 9},
    "reweight base (no fair clip)": {"reweight": "base"},
    "max_grad_norm 0.1": {"max_grad_norm": 0.1},
}


def ablate_zo(max_iters: int, seeds=(0, 1)) -> None:
    """rsm-zo with one preset key changed at a time, on two of the tasks (seeds 0, 1): where it
    reaches the level, its best and last evaluation reward (collapse = last far below best)."""
    print("\n| task | rsm-zo variant | reached (iteration per seed) | best | last |\n|---|---|---|---|---|")
    for task in ("between-modes", "far-outside"):
        means, std, center = TASKS[task]
        base = rsm.MLP(2, WIDTH, DEPTH, seed=0)
        rsm.pretrain(base, mixture(means, std), rsm.FlowPath(), steps=1500, batch_size=256, lr=2e-3,
                     warmup_steps=50, progress=False)
        x = np.from_dlpack(rsm.sample(base, EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS, seed=EVAL_SEED))
        level = 0.4 * quad(center)(x)
        for label, over in ZO_ABLATIONS.items():
            runs = []
            for seed in seeds:
                res = run("rsm rsm-zo", base, center, level, seed, max_iters, hold=max_iters, **over)
                runs.append(res)
            its = [next((i for i, v in enumerate(r["curve"]) if v >= level), None) for r in runs]
            reached = ", ".join(str(i) if i is not None else "-" for i in its)
            best = ", ".join(f"{r['best']:.2f}" for r in runs)
            last = ", ".join(f"{r['final']:.2f}" for r in runs)
            print(f"| {task} | {label} | {reached} | {best} | {last} |", flush=True)


def main() -> int:
    quick = "--quick" in sys.argv
    if "--ablate-zo" in sys.argv:
        rsm.set_num_threads(1)
        ablate_zo(12 if quick else 30)
        return 0
    rsm.set_num_threads(1)
    torch.set_num_threads(1)
    seeds = (0,) if quick else (0, 1, 2)
    max_iters = 15 if quick else 40
    pre_steps = 600 if quick else 1500
    results = {}
    print(f"# time to reward: MLP {WIDTH}x{DEPTH}, batch {PROMPTS} x group {GROUP}, seeds {seeds}, "
          f"max {max_iters} iterations, 1 thread, load average {os.getloadavg()[0]:.1f}", flush=True)
    for task, (means, std, center) in TASKS.items():
        base = rsm.MLP(2, WIDTH, DEPTH, seed=0)
        rsm.pretrain(base, mixture(means, std), rsm.FlowPath(), steps=pre_steps, batch_size=256, lr=2e-3,
                     warmup_steps=50, progress=False)
        if task == next(iter(TASKS)):
            print("gradient check (float64, max |diff| / max |rsm|): " + json.dumps(gradient_check(base)), flush=True)
        x = np.from_dlpack(rsm.sample(base, EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS, seed=EVAL_SEED))
        r0 = quad(center)(x)
        level = 0.4 * r0
        print(f"\n## {task}: means {means}, std {std}, reward centre {center}; pretrained r0 = {r0:.3f}, "
              f"level = {level:.3f}", flush=True)
        results[task] = {"r0": r0, "level": level, "methods": {}}
        for method in METHODS:
            runs = []
            for seed in seeds:
                res = run(method, base, center, level, seed, max_iters)
                runs.append(res)
                rc = res["reached"]
                print(f"  {method:16s} seed {seed}: "
                      + (f"reached at it {rc['iters']} ({rc['nfe']} NFE, {rc['cpu']:.2f} s CPU, {rc['wall']:.2f} s wall)"
                         if rc else f"NOT reached in {max_iters}")
                      + f"; best {res['best']:.3f}, last {res['final']:.3f}; {1e3 * res['cpu_per_iter']:.1f} ms CPU/it, "
                        f"{res['nfe_per_iter']:.0f} NFE/it", flush=True)
            results[task]["methods"][method] = {"runs": runs, "summary": summarize(runs)}
    print("\n| task | method | reached | iterations | NFE | CPU s | wall s | eval reward after +8 it (median) | ms CPU / it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, tr in results.items():
        for method, mr in tr["methods"].items():
            s = mr["summary"]
            runs = mr["runs"]
            after = statistics.median(r["final"] for r in runs)
            per = statistics.median(1e3 * r["cpu_per_iter"] for r in runs)
            if s is None:
                print(f"| {task} | {method} | 0/{len(runs)} | - | - | - | - | {after:.3f} | {per:.1f} |")
                continue
            m, g = s["median"], s["range"]
            fmt = lambda k, f: f"{m[k]:{f}} ({g[k][0]:{f}}-{g[k][1]:{f}})"  # noqa: E731
            print(f"| {task} | {method} | {s['hits']}/{len(runs)} | {fmt('iters', '.0f')} | {fmt('nfe', '.0f')} "
                  f"| {fmt('cpu', '.2f')} | {fmt('wall', '.2f')} | {after:.3f} | {per:.1f} |")
    print("\n| task | (a)/(b) CPU time | (a)/(c) CPU time | (a)/(d) CPU time | (a)/(c) NFE |")
    print("|---|---|---|---|---|")
    for task, tr in results.items():
        s = {m: tr["methods"][m]["summary"] for m in METHODS}
        ratio = lambda a, b, k: (f"{s[a]['median'][k] / s[b]['median'][k]:.2f}x"  # noqa: E731
                                 if s[a] and s[b] else "-")
        print(f"| {task} | {ratio(METHODS[0], METHODS[1], 'cpu')} | {ratio(METHODS[0], METHODS[2], 'cpu')} "
              f"| {ratio(METHODS[0], METHODS[3], 'cpu')} | {ratio(METHODS[0], METHODS[2], 'nfe')} |")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
