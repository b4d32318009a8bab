"""Portable build vs -march=native: the same workloads timed with two builds of rsm, each in its
own process (one extension per process), interleaved round by round so that a shared machine's load
hits both alike; reports the median per-pair ratio portable / native.

  mlp-step    _C.pretrain_steps on the 2D MLP (dim 2, width 256, depth 3), batch 256: forward,
              backward and AdamW
  finetune    one rsm.Trainer iteration of rsm-fo and of flow-grpo on the same MLP (16 x 8 samples,
              10 sampler steps): rollout, reward, update

Run: python benchmarks/bench_native.py BASELINE_DIR OTHER_DIR... [--pairs N]
(each DIR holds an rsm package: a copy of python/rsm with its built extension; the ratios are
OTHER / BASELINE per round, time per call, lower is faster)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import rsm
rsm.set_num_threads(1)
path = rsm.FlowPath()
model = rsm.MLP(2, 256, 3, seed=0)
data = rsm.datasets.get("8gaussians").sample(20000, seed=0)
opt = rsm.AdamW(model, lr=1e-3)
out = {"flags": rsm.build_info()["c_flags"]}
def best(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)
k = 50
step = lambda: rsm._C.pretrain_steps(model._core, opt._core, path._core, data, None, 256, 0.0, 1.0,
                                     1e-3, 0, 0, 0, k, 0, 0.05, 0.0, None)
step()
out["mlp-step"] = best(step, 5) / k
reward = rsm.rewards.quadratic([2.0, 0.0])
for method, extra in (("rsm-fo", {}), ("flow-grpo", {"clip_eps": 0.2})):
    tr = rsm.Trainer(model.copy(), model, reward, method, batch_size=16, group_size=8,
                     sampler_steps=10, kl_every=0, **extra)
    tr.step()
    out["finetune " + method] = best(tr.step, 3)
print(json.dumps(out))
"""


def run(directory: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", WORKER, directory], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="+", help="rsm package directories; the first is the baseline")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    base, others = args.dirs[0], args.dirs[1:]
    times: dict[str, dict[str, list[float]]] = {d: {} for d in args.dirs}
    flags = {}
    for _ in range(args.pairs):
        for d in args.dirs:   # interleaved: one run of each build per round
            out = run(d)
            flags[d] = out.pop("flags").split("-march=")[-1] if "-march=" in out.get("flags", "") else "(none)"
            for key, value in out.items():
                times[d].setdefault(key, []).append(value)
    label = {d: f"-march={flags[d]}" if flags[d] != "(none)" else "portable (x86-64)" for d in args.dirs}
    keys = list(times[base])
    print("| workload | " + " | ".join(f"{label[d]} (median)" for d in args.dirs) + " | " +
          " | ".join(f"{label[d]} / {label[base]} (median of {args.pairs} rounds)" for d in others) + " |")
    print("|---" * (1 + len(args.dirs) + len(others)) + "|")
    for key in keys:
        cells = [f"{statistics.median(times[d][key]) * 1e3:.2f} ms" for d in args.dirs]
        ratios = []
        for d in others:
            r = [a / b for a, b in zip(times[d][key], times[base][key])]
            ratios.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
        print(f"| {key} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
