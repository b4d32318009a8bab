"""A steady loop of one rsm step for a sampling profiler (no torch imported: its heap would add
garbage-collector time to rsm's Python share, see RESULTS.md "Profile of the fine-tuning iteration").

  python benchmarks/profile_step.py dit-vjp [digits|shapes] SECONDS   DiT forward + vjp
  python benchmarks/profile_step.py dit-pretrain [digits|shapes] SECONDS   DiT pretraining step
  python benchmarks/profile_step.py mlp-iter [flow-grpo|rsm-zo] SECONDS   one Trainer.step()

Prints the CPU milliseconds per step (time.process_time) and the load average; run it under
`perf record -g -F 499 --delay 2500 ...` to skip the set-up."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import rsm

DIT = {
    "digits": dict(image_size=8, channels=1, patch=2, width=128, depth=4, heads=4, num_classes=10, batch=128),
    "shapes": dict(image_size=16, channels=3, patch=2, width=128, depth=4, heads=4, num_classes=10, batch=32),
}


def dit_model(cfg: dict, seed: int = 0) -> rsm.DiT:
    """bench_dit.model_of: random adaLN weights so that every layer does real work."""
    model = rsm.DiT(**{k: v for k, v in cfg.items() if k != "batch"}, seed=seed)
    rng = np.random.default_rng(seed)
    for name, view in model.named_params().items():
        if "adaLN" in name or name.startswith("final.linear"):
            fan_in = view.shape[-1] if view.ndim == 2 else 1
            view[...] = rng.normal(0, 0.2 / np.sqrt(fan_in), view.shape).astype(view.dtype)
    return model


# matmul FLOPs of one MLP forward per row (dim 2, width 256, depth 3, temb 64: bench_finetune's)
FWD_ROW = 2 * (66 * 256 + 6 * 256 * 256 + 256 * 2)
PEAK_CORE = 108.5   # GFLOP/s float32, one core (RESULTS.md "Machine and versions")


def mlp_iteration_flops(row: dict) -> float:
    """Matmul FLOPs of one iteration from its history row: rollout forwards + 4 forwards' worth
    per trained row (policy forward, reference forward, backward = 2 forwards)."""
    return float(FWD_ROW) * (row["rollout_nfe"] + 4 * row["rows"])


def dit_flops(cfg: dict, temb: int = 64) -> float:
    """Matmul FLOPs of one forward of cfg["batch"] images: every Linear and the two attention
    products, 2 m n k each (bench_dit.py's FLOP count)."""
    s, c, p, w, depth = cfg["image_size"], cfg["channels"], cfg["patch"], cfg["width"], cfg["depth"]
    tokens, pd = (s // p) ** 2, c * p * p
    per_token = 2 * pd * w + depth * (24 * w * w + 4 * tokens * w) + 2 * w * pd
    per_image = 2 * temb * w + 2 * w * w + depth * 12 * w * w + 4 * w * w
    return float(cfg["batch"] * (tokens * per_token + per_image))


def main() -> int:
    what, case, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rsm.set_num_threads(int(os.environ.get("RSM_BENCH_THREADS", "1")))
    rng = np.random.default_rng(0)
    if what.startswith("dit"):
        cfg = DIT[case]
        model, b = dit_model(cfg), cfg["batch"]
        d = cfg["channels"] * cfg["image_size"] ** 2
        x = rng.standard_normal((b, d)).astype(np.float32)
        t = rng.uniform(0, 1, b).astype(np.float32)
        y = rng.integers(0, cfg["num_classes"], b).astype(np.float32).reshape(-1, 1)
        if what == "dit-vjp":
            g = rng.standard_normal((b, d)).astype(np.float32)

            def step():
                model.forward_and_vjp(x, t, g, cond=y)
        else:
            opt, path = rsm.AdamW(model, lr=1e-4, max_grad_norm=0.0), rsm.FlowPath()
            data = rng.uniform(-1, 1, (2048, d)).astype(np.float32)
            cond = rng.integers(0, cfg["num_classes"], 2048).astype(np.float32).reshape(-1, 1)
            state = {"k": 0}

            def step():
                rsm._C.pretrain_steps(model._core, opt._core, path._core, data, cond, b, 0.0, 1.0, 1e-4,
                                      0, 0, state["k"], 1)
                state["k"] += 1
    else:
        base = rsm.MLP(2, 256, 3, seed=0)
        trainer = rsm.Trainer(base.copy(), base, rsm.rewards.quadratic([1.0, 1.0]), case, batch_size=64,
                              group_size=16, seed=0, kl_every=0)

        def step():
            return trainer.step()
    flops = None
    if what == "dit-vjp":
        flops = 3 * dit_flops(cfg)
    elif what == "dit-pretrain":
        flops = 3 * dit_flops(cfg)
    first = step()
    if what == "mlp-iter":
        flops = mlp_iteration_flops(first)
    n, c0 = 0, time.process_time()
    w0 = time.perf_counter()
    while time.perf_counter() - w0 < seconds:
        step()
        n += 1
    cpu = time.process_time() - c0
    wall = time.perf_counter() - w0
    threads = int(os.environ.get("RSM_BENCH_THREADS", "1"))
    # % of peak by CPU time: FLOPs / (CPU seconds x one core's peak), i.e. how well the cores
    # that did run were used (on a shared machine the wall clock also counts time descheduled)
    print(f"{what} {case} ({threads} thread(s)): {n} steps, {1e3 * cpu / n:.2f} ms CPU/step, "
          f"{1e3 * wall / n:.2f} ms wall/step, {flops / 1e9:.2f} GFLOP/step, "
          f"{flops * n / cpu / 1e9:.1f} GFLOP per CPU-second = {100 * flops * n / cpu / 1e9 / PEAK_CORE:.0f}% of "
          f"a core's peak (wall: {100 * flops * n / wall / 1e9 / (PEAK_CORE * threads):.0f}% of {threads} "
          f"core(s)), load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
