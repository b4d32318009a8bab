"""Portable build vs -march=native: the same workloads timed with two builds of rsm, each in its
own process (one extension per process), interleaved A/B/A/B so that a shared machine's load
hits both alike; reports the median per-pair ratio portable / native.

  mlp-step    _C.pretrain_steps on the 2D MLP (dim 2, width 256, depth 3), batch 256: forward,
              backward and AdamW
  finetune    one rsm.Trainer iteration of rsm-fo and of flow-grpo on the same MLP (16 x 8 samples,
              10 sampler steps): rollout, reward, update

Run: python benchmarks/bench_native.py NATIVE_DIR PORTABLE_DIR [--pairs N]
(each DIR holds an rsm package: a copy of python/rsm with its built extension)."""
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
    parser.add_argument("native")
    parser.add_argument("portable")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {}
    times: dict[str, dict[str, list[float]]] = {"native": {}, "portable": {}}
    for _ in range(args.pairs):
        a, b = run(args.native), run(args.portable)
        assert "-march=native" in a.pop("flags") and "-march=native" not in b.pop("flags")
        for key in a:
            ratios.setdefault(key, []).append(b[key] / a[key])
            times["native"].setdefault(key, []).append(a[key])
            times["portable"].setdefault(key, []).append(b[key])
    print(f"| workload | native (median) | portable (median) | portable / native (median of {args.pairs} pairs) | range |")
    print("|---|---|---|---|---|")
    for key, r in ratios.items():
        print(f"| {key} | {statistics.median(times['native'][key]) * 1e3:.3f} ms | "
              f"{statistics.median(times['portable'][key]) * 1e3:.3f} ms | {statistics.median(r):.3f} | "
              f"{min(r):.3f} - {max(r):.3f} |")


if __name__ == "__main__":
    main()
