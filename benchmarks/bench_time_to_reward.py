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
flow matching (MLP width 128, depth 3) and a reward with maximum 0: the quadratic -|x - c|^2 / 2
with c between modes, on a mode or far outside the data, and (added to check rsm-zo's default
budget on tasks it was not chosen on) a ring -(|x| - 3)^2 / 2 and a cone -|x - p|.

After every iteration the policy is evaluated (not timed): the mean reward of 1024 samples of its
probability-flow ODE (20 Euler steps, fixed noise), the same evaluation for every method. The
target is fixed per task: the pretrained model's evaluation reward r0 plus 60% of the gap to the
reward's maximum (0): level = 0.4 r0. Reported per method: iterations, network evaluations (rsm's
count: rollout forwards + 3 per trained row) and CPU seconds until the evaluation first reaches
the level; median and range over the seeds; whether it held (the evaluation reward after 8 more
iterations). One thread for rsm and torch (on a shared machine single-thread CPU time is the
steadier clock; wall seconds are reported too).

Run: python benchmarks/bench_time_to_reward.py [--quick] [--json PATH]
     ... --sweep-zo TASK,TASK,...   rsm-zo budget candidates (ZO_BUDGETS) on the named tasks
     ... --ablate-zo                rsm-zo with one preset key changed at a time
     ... --dit [--zo-budget B;B]    the digits DiT with the classifier reward (rsm only)"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402

# torch and the twins are imported where the torch loop runs: the rsm-only modes (--sweep-zo,
# --ablate-zo) run without torch, whose heap would add garbage-collector time to rsm's iterations

WIDTH, DEPTH, PROMPTS, GROUP = 128, 3, 32, 16
METHODS = ("torch flow-grpo", "rsm flow-grpo", "rsm rsm-zo", "rsm rsm-fo")
TASKS = {
    # name: (mixture means, std, reward: centre c of -|x - c|^2 / 2, or (kind, argument))
    "between-modes": ([[-2.5, -1.0], [2.5, -1.0], [0.0, 2.5]], 0.5, [0.0, 0.0]),
    "on-a-mode": ([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]], 0.35, [2.0, -2.0]),
    "far-outside": ([[-1.0, 0.0], [1.0, 0.0]], 0.4, [3.0, 4.0]),
    # two tasks added after the rsm-zo budget was chosen on the three above (they check that
    # choice): other mixtures and other reward shapes, both with maximum 0
    # ring-outward: a tight cluster, reward -(|x| - 3)^2 / 2: every direction is optimal, the mass
    #   must move outward and spread round a circle
    "ring-outward": ([[0.0, 0.0], [0.8, 0.6], [-0.8, 0.6]], 0.3, ("ring", 3.0)),
    # hexagon-edge: six modes on a circle of radius 3, reward -|x - p| (a cone, not a quadratic)
    #   with p just outside the hexagon, between two modes
    "hexagon-edge": ([[3 * np.cos(a), 3 * np.sin(a)] for a in np.arange(6) * np.pi / 3], 0.3,
                     ("distance", [3.2, 1.8])),
}
EVAL_N, EVAL_STEPS, EVAL_SEED = 1024, 20, 12345
HOLD = 8


