"""GPU benchmarks of rsm's CUDA backend against PyTorch eager and torch.compile, on one device:

  (a) pretraining step   (flow matching MSE, backward, clip_grad_norm_, AdamW)
  (b) 20-step SDE sampling with transition log-probs (Flow-GRPO's SDE, a = 0.7)
  (c) one Flow-GRPO fine-tuning iteration (64 prompts x 16 samples, 10-step grid: rollout with
      log-probs, group advantages, PPO ratio clip on 9 transitions, backward, AdamW)

for the CPU benchmarks' MLP (2-d data, 256 x 3, temb 64) at their batches, and a larger MLP
(1024 x 6, batch 16384) that loads the GPU. Reports the median time per call, the speed-up of rsm
over each torch variant, the achieved TFLOP/s of the matrix products against the device's peak
(float32 without TF32: the FP32 CUDA-core peak) and the peak device memory of each.

Not covered yet (the device code lacks them): the DiT backbone, branching rollouts (so no
rsm-zo iteration), CUDA graphs.

Usage (on the GPU machine; benchmarks/gpu_session.sh runs it):
    python benchmarks/bench_cuda.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
import rsm.cuda as rc  # noqa: E402
from rsm.objective import row_coefficients  # noqa: E402
from torch_twin import randomize_output_layer, twin_of  # noqa: E402

# FP32 (non-tensor) dense peaks, TFLOP/s, from NVIDIA's datasheets (SXM parts)
PEAK_FP32 = {"H100": 67.0, "H200": 67.0, "A100": 19.5}
TEMB = 64


def device_peak() -> tuple[str, float]:
    name = torch.cuda.get_device_name(0)
    for key, peak in PEAK_FP32.items():
        if key in name:
            return name, peak
    return name, float("nan")


def sync() -> None:
    rc.synchronize()
    torch.cuda.synchronize()


def measure(fn, *, warmup: int = 3, repeats: int = 7, min_sample_s: float = 0.2) -> float:
    """Median seconds per call; each sample runs fn `inner` times between device syncs."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    inner = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-6)))
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def forward_flops(batch: int, dim: int, hidden: int, depth: int) -> float:
    return 2.0 * batch * ((dim + TEMB) * hidden + depth * 2 * hidden * hidden + hidden * dim)


