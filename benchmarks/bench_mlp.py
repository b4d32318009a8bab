"""rsm.MLP vs its PyTorch twin (torch eager, same threads, same process) on the 2D MLP
(dim 2, width 256, depth 3, temb 64) at batch 256 and 4096:

  pretrain step   rsm: _C.pretrain_steps (k steps per call, time / k); torch: batch indices, t and
                  noise, x_t, forward, MSE, backward, AdamW step (flow matching, no clipping)
  ODE sampling    rsm.sample(..., "ode", steps=20) vs 20 Euler steps of the twin under no_grad
  forward         model.forward(x, t) vs twin(x, t) under no_grad
  forward+vjp     model.forward_and_vjp (output, dx, dparams) vs twin forward + backward

FLOPs are the matmul FLOPs: 2 B in out per Linear forward, 3x that for forward+backward.
Run: python benchmarks/bench_mlp.py [--quick] [--json PATH]
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import finish, measure_pair, row, setup_threads  # noqa: E402
from torch_twin import randomize_output_layer, twin_of  # noqa: E402

DIM, HIDDEN, DEPTH, TEMB = 2, 256, 3, 64
STEPS = 20


def forward_flops(batch: int) -> float:
    in_dim = DIM + TEMB
    return 2.0 * batch * (in_dim * HIDDEN + DEPTH * 2 * HIDDEN * HIDDEN + HIDDEN * DIM)


def ring_data(n: int = 20000, seed: int = 0) -> np.ndarray:
    """8 Gaussians on a circle of radius 2 (std 0.1)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 8, n)
    centers = 2.0 * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return (centers + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)


def bench_pretrain(batch: int, data: np.ndarray, quick: bool):
    path = rsm.FlowPath()
    model = rsm.MLP(DIM, HIDDEN, DEPTH, seed=0)
    twin = twin_of(model)
    opt = rsm.AdamW(model, lr=1e-3, max_grad_norm=0.0)
    k_per_call = 10 if batch <= 1024 else 2
    state = {"k": 0}

    def rsm_steps():
        rsm._C.pretrain_steps(model._core, opt._core, path._core, data, None, batch, 0.0, 1.0, 1e-3,
                              0, 0, state["k"], k_per_call)
        state["k"] += k_per_call


    data_t = torch.from_numpy(data)
    topt = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)

    def torch_step():
        idx = torch.randint(0, data_t.shape[0], (batch,), generator=gen)
        x0 = data_t[idx]
        t = torch.rand(batch, generator=gen)
        eps = torch.randn(batch, DIM, generator=gen)
        xt = (1 - t)[:, None] * x0 + t[:, None] * eps
        target = eps - x0
        loss = torch.nn.functional.mse_loss(twin(xt, t), target)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    rsm_s, torch_s = measure_pair(rsm_steps, torch_step, repeats=3 if quick else 7)
    return row("pretrain step", f"B={batch}", rsm_s / k_per_call, torch_s, 3 * forward_flops(batch))


def torch_ode(twin, x, steps=STEPS):
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((x.shape[0],), float(ts[i]), dtype=x.dtype)
            x = x + float(ts[i + 1] - ts[i]) * twin(x, t)
    return x


def bench_sampling(batch: int, quick: bool):
    path = rsm.FlowPath()
    model = rsm.MLP(DIM, HIDDEN, DEPTH, seed=0)
    randomize_output_layer(model)
    twin = twin_of(model)
    # same start: the samplers must agree before they are timed
    x0 = np.random.default_rng(1).standard_normal((batch, DIM)).astype(np.float32)
    a = np.from_dlpack(rsm.sample(model, batch, path, "ode", steps=STEPS, x_init=x0))
    b = torch_ode(twin, torch.from_numpy(x0)).numpy()
    err = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    assert err < 1e-4, f"ODE samplers disagree: {err}"
    seed = {"s": 0}

    def rsm_run():
        rsm.sample(model, batch, path, "ode", steps=STEPS, seed=seed["s"])
        seed["s"] += 1

    gen = torch.Generator().manual_seed(0)
    rsm_s, torch_s = measure_pair(rsm_run, lambda: torch_ode(twin, torch.randn(batch, DIM, generator=gen)),
                                  repeats=3 if quick else 7)
    return row("ODE sampling (20 steps)", f"B={batch}", rsm_s, torch_s, STEPS * forward_flops(batch),
               samples_per_s_rsm=batch / rsm_s, samples_per_s_torch=batch / torch_s, check=err)


def bench_forward(batch: int, quick: bool):
    model = rsm.MLP(DIM, HIDDEN, DEPTH, seed=0)
    randomize_output_layer(model)
    twin = twin_of(model)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, DIM)).astype(np.float32)
    t = rng.uniform(0, 1, batch).astype(np.float32)
    cot = rng.standard_normal((batch, DIM)).astype(np.float32)
    xt_, tt, cott = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(cot)

    def torch_fwd():
        with torch.no_grad():
            twin(xt_, tt)

    def torch_vjp():
        xg = xt_.clone().requires_grad_(True)
        twin.zero_grad(set_to_none=True)
        twin(xg, tt).backward(cott)

    reps = 3 if quick else 7
    fwd = row("forward", f"B={batch}", *measure_pair(lambda: model.forward(x, t), torch_fwd, repeats=reps),
              forward_flops(batch))
    vjp = row("forward+vjp", f"B={batch}",
              *measure_pair(lambda: model.forward_and_vjp(x, t, cot), torch_vjp, repeats=reps),
              3 * forward_flops(batch))
    return [fwd, vjp]


def run(quick: bool = False) -> list[dict]:
    setup_threads()
    data = ring_data()
    rows = []
    for batch in (256, 4096):
        rows.append(bench_pretrain(batch, data, quick))
        rows.append(bench_sampling(batch, quick))
        rows.extend(bench_forward(batch, quick))
    order = ["pretrain step", "ODE sampling (20 steps)", "forward", "forward+vjp"]
    rows.sort(key=lambda r: (order.index(r["group"]), int(r["case"].split("=")[1])))
    return rows


if __name__ == "__main__":
    from _common import THREADS, peak

    finish(run(quick="--quick" in sys.argv),
           f"MLP (dim 2, width 256, depth 3), {THREADS} threads, % of {peak():.0f} GFLOP/s")