def mixture(means, std, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    means = np.asarray(means, dtype=np.float64)
    return (means[rng.integers(0, len(means), n)] + std * rng.standard_normal((n, 2))).astype(np.float32)


def task_reward(spec) -> rsm.Reward:
    """The task's rsm reward: a centre list means the quadratic -|x - c|^2 / 2."""
    if isinstance(spec, tuple):
        kind, arg = spec
        return rsm.rewards.ring(arg, scale=0.5) if kind == "ring" else rsm.rewards.distance(arg)
    return rsm.rewards.quadratic(spec)


def score_of(spec):
    """Mean reward of a sample (float64), the evaluation every method shares."""
    reward = task_reward(spec)
    return lambda x: float(np.mean(reward.value(np.asarray(x, np.float64))))


def gradient_check(base) -> dict:
    """float64: rsm's flow-grpo gradient vs the torch loop's, on rsm's recorded rollout, at the
    rollout parameters (ratio 1: the PPO term) and moved off them (the clip and the KL)."""
    from grpo_twin import FlowGrpoTwin, check_gradient
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
    reward = task_reward(center)
    score = score_of(center)
    policy = base.copy()
    name = method.split()[1]
    trainer = rsm.Trainer(policy, base, reward, name, batch_size=PROMPTS, group_size=GROUP, seed=seed,
                          kl_every=0, **overrides)
    if method.startswith("torch"):
        import torch
        from grpo_twin import FlowGrpoTwin
        from zo_twin import flat_params
        twin = FlowGrpoTwin(trainer, center, reward=None if isinstance(center, list) else reward)
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
        base = pretrained(means, std)
        x = np.from_dlpack(rsm.sample(base, EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS, seed=EVAL_SEED))
        level = 0.4 * score_of(center)(x)
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


ZO_BUDGETS = {
    # candidates for rsm-zo's default budget k_0..k_8 (branches per root at each transition)
    "lowsnr2 [6,6,8,10,0x5] (30), the old default": [6, 6, 8, 10, 0, 0, 0, 0, 0],
    "[4]*9 (36)": [4] * 9,
    "tapered [4,4,4,4,4,3,3,2,2] (30), the default": [4, 4, 4, 4, 4, 3, 3, 2, 2],
    "highsnr [3..11] (54)": [3, 3, 4, 5, 6, 7, 7, 8, 11],
}


def pretrained(means, std, steps=1500):
    """The task's reference: the MLP pretrained by flow matching on the mixture."""
    base = rsm.MLP(2, WIDTH, DEPTH, seed=0)
    rsm.pretrain(base, mixture(means, std), rsm.FlowPath(), steps=steps, batch_size=256, lr=2e-3,
                 warmup_steps=50, progress=False)
    return base


def sweep_zo_budget(tasks, max_iters: int, seeds=(0, 1, 2)) -> None:
    """rsm-zo's budget candidates on `tasks`, seeds interleaved per candidate (A/B on a shared
    machine): iteration and CPU seconds to the level, best and last evaluation reward."""
    print(f"# rsm-zo budget sweep, {max_iters} iterations, seeds {seeds}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n| task | budget | reached | iteration (per seed) | CPU s to level (median) | best (median) "
          "| last (median) | last (per seed) | ms CPU / it |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for task in tasks:
        means, std, center = TASKS[task]
        base = pretrained(means, std)
        x = np.from_dlpack(rsm.sample(base, EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS, seed=EVAL_SEED))
        level = 0.4 * score_of(center)(x)
        runs = {label: [] for label in ZO_BUDGETS}
        for seed in seeds:
            for label, budget in ZO_BUDGETS.items():
                runs[label].append(run("rsm rsm-zo", base, center, level, seed, max_iters, hold=max_iters,
                                       budget=budget))
        for label, rs in runs.items():
            its = [r["reached"]["iters"] if r["reached"] else None for r in rs]
            cpu = [r["reached"]["cpu"] for r in rs if r["reached"]]
            print(f"| {task} (level {level:.2f}) | {label} | {len(cpu)}/{len(rs)} "
                  f"| {', '.join('-' if i is None else str(i) for i in its)} "
                  f"| {statistics.median(cpu) if cpu else float('nan'):.2f} "
                  f"| {statistics.median(r['best'] for r in rs):.3f} | {statistics.median(r['final'] for r in rs):.3f} "
                  f"| {', '.join(format(r['final'], '.2f') for r in rs)} "
                  f"| {statistics.median(1e3 * r['cpu_per_iter'] for r in rs):.1f} |", flush=True)
        print(f"<!-- {task} done, load average {os.getloadavg()[0]:.1f} -->", flush=True)


def dit_digits(max_iters: int, seeds, hold: int = HOLD, zo_budgets=()) -> dict:
    """The digits DiT (8x8, patch 2, width 32, depth 2, 4 heads: images-finetune's full size) with
    the scikit-learn classifier's probability of the prompted digit as the black-box reward, LoRA
    adapters (rank 4) and classifier-free guidance 1.5, batch 6 prompts x group 6 (the
    images-finetune study's set-up and its zeroth-order overrides lr 2e-3, 2 inner epochs, the same
    for both methods): rsm flow-grpo vs rsm rsm-zo to a fixed level, r0 + 60% of the gap to 1.
    No PyTorch loop here: benchmarks/dit_twin.py is the DiT's forward only (no LoRA, no guided
    rollout, no Flow-GRPO loop around it), see RESULTS.md."""
    import tempfile

    from rsm import image_rewards
    from rsm.experiments import images_finetune as exp

    sz = exp._sizes(False)
    cache = os.environ.get("RSM_BENCH_CACHE") or tempfile.mkdtemp(prefix="rsm_ttr_")
    ref, info = exp._pretrained(__import__("pathlib").Path(cache), "digits", sz, 0)
    rec = exp._Recorder(image_rewards.digit_probability(image_rewards.digit_classifier(0)))
    prompts = exp._prompts("digits", sz, 0)
    r0 = exp._evaluate(rsm.Guided(ref, exp.GUIDANCE), rec, prompts, sz)[0]
    level = r0 + 0.6 * (1.0 - r0)
    print(f"\n## digits DiT + classifier probability (reference {info}): r0 = {r0:.3f}, level = {level:.3f}",
          flush=True)
    out = {"r0": r0, "level": level, "methods": {}}
    variants = [("rsm flow-grpo", {}), ("rsm rsm-zo", {})]
    variants += [(f"rsm rsm-zo budget {b}", {"budget": b}) for b in zo_budgets]
    for method, extra in variants:
        name = method.split()[1]
        preset = rsm.methods.get(name)
        runs = []
        for seed in seeds:
            policy = rsm.Guided(rsm.lora(ref, rank=sz["rank"], seed=seed), exp.GUIDANCE)
            trainer = rsm.Trainer(policy, rsm.Guided(ref, exp.GUIDANCE), rec.reward, name, seed=seed,
                                  conditions=prompts, batch_size=min(sz["batch"], len(prompts)),
                                  group_size=sz["group"], kl_every=0,
                                  **{k: v for k, v in exp.ZO.items() if k in preset}, **extra)
            cpu = wall = 0.0
            nfe, it, reached = 0, 0, None
            curve = [r0]
            while it < max_iters and (reached is None or it < reached["iters"] + hold):
                c0, w0 = time.process_time(), time.perf_counter()
                nfe += trainer.step()["nfe"]
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                it += 1
                curve.append(exp._evaluate(policy, rec, prompts, sz)[0])
                if reached is None and curve[-1] >= level:
                    reached = {"iters": it, "nfe": nfe, "cpu": cpu, "wall": wall}
            res = {"reached": reached, "final": curve[-1], "best": max(curve), "curve": curve,
                   "cpu_per_iter": cpu / it, "nfe_per_iter": nfe / it}
            runs.append(res)
            print(f"  {method:16s} seed {seed}: "
                  + (f"reached at it {reached['iters']} ({reached['nfe']} NFE, {reached['cpu']:.2f} s CPU)"
                     if reached else f"NOT reached in {max_iters}")
                  + f"; best {res['best']:.3f}, last {res['final']:.3f}; {1e3 * res['cpu_per_iter']:.1f} ms CPU/it, "
                    f"{res['nfe_per_iter']:.0f} NFE/it, load average {os.getloadavg()[0]:.1f}", flush=True)
        out["methods"][method] = {"runs": runs, "summary": summarize(runs)}
    return out


def main() -> int:
    quick = "--quick" in sys.argv
    if "--dit" in sys.argv:
        rsm.set_num_threads(1)
        budgets = [json.loads(b) for b in sys.argv[sys.argv.index("--zo-budget") + 1].split(";")] \
            if "--zo-budget" in sys.argv else []
        res = dit_digits(15 if quick else 48, (0,) if quick else (0, 1, 2), zo_budgets=budgets)
        for method, mr in res["methods"].items():
            s = mr["summary"]
            print(f"| digits DiT | {method} | " + (f"{s['hits']}/{len(mr['runs'])} | {s['median']['iters']:.0f} "
                  f"({s['range']['iters'][0]}-{s['range']['iters'][1]}) | {s['median']['nfe']:.0f} | "
                  f"{s['median']['cpu']:.2f} ({s['range']['cpu'][0]:.2f}-{s['range']['cpu'][1]:.2f}) |"
                  if s else "0 reached |")
                  + f" last {statistics.median(r['final'] for r in mr['runs']):.3f} | "
                    f"{statistics.median(1e3 * r['cpu_per_iter'] for r in mr['runs']):.1f} ms CPU/it |")
        return 0
    if "--sweep-zo" in sys.argv:
        rsm.set_num_threads(1)
        tasks = sys.argv[sys.argv.index("--sweep-zo") + 1].split(",")
        sweep_zo_budget(tasks, 12 if quick else 30)
        return 0
    if "--ablate-zo" in sys.argv:
        rsm.set_num_threads(1)
        ablate_zo(12 if quick else 30)
        return 0
    import torch
    rsm.set_num_threads(1)
    torch.set_num_threads(1)
    seeds = (0,) if quick else (0, 1, 2)
    max_iters = 15 if quick else 40
    pre_steps = 600 if quick else 1500
    results = {}
    print(f"# time to reward: MLP {WIDTH}x{DEPTH}, batch {PROMPTS} x group {GROUP}, seeds {seeds}, "
          f"max {max_iters} iterations, 1 thread, load average {os.getloadavg()[0]:.1f}", flush=True)
    for task, (means, std, center) in TASKS.items():
        base = pretrained(means, std, pre_steps)
        if task == next(iter(TASKS)):
            print("gradient check (float64, max |diff| / max |rsm|): " + json.dumps(gradient_check(base)), flush=True)
        x = np.from_dlpack(rsm.sample(base, EVAL_N, rsm.FlowPath(), "ode", steps=EVAL_STEPS, seed=EVAL_SEED))
        r0 = score_of(center)(x)
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