def ring_data(n: int = 20000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, n)
    centers = 2.0 * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return (centers + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def peak_memory(fn) -> tuple[float, float]:
    """(rsm peak reserved MiB, torch peak allocated MiB) around one call of fn."""
    sync()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return (rc.memory_stats()["peak_reserved_bytes"] / 2**20,
            torch.cuda.max_memory_allocated() / 2**20)


# ---- (a) pretraining step -------------------------------------------------------------------


def bench_pretrain(hidden: int, depth: int, batch: int, compile_ok: bool) -> list[dict]:
    data = ring_data()
    model = rsm.MLP(2, hidden, depth, seed=0, temb_dim=TEMB)
    g = rc.DeviceMLP(model)
    opt = rc.AdamW(g, lr=1e-3, max_grad_norm=1.0)
    path = rsm.FlowPath()
    state = {"k": 0}

    data_dev = rc.to_device(data)

    def rsm_steps():
        rc.pretrain(g, data_dev, path, steps=10, batch_size=batch, lr=1e-3, optimizer=opt,
                    first_step=state["k"])
        state["k"] += 10

    twin = twin_of(model).cuda()
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    dev_data = torch.from_numpy(data).cuda()

    def torch_step(net):
        def step():
            for _ in range(10):
                idx = torch.randint(0, dev_data.shape[0], (batch,), device="cuda")
                x0 = dev_data[idx]
                t = torch.rand(batch, device="cuda")
                eps = torch.randn_like(x0)
                xt = (1 - t)[:, None] * x0 + t[:, None] * eps
                loss = ((net(xt, t) - (eps - x0)) ** 2).mean()
                topt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
                topt.step()
                loss.item()  # rsm reports the loss and the norm every step too
        return step

    flops = 3 * forward_flops(batch, 2, hidden, depth)
    return _rows("pretrain step", f"MLP {hidden}x{depth}, batch {batch}", flops, 10, rsm_steps,
                 torch_step(twin), torch_step(torch.compile(twin)) if compile_ok else None)


# ---- (b) 20-step SDE sampling with log-probs --------------------------------------------------


def bench_sampling(hidden: int, depth: int, n: int, compile_ok: bool) -> list[dict]:
    model = rsm.MLP(2, hidden, depth, seed=0, temb_dim=TEMB)
    randomize_output_layer(model)
    g = rc.DeviceMLP(model)
    path = rsm.FlowPath()
    ts = rsm.sampling.time_grid(20, path)
    coefs = rsm.sampling.step_coefficients(path, ts, "sde")

    def rsm_sample():
        rc.sample(g, n, path, sampler="sde", ts=ts, seed=0, return_trajectory=True)

    twin = twin_of(model).cuda()

    def torch_sample(net):
        @torch.no_grad()
        def run():
            x = torch.randn(n, 2, device="cuda")
            logps = []
            for c in coefs:
                u = net(x, torch.full((n,), c["t"], device="cuda"))
                mean = c["A"] * x + c["K"] * u
                z = torch.randn_like(x)
                x = mean + c["std"] * z
                logps.append(-0.5 * (z**2).sum(1) - 2 * (math.log(c["std"]) + 0.5 * math.log(2 * math.pi)))
            torch.stack(logps)
        return run

    flops = 20 * forward_flops(n, 2, hidden, depth)
    return _rows("20-step SDE + log-probs", f"MLP {hidden}x{depth}, {n} samples", flops, 1,
                 rsm_sample, torch_sample(twin),
                 torch_sample(torch.compile(twin)) if compile_ok else None)


# ---- (c) one Flow-GRPO iteration ---------------------------------------------------------------


PROMPTS, GROUP, CLIP = 64, 16, 1e-4


def bench_flow_grpo(hidden: int, depth: int, compile_ok: bool) -> list[dict]:
    n = PROMPTS * GROUP
    model = rsm.MLP(2, hidden, depth, seed=0, temb_dim=TEMB)
    randomize_output_layer(model)
    g = rc.DeviceMLP(model)
    opt = rc.AdamW(g, lr=1e-4, max_grad_norm=1.0)
    path = rsm.FlowPath()
    ts = rsm.sampling.time_grid(10, path, "sd3")
    coefs = rsm.sampling.step_coefficients(path, ts, "sde")
    keys = np.arange(n) // GROUP
    trained = len(coefs) - 1  # the last transition is sampled, not trained (Flow-GRPO)
    tcols = [rc.to_device(np.full(n, c["t"], np.float32)) for c in coefs]
    center = np.array([2.0, 0.0])

    def rsm_iteration():
        tr = rc.sample(g, n, path, sampler="sde", ts=ts, seed=0, return_trajectory=True)
        x = np.empty((n, 2), np.float32)  # only the final states come back to the host
        rc._mod().copy(x, (tr["xs"], len(coefs) * n * 2))
        reward = -0.5 * ((x - center) ** 2).sum(1)
        adv, _ = rsm.objective.group_advantages(reward, keys)
        opt.zero_grad()
        nd = n * 2
        for i in range(trained):
            c = coefs[i]
            coef = row_coefficients(n, adv=adv, w=abs(c["K"]) / c["std"], clip_eps=CLIP)
            u = g.forward((tr["xs"], i * nd), tcols[i], rows=n)
            r = rc.objective("ppo", u, coef, u_old=(tr["outputs"], i * nd),
                             noise=(tr["noises"], i * nd), mean_over_dims=True,
                             normalizer=n * trained)
            g.backward(r["cotangent"], opt.grads)
        opt.step()

    twin = twin_of(model).cuda()
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-4)

    def torch_iteration(net):
        def run():
            with torch.no_grad():
                x = torch.randn(n, 2, device="cuda")
                xs, zs, logps = [x], [], []
                for c in coefs:
                    u = net(x, torch.full((n,), c["t"], device="cuda"))
                    mean = c["A"] * x + c["K"] * u
                    z = torch.randn_like(x)
                    x = mean + c["std"] * z
                    logps.append((-(z**2) / 2).mean(1) - math.log(c["std"]) - 0.5 * math.log(2 * math.pi))
                    xs.append(x)
                r = -0.5 * ((x - torch.tensor([2.0, 0.0], device="cuda")) ** 2).sum(1)
                gr = r.view(PROMPTS, GROUP)
                adv = ((gr - gr.mean(1, keepdim=True)) / (gr.std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1).clamp(-5, 5)
            topt.zero_grad(set_to_none=True)
            for i in range(trained):
                c = coefs[i]
                mean = c["A"] * xs[i] + c["K"] * net(xs[i], torch.full((n,), c["t"], device="cuda"))
                logp = (-((xs[i + 1] - mean) ** 2) / (2 * c["std"] ** 2)).mean(1) - math.log(c["std"]) - 0.5 * math.log(2 * math.pi)
                ratio = torch.exp(logp - logps[i])
                loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP))
                (loss.sum() / (n * trained)).backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
            topt.step()
        return run

    flops = (len(coefs) + 3 * trained) * forward_flops(n, 2, hidden, depth)
    return _rows("Flow-GRPO iteration", f"MLP {hidden}x{depth}, {PROMPTS}x{GROUP}", flops, 1,
                 rsm_iteration, torch_iteration(twin),
                 torch_iteration(torch.compile(twin)) if compile_ok else None)


