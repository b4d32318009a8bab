"""rsm.DiT vs its PyTorch twin (benchmarks/dit_twin.py: torch eager, same weights, same threads,
same process) on two small image configurations:

  digits   8x8x1 images, patch 2 (16 tokens), width 128, depth 4, heads 4, 10 classes, batch 128
  shapes   16x16x3 images, patch 2 (64 tokens), width 128, depth 4, heads 4, 10 classes, batch 32

  pretrain step   rsm: _C.pretrain_steps (flow matching, AdamW, k steps per call, time / k);
                  torch: batch indices, t and noise, x_t, forward, MSE, backward, AdamW step
  ODE sampling    rsm.sample(..., "ode", steps=20) vs 20 Euler steps of the twin under no_grad
  forward         model.forward vs twin under no_grad;  forward+vjp: output, dx and dparams

FLOPs are the matmul FLOPs (Linear layers and the two attention products): 2 m n k per product,
3x the forward for forward+backward. Also prints the saved-activation memory of a training
forward with and without gradient checkpointing (model.activation_bytes).
Run: python benchmarks/bench_dit.py [--quick] [--json PATH]
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import finish, measure_pair, row, setup_threads  # noqa: E402
from dit_twin import TorchDiT  # noqa: E402
from profile_step import dit_flops, dit_model as model_of  # noqa: E402  (random adaLN weights)

CONFIGS = {
    "digits": dict(image_size=8, channels=1, patch=2, width=128, depth=4, heads=4, num_classes=10, batch=128),
    "shapes": dict(image_size=16, channels=3, patch=2, width=128, depth=4, heads=4, num_classes=10, batch=32),
}
STEPS = 20


def forward_flops(cfg: dict, batch: int) -> float:
    return dit_flops({**cfg, "batch": batch})


def data_of(cfg: dict, n: int = 2048, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, cfg["channels"], cfg["image_size"], cfg["image_size"])
    return rng.uniform(-1, 1, shape).astype(np.float32), rng.integers(0, cfg["num_classes"], n)


def bench_pretrain(name: str, cfg: dict, quick: bool) -> dict:
    batch = cfg["batch"]
    path = rsm.FlowPath()
    model = model_of(cfg)
    twin = TorchDiT.from_rsm(model)
    images, labels = data_of(cfg)
    data = images.reshape(len(images), -1)
    cond = labels.astype(np.float32).reshape(-1, 1)
    opt = rsm.AdamW(model, lr=1e-4, max_grad_norm=0.0)
    k_per_call = 2
    state = {"k": 0}

    def rsm_steps():
        rsm._C.pretrain_steps(model._core, opt._core, path._core, data, cond, batch, 0.0, 1.0, 1e-4,
                              0, 0, state["k"], k_per_call)
        state["k"] += k_per_call

    data_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def torch_step():
        idx = torch.randint(0, data_t.shape[0], (batch,), generator=gen)
        x0, y = data_t[idx], labels_t[idx]
        t = torch.rand(batch, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
        loss = F_mse(twin(xt, t, y), eps - x0)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    rsm_s, torch_s = measure_pair(rsm_steps, torch_step, repeats=3 if quick else 5)
    full = model.activation_bytes(batch)
    model.checkpoint = True
    ckpt = model.activation_bytes(batch)
    return row("pretrain step", f"{name} B={batch}", rsm_s / k_per_call, torch_s,
               3 * forward_flops(cfg, batch), activation_mib=full / 2**20,
               activation_mib_checkpoint=ckpt / 2**20)


def F_mse(a, b):
    return torch.nn.functional.mse_loss(a, b)


def torch_ode(twin, x, y, steps=STEPS):
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype)
            x = x + float(ts[i + 1] - ts[i]) * twin(x, t, y)
    return x


def bench_sampling(name: str, cfg: dict, quick: bool) -> dict:
    batch = cfg["batch"]
    path = rsm.FlowPath()
    model = model_of(cfg)
    twin = TorchDiT.from_rsm(model)
    shape = (batch,) + model.image_shape
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, cfg["num_classes"], batch)
    a = np.from_dlpack(rsm.sample(model, batch, path, "ode", steps=STEPS, x_init=x0.reshape(batch, -1), cond=y))
    b = torch_ode(twin, torch.from_numpy(x0), torch.from_numpy(y)).numpy().reshape(batch, -1)
    err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    assert err < 1e-3, f"ODE samplers disagree: {err}"
    seed = {"s": 0}
    y_t = torch.from_numpy(y)

    def rsm_run():
        rsm.sample(model, batch, path, "ode", steps=STEPS, seed=seed["s"], cond=y)
        seed["s"] += 1

    gen = torch.Generator().manual_seed(0)
    rsm_s, torch_s = measure_pair(rsm_run, lambda: torch_ode(twin, torch.randn(shape, generator=gen), y_t),
                                  repeats=3 if quick else 5)
    return row("ODE sampling (20 steps)", f"{name} B={batch}", rsm_s, torch_s,
               STEPS * forward_flops(cfg, batch), check=err)


def bench_forward(name: str, cfg: dict, quick: bool) -> list[dict]:
    batch = cfg["batch"]
    model = model_of(cfg)
    twin = TorchDiT.from_rsm(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch,) + model.image_shape).astype(np.float32)
    t = rng.uniform(0, 1, batch).astype(np.float32)
    y = rng.integers(0, cfg["num_classes"], batch)
    cot = rng.standard_normal(x.shape).astype(np.float32)
    x2, cot2 = x.reshape(batch, -1), cot.reshape(batch, -1)
    xt_, tt, yt, cott = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y), torch.from_numpy(cot)

    def torch_fwd():
        with torch.no_grad():
            twin(xt_, tt, yt)

    def torch_vjp():
        xg = xt_.clone().requires_grad_(True)
        twin.zero_grad(set_to_none=True)
        twin(xg, tt, yt).backward(cott)

    reps = 3 if quick else 5
    fwd = row("forward", f"{name} B={batch}",
              *measure_pair(lambda: model.forward(x2, t, y), torch_fwd, repeats=reps), forward_flops(cfg, batch))
    vjp = row("forward+vjp", f"{name} B={batch}",
              *measure_pair(lambda: model.forward_and_vjp(x2, t, cot2, y), torch_vjp, repeats=reps),
              3 * forward_flops(cfg, batch))
    return [fwd, vjp]


def run(quick: bool = False) -> list[dict]:
    setup_threads()
    rows = []
    for name, cfg in CONFIGS.items():
        for bench in (bench_pretrain, bench_sampling, bench_forward):
            got = bench(name, cfg, quick)
            for r in got if isinstance(got, list) else [got]:
                rows.append(r)
                # progress on stderr: a shared machine can make a full run long
                print(f"{r['group']} {r['case']}: rsm {r['rsm_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms",
                      file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    from _common import THREADS, peak

    rows = run(quick="--quick" in sys.argv)
    finish(rows, f"DiT (width 128, depth 4, heads 4), {THREADS} threads, % of {peak():.0f} GFLOP/s")
    for r in rows:
        if "activation_mib" in r:
            print(f"saved activations, {r['case']}: {r['activation_mib']:.1f} MiB, "
                  f"{r['activation_mib_checkpoint']:.1f} MiB with gradient checkpointing")
