"""The overhead of the external-model protocol (issue 19): one Flow-GRPO fine-tuning iteration
(rsm.Trainer.step: rollout with the SDE and its log-probs, reward, group advantages, the C update
with AdamW) three ways, on the same MLP function and configuration:

  rsm MLP       rsm's own C MLP (csrc/nn/mlp_real.c)
  TorchModel    the torch twin of that MLP (benchmarks/torch_twin.py) through rsm.TorchModel:
                rsm's sampler, objective and AdamW, the network in torch, called back once per
                batch (csrc/nn/external.h); where its time goes: the torch forwards (rollout,
                reference, update), the torch backwards (a recomputed forward with autograd + the
                VJP), and the rest (rsm's C sampler / objective / AdamW, Python glue)
  pure torch    benchmarks/grpo_twin.py's eager PyTorch Flow-GRPO (the released recipe)

    python benchmarks/bench_torch_model.py [--hidden 256] [--depth 3] [--dtype float32] [--json PATH]

Timings are medians of interleaved samples (the same machine load for all three); ratios, never
asserted anywhere."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import THREADS, setup_threads  # noqa: E402
from grpo_twin import FlowGrpoTwin  # noqa: E402
from torch_twin import twin_of  # noqa: E402


class Clock:
    """Seconds spent in a TorchModel's callbacks (wrapping the instance's _forward/_backward,
    which rsm.external's weak callbacks look up at every call)."""

    def __init__(self, *models: rsm.TorchModel) -> None:
        self.seconds = {"forward": 0.0, "backward": 0.0}
        for m in models:
            for kind in ("forward", "backward"):
                setattr(m, f"_{kind}", self._timed(getattr(m, f"_{kind}"), kind))

    def _timed(self, fn, kind):
        def timed(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds[kind] += time.perf_counter() - t0
        return timed

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    setup_threads()
    center = [0.5] * args.dim
    reward = rsm.rewards.quadratic(center)
    ref = rsm.MLP(args.dim, args.hidden, args.depth, seed=0, dtype=args.dtype)
    flat = np.from_dlpack(ref.params)   # a non-zero output layer (rsm.MLP starts it at 0)
    flat[...] = np.random.default_rng(0).normal(0, 0.05, flat.shape).astype(flat.dtype)
    rsm.guards.record_path(ref, rsm.FlowPath())
    common = dict(batch_size=args.batch_size, group_size=args.group_size, seed=0, kl_every=0)

    native = rsm.Trainer(ref.copy(), ref, reward, "flow-grpo", **common)
    tpolicy = rsm.TorchModel(twin_of(ref), rsm.FlowPath(), dim=args.dim)
    tref = rsm.TorchModel(twin_of(ref), rsm.FlowPath(), dim=args.dim, trainable=False)
    external = rsm.Trainer(tpolicy, tref, reward, "flow-grpo", **common)
    clock = Clock(tpolicy, tref)
    pure = FlowGrpoTwin(native, center)
    gen = torch.Generator().manual_seed(0)

    cases = {"rsm MLP": native.step, "TorchModel": external.step, "pure torch": lambda: pure.iteration(gen)}
    for fn in cases.values():   # warm-up
        fn()
    samples = {k: [] for k in cases}
    split = {"forward": [], "backward": [], "rest": []}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            clock.reset()
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
            if name == "TorchModel":   # per sample, so the three parts add up to its total
                for k in ("forward", "backward"):
                    split[k].append(clock.seconds[k])
                split["rest"].append(samples[name][-1] - clock.seconds["forward"] - clock.seconds["backward"])
    med = {k: statistics.median(v) for k, v in samples.items()}
    fwd, bwd, rest = (statistics.median(split[k]) for k in ("forward", "backward", "rest"))
    n = args.batch_size * args.group_size
    print(f"\n### One flow-grpo iteration, MLP dim {args.dim} hidden {args.hidden} depth {args.depth}, "
          f"{n} samples x {len(native.ts) - 1} steps, {args.dtype}, {THREADS} threads, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n")
    print("| implementation | ms per iteration | vs rsm MLP |")
    print("|---|---|---|")
    for name, s in med.items():
        print(f"| {name} | {s * 1e3:.1f} | {s / med['rsm MLP']:.2f}x |")
    print(f"\nTorchModel's iteration: torch forwards (rollout, reference, update) {fwd * 1e3:.1f} ms, "
          f"torch backwards (recomputed forward + VJP) {bwd * 1e3:.1f} ms, the rest (rsm's C sampler, "
          f"objective, AdamW; Python) {rest * 1e3:.1f} ms")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"ms": {k: v * 1e3 for k, v in med.items()}, "forward_ms": fwd * 1e3,
                       "backward_ms": bwd * 1e3, "rest_ms": rest * 1e3}, f, indent=1)


if __name__ == "__main__":
    main()
