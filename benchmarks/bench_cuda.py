"""GPU benchmarks of rsm's CUDA backend against PyTorch eager and torch.compile, on one device:

  (a) pretraining step   (flow matching MSE, backward, clip_grad_norm_, AdamW)
  (b) 20-step SDE sampling with transition log-probs (Flow-GRPO's SDE, a = 0.7)
  (c) one Flow-GRPO fine-tuning iteration (64 prompts x 16 samples, 10-step grid: rollout with
      log-probs, group advantages, PPO ratio clip on 9 transitions, backward, AdamW)
  (d) the DiT (32x32x4 latents, patch 2, width 512, depth 12, 8 heads): a pretraining step and
      20-step SDE sampling with log-probs
  (e) the backend table's own products and attention at the DiT's shapes (TFLOP/s vs peak)

for the CPU benchmarks' MLP (2-d data, 256 x 3, temb 64) at their batches, a larger MLP (1024 x 6,
batch 16384) that loads the GPU, and the DiT. Reports the median time per call, the speed-up of
rsm over each torch variant, the achieved TFLOP/s against the device's peak (float32 without
TF32: the FP32 CUDA-core peak) and the peak device memory of each.

rsm's rows run the C loops on the CUDA backend (models built with device="cuda", through
rsm.cuda.pretrain / sample; rsm.Trainer(..., device="cuda")). Where a loop is not ported to the backend table yet, its rsm column records the
NotImplementedError's message instead of a time (the torch columns are still measured), so the
table says what is missing rather than timing a stand-in.

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
from dit_twin import TorchDiT  # noqa: E402
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
    g = model.to("cuda")  # the same core, parameters and activations on the CUDA backend table
    opt = rsm.AdamW(g, lr=1e-3, max_grad_norm=1.0)  # moments on the device
    path = rsm.FlowPath()

    data_dev = rc.to_device(data)

    def rsm_steps():  # 10 steps of the C pretraining loop (constant lr: each call alike)
        rc.pretrain(g, data_dev, path, steps=10, batch_size=batch, lr=1e-3, optimizer=opt,
                    progress=False, log_every=10)

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
    g = model.to("cuda")
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
    path = rsm.FlowPath()
    ts = rsm.sampling.time_grid(10, path, "sd3")
    coefs = rsm.sampling.step_coefficients(path, ts, "sde")
    trained = len(coefs) - 1  # the last transition is sampled, not trained (Flow-GRPO)
    state = {}

    def rsm_iteration():
        if "trainer" not in state:  # the C rollout and update loops on the CUDA backend
            reward = lambda x0, cond=None: -0.5 * ((rc.to_host(x0) - [2.0, 0.0]) ** 2).sum(1)  # noqa: E731
            state["trainer"] = rsm.Trainer(model, model.copy(), reward, "flow-grpo",
                                           batch_size=PROMPTS, group_size=GROUP, kl_every=0,
                                           sampler_steps=10, device="cuda")
        state["trainer"].step()

    twin = twin_of(model).cuda()
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-4)

    def torch_iteration(net):
        def run():
            with torch.no_grad():
                x = torch.randn(n, 2, device="cuda")
                xs, logps = [x], []
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
    rsm_status = "ok"
    try:
        t_rsm = measure(rsm_fn) / calls_per_fn
        mem_rsm, _ = peak_memory(rsm_fn)
    except NotImplementedError as exc:  # the loop is not on the backend table yet: say so
        rsm_status = f"not ported: {exc}"
        t_rsm, mem_rsm = float("nan"), float("nan")
    t_eager = measure(eager_fn) / calls_per_fn
    t_comp = measure(compiled_fn) / calls_per_fn if compiled_fn else float("nan")
    _, mem_torch = peak_memory(eager_fn)
    row = {"case": case, "config": config, "device": name, "rsm_status": rsm_status,
           "rsm_ms": 1e3 * t_rsm, "eager_ms": 1e3 * t_eager, "compile_ms": 1e3 * t_comp,
           "vs_eager": t_eager / t_rsm, "vs_compile": t_comp / t_rsm,
           "rsm_tflops": flops / t_rsm / 1e12, "peak_fp32_tflops": peak,
           "rsm_peak_reserved_mib": mem_rsm, "torch_peak_allocated_mib": mem_torch}
    print(f"{case:26s} {config:32s} rsm {row['rsm_ms']:9.3f} ms  eager {row['eager_ms']:9.3f} ms "
          f"compile {row['compile_ms']:9.3f} ms  x{row['vs_eager']:.2f} / x{row['vs_compile']:.2f}  "
          f"{row['rsm_tflops']:.2f} TFLOP/s of {peak}  mem {mem_rsm:.0f} / {mem_torch:.0f} MiB",
          flush=True)
    if rsm_status != "ok":
        print(f"    rsm: {rsm_status}", flush=True)
    return [row]


# ---- (d) the DiT ---------------------------------------------------------------------------------


DIT = dict(image_size=32, channels=4, patch=2, width=512, depth=12, heads=8, num_classes=10)


def dit_flops(batch: int) -> float:
    """Forward multiply-adds x 2 of the DiT's products (tokens T, width W): per block 6W^2 adaLN
    (per image), 3W^2 + W^2 + 8W^2 (qkv, proj, MLP) per token, 2 T^2 W attention per image."""
    c = DIT
    T, W, pd = (c["image_size"] // c["patch"]) ** 2, c["width"], c["channels"] * c["patch"] ** 2
    per_block = batch * (T * 12 * W * W + 2 * T * T * W + 6 * W * W)
    return 2.0 * (c["depth"] * per_block + batch * T * 2 * pd * W)


def bench_dit(batch: int, compile_ok: bool) -> list[dict]:
    model = rsm.DiT(**DIT, seed=0, device="cuda")  # the C core on the CUDA backend table
    rng = np.random.default_rng(1)  # adaLN-Zero starts at 0: random weights, as the twin's
    model.load_params(rng.normal(size=model.num_params).astype(np.float32) * 0.02)
    twin = TorchDiT(**DIT).cuda()
    for p in twin.parameters():  # adaLN-Zero starts at 0: random weights so the work is real
        torch.nn.init.normal_(p, std=0.02)
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-4)
    shape = (batch, DIT["channels"], DIT["image_size"], DIT["image_size"])
    y = torch.randint(0, DIT["num_classes"], (batch,), device="cuda")
    path = rsm.FlowPath()
    data = np.random.default_rng(0).normal(size=(4 * batch,) + shape[1:]).astype(np.float32)
    data_dev = rc.to_device(data.reshape(4 * batch, -1))  # [N, dim] on the device, once

    def rsm_pretrain():
        rc.pretrain(model, data_dev, path, steps=1, batch_size=batch, progress=False)

    def torch_pretrain(net):
        def step():
            x0 = torch.randn(shape, device="cuda")
            t = torch.rand(batch, device="cuda")
            eps = torch.randn_like(x0)
            xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
            loss = ((net(xt, t, y) - (eps - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
            opt.step()
            loss.item()
        return step

    ts = rsm.sampling.time_grid(20, path)
    coefs = rsm.sampling.step_coefficients(path, ts, "sde")

    def rsm_sample():
        rc.sample(model, batch, path, sampler="sde", ts=ts, seed=0, return_trajectory=True)

    def torch_sample(net):
        @torch.no_grad()
        def run():
            x = torch.randn(shape, device="cuda")
            logps = []
            for c in coefs:
                u = net(x, torch.full((batch,), c["t"], device="cuda"), y)
                mean = c["A"] * x + c["K"] * u
                z = torch.randn_like(x)
                x = mean + c["std"] * z
                logps.append(-0.5 * (z ** 2).flatten(1).sum(1))
            torch.stack(logps)
        return run

    compiled = torch.compile(twin) if compile_ok else None
    cfg = f"DiT 32x32x4 p2 w512 d12, batch {batch}"
    rows = _rows("DiT pretrain step", cfg, 3 * dit_flops(batch), 1, rsm_pretrain,
                 torch_pretrain(twin), torch_pretrain(compiled) if compiled else None)
    rows += _rows("DiT 20-step SDE + log-probs", cfg, 20 * dit_flops(batch), 1, rsm_sample,
                  torch_sample(twin), torch_sample(compiled) if compiled else None)
    return rows


# ---- (e) the backend table's products at the DiT's shapes -------------------------------------------


def bench_table_ops(batch: int) -> list[dict]:
    """The CUDA table's gemm (cuBLAS, IEEE float32) and attention_forward (per-head batched
    products + warp softmax) through the test hook, against torch.matmul and torch's math
    attention on the same shapes. backend_call waits for the device: both sides are timed with a
    sync per call."""
    name, peak = device_peak()
    cuda = rc._mod()
    T, W, H = (DIT["image_size"] // DIT["patch"]) ** 2, DIT["width"], DIT["heads"]
    rows = []
    for label, (m, n, k) in {"qkv": (batch * T, 3 * W, W), "mlp fc1": (batch * T, 4 * W, W),
                             "mlp fc2": (batch * T, W, 4 * W)}.items():
        a = rc.to_device(np.random.default_rng(1).normal(size=(m, k)).astype(np.float32))
        b = rc.to_device(np.random.default_rng(2).normal(size=(n, k)).astype(np.float32))
        c = rc.zeros((m, n), "float32")
        ta, tb = torch.from_dlpack(a), torch.from_dlpack(b)

        def ours():
            cuda.backend_call(0, 0, "gemm", (0, 1, m, n, k, 1.0, a, k, b, k, 0.0, c, n))

        def theirs():
            torch.matmul(ta, tb.T)
            torch.cuda.synchronize()

        t1, t2 = measure(ours), measure(theirs)
        flops = 2.0 * m * n * k
        rows.append({"case": f"table gemm ({label})", "config": f"{m}x{n}x{k} float32",
                     "device": name, "rsm_ms": 1e3 * t1, "torch_ms": 1e3 * t2,
                     "vs_torch": t2 / t1, "rsm_tflops": flops / t1 / 1e12, "peak_fp32_tflops": peak})
        print(f"table gemm {label:8s} {m}x{n}x{k}: rsm {1e3 * t1:.3f} ms ({flops / t1 / 1e12:.1f} "
              f"TFLOP/s of {peak}), torch {1e3 * t2:.3f} ms", flush=True)
    qkv = rc.to_device(np.random.default_rng(3).normal(size=(batch * T, 3 * W)).astype(np.float32))
    o, probs = rc.zeros((batch * T, W), "float32"), rc.zeros((batch, H, T, T), "float32")
    tq = torch.from_dlpack(qkv).view(batch, T, 3, H, W // H).permute(2, 0, 3, 1, 4)

    def attn_ours():
        cuda.backend_call(0, 0, "attention_forward", (o, probs, qkv, batch, T, W, H))

    def attn_theirs():
        torch.nn.functional.scaled_dot_product_attention(tq[0], tq[1], tq[2])
        torch.cuda.synchronize()

    t1, t2 = measure(attn_ours), measure(attn_theirs)
    flops = 4.0 * batch * H * T * T * (W // H)
    rows.append({"case": "table attention_forward", "config": f"n {batch}, T {T}, W {W}, {H} heads",
                 "device": name, "rsm_ms": 1e3 * t1, "torch_ms": 1e3 * t2, "vs_torch": t2 / t1,
                 "rsm_tflops": flops / t1 / 1e12, "peak_fp32_tflops": peak})
    print(f"table attention n={batch} T={T}: rsm {1e3 * t1:.3f} ms, torch sdpa {1e3 * t2:.3f} ms",
          flush=True)
    return rows


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
    rows += bench_table_ops(32)
    if not args.quick:
        rows += bench_pretrain(1024, 6, 16384, compile_ok)
        rows += bench_sampling(1024, 6, 16384, compile_ok)
        rows += bench_dit(64, compile_ok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