# ---- table -------------------------------------------------------------------------------------


def _rows(case, config, flops, calls_per_fn, rsm_fn, eager_fn, compiled_fn) -> list[dict]:
    name, peak = device_peak()
    t_rsm = measure(rsm_fn) / calls_per_fn
    t_eager = measure(eager_fn) / calls_per_fn
    t_comp = measure(compiled_fn) / calls_per_fn if compiled_fn else float("nan")
    mem_rsm, _ = peak_memory(rsm_fn)
    _, mem_torch = peak_memory(eager_fn)
    row = {"case": case, "config": config, "device": name,
           "rsm_ms": 1e3 * t_rsm, "eager_ms": 1e3 * t_eager, "compile_ms": 1e3 * t_comp,
           "vs_eager": t_eager / t_rsm, "vs_compile": t_comp / t_rsm,
           "rsm_tflops": flops / t_rsm / 1e12, "peak_fp32_tflops": peak,
           "rsm_peak_reserved_mib": mem_rsm, "torch_peak_allocated_mib": mem_torch}
    print(f"{case:26s} {config:32s} rsm {row['rsm_ms']:9.3f} ms  eager {row['eager_ms']:9.3f} ms "
          f"compile {row['compile_ms']:9.3f} ms  x{row['vs_eager']:.2f} / x{row['vs_compile']:.2f}  "
          f"{row['rsm_tflops']:.2f} TFLOP/s of {peak}  mem {mem_rsm:.0f} / {mem_torch:.0f} MiB",
          flush=True)
    return [row]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the small MLP only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not rsm.cuda_available():
        print(f"no CUDA device: {rsm.build_info()['cuda_reason']}")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    compile_ok = not args.no_compile
    rows = []
    rows += bench_pretrain(256, 3, 256, compile_ok)
    rows += bench_sampling(256, 3, 4096, compile_ok)
    rows += bench_flow_grpo(256, 3, compile_ok)
    if not args.quick:
        rows += bench_pretrain(1024, 6, 16384, compile_ok)
        rows += bench_sampling(1024, 6, 16384, compile_ok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
