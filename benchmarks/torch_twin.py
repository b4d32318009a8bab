"""A PyTorch twin of rsm.MLP: the same function, with the weights copied from model.named_params().

    input = [x, temb(t), cond],  temb = [sin(1000 t f_k), cos(1000 t f_k)],  f_k = 10000^(-k/half)
    h0 = Linear_in(input);  h = h + Linear2(SiLU(Linear1(h))) (depth blocks);  out = Linear_out(SiLU(h))

`python benchmarks/torch_twin.py` checks that rsm and the twin agree (outputs, input VJP and
parameter VJP, float32 ~1e-5, float64 ~1e-12) on a few configurations and exits non-zero if not.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(hidden, hidden)
        self.linear2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.linear2(nn.functional.silu(self.linear1(h)))


class TorchMLP(nn.Module):
    """Parameter names match rsm.MLP.named_params() (torch.nn.Linear layout)."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, cond_dim: int = 0,
                 temb_dim: int = 64) -> None:
        super().__init__()
        self.dim, self.cond_dim, self.temb_dim = dim, cond_dim, temb_dim
        half = temb_dim // 2
        # f_k = 10000^(-k / half), computed in float64 as rsm does, then times 1000
        freqs = [1000.0 * math.exp(-math.log(10000.0) * k / half) for k in range(half)]
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float64))
        self.input = nn.Linear(dim + temb_dim + cond_dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.output = nn.Linear(hidden, dim)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        # angles in float64 (as rsm), rounded to the working dtype after sin/cos
        angle = t.to(torch.float64)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(self.input.weight.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        parts = [x, self.time_embedding(t)]
        if self.cond_dim:
            parts.append(cond)
        h = self.input(torch.cat(parts, dim=1))
        for block in self.blocks:
            h = block(h)
        return self.output(nn.functional.silu(h))


def twin_of(model: rsm.MLP) -> TorchMLP:
    """A TorchMLP with a copy of `model`'s parameters (same dtype)."""
    c = model.config
    twin = TorchMLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], c["temb_dim"])
    twin = twin.to(torch.float64 if c["dtype"] == "float64" else torch.float32)
    twin.freqs = twin.freqs.to(torch.float64)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.named_params().items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"freqs"}, (missing, unexpected)
    return twin


def flat_grads(twin: TorchMLP, model: rsm.MLP) -> np.ndarray:
    """The twin's .grad in rsm's flat parameter order."""
    flat = np.zeros(model.num_params, dtype=np.float64)
    base = np.from_dlpack(model.params)
    params = dict(twin.named_parameters())
    for name, view in model.named_params().items():
        off = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // view.itemsize
        flat[off:off + view.size] = params[name].grad.detach().double().numpy().ravel()
    return flat


def randomize_output_layer(model: rsm.MLP, seed: int = 1) -> None:
    """rsm zero-initialises the output layer; give it values so the outputs are not all b_out."""
    rng = np.random.default_rng(seed)
    views = model.named_params()
    h = views["output.weight"].shape[1]
    views["output.weight"][...] = rng.uniform(-1, 1, views["output.weight"].shape) / math.sqrt(h)
    views["output.bias"][...] = rng.uniform(-0.1, 0.1, views["output.bias"].shape)


def check(dim=2, hidden=256, depth=3, cond_dim=0, batch=256, dtype="float32", seed=0, verbose=True):
    """Compare rsm and the twin: output, dx and dparams. Returns the max relative errors."""
    model = rsm.MLP(dim, hidden, depth, cond_dim, seed=seed, dtype=dtype)
    randomize_output_layer(model)
    twin = twin_of(model)
    np_dtype = np.float64 if dtype == "float64" else np.float32
    rng = np.random.default_rng(seed + 7)
    x = rng.standard_normal((batch, dim)).astype(np_dtype)
    t = rng.uniform(0, 1, batch).astype(np_dtype)
    cond = rng.standard_normal((batch, cond_dim)).astype(np_dtype) if cond_dim else None
    cot = rng.standard_normal((batch, dim)).astype(np_dtype)

    out, dx, dp = model.forward_and_vjp(x, t, cot, cond)
    out, dx, dp = (np.from_dlpack(a) for a in (out, dx, dp))
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = twin(xt, torch.from_numpy(t), torch.from_numpy(cond) if cond is not None else None)
    ref.backward(torch.from_numpy(cot))
    ref_dp = flat_grads(twin, model)

    def rel(a, b):
        b = np.asarray(b, dtype=np.float64)
        return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))

    errs = {"out": rel(out, ref.detach().numpy()), "dx": rel(dx, xt.grad.numpy()),
            "dparams": rel(dp, ref_dp)}
    if verbose:
        print(f"  dim={dim} hidden={hidden} depth={depth} cond={cond_dim} B={batch} {dtype}: "
              + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    return errs


def main() -> int:
    torch.set_num_threads(2)
    rsm.set_num_threads(2)
    print("rsm.MLP vs the PyTorch twin (max |diff| / max |ref|):")
    ok = True
    cases = [dict(), dict(batch=4096), dict(dim=3, hidden=64, depth=2, cond_dim=5, batch=100),
             dict(dtype="float64"), dict(dtype="float64", dim=3, hidden=48, depth=1, cond_dim=2, batch=33)]
    for case in cases:
        errs = check(**case)
        tol = 1e-12 if case.get("dtype") == "float64" else 2e-5
        ok &= all(v <= tol for v in errs.values())
    print("twin check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
