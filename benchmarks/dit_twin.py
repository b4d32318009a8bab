"""A PyTorch twin of rsm.DiT: the same function, weights copied from model.named_params().

    tok = patchify(x); h = tok W_patch^T + b + pos (fixed 2D sin-cos); c = MLP_t(temb(t)) + E[y]
    block: (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c))
           h += gate1 * Attn(LN(h)(1 + scale1) + shift1); h += gate2 * MLP(LN(h)(1 + scale2) + shift2)
    final: (shift, scale) = Linear(SiLU(c)); out = unpatchify(Linear(LN(h)(1 + scale) + shift))

Used by tests/test_dit.py (torch autograd equality where torch is importable) and by
benchmarks/bench_dit.py (the eager baseline). `python benchmarks/dit_twin.py` checks agreement.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.adaLN = nn.Linear(w, 6 * w)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(w, 3 * w)
        self.attn.proj = nn.Linear(w, w)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(w, 4 * w)
        self.mlp.fc2 = nn.Linear(4 * w, w)

    def forward(self, h: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
        n, tokens, w = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(sc)[:, None, :].chunk(6, dim=2)
        m = F.layer_norm(h, (w,), eps=1e-6) * (1 + scale1) + shift1
        q, k, v = self.attn.qkv(m).reshape(n, tokens, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, tokens, w)
        h = h + gate1 * self.attn.proj(o)
        m = F.layer_norm(h, (w,), eps=1e-6) * (1 + scale2) + shift2
        return h + gate2 * self.mlp.fc2(F.gelu(self.mlp.fc1(m), approximate="tanh"))


class TorchDiT(nn.Module):
    """Parameter names match rsm.DiT.named_params() (torch.nn.Linear layout)."""

    def __init__(self, image_size: int, channels: int, patch: int, width: int, depth: int,
                 heads: int, num_classes: int, temb_dim: int = 64) -> None:
        super().__init__()
        self.s, self.c, self.p, self.w, self.temb_dim = image_size, channels, patch, width, temb_dim
        pd = channels * patch * patch
        self.patch = nn.Linear(pd, width)
        self.time = nn.Module()
        self.time.linear1 = nn.Linear(temb_dim, width)
        self.time.linear2 = nn.Linear(width, width)
        self.class_embedding = nn.Parameter(torch.zeros(num_classes + 1, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.final = nn.Module()
        self.final.adaLN = nn.Linear(width, 2 * width)
        self.final.linear = nn.Linear(width, pd)
        half = temb_dim // 2
        self.register_buffer("freqs", torch.tensor(
            [1000.0 * math.exp(-math.log(10000.0) * k / half) for k in range(half)], dtype=torch.float64))
        self.register_buffer("pos", torch.tensor(self._positions(), dtype=torch.float64))

    def _positions(self) -> np.ndarray:
        g, w = self.s // self.p, self.w
        half = w // 2
        pos = np.zeros((g * g, w))
        for gi in range(g):
            for gj in range(g):
                for d in range(w):
                    m, k = (half, d) if d < half else (w - half, d - half)
                    coord = gi if d < half else gj
                    omega = 10000.0 ** (-2.0 * (k // 2) / m)
                    pos[gi * g + gj, d] = math.sin(coord * omega) if k % 2 == 0 else math.cos(coord * omega)
        return pos

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        n, g, p, c = x.shape[0], self.s // self.p, self.p, self.c
        dtype = self.patch.weight.dtype
        tok = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
        h = self.patch(tok) + self.pos.to(dtype)
        angle = t.to(torch.float64)[:, None] * self.freqs[None, :]
        temb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).to(dtype)
        if cond is None:
            cond = torch.full((n,), self.class_embedding.shape[0] - 1, dtype=torch.long)
        cvec = self.time.linear2(F.silu(self.time.linear1(temb))) + self.class_embedding[cond.long()]
        sc = F.silu(cvec)
        for block in self.blocks:
            h = block(h, sc)
        shift, scale = self.final.adaLN(sc)[:, None, :].chunk(2, dim=2)
        out = self.final.linear(F.layer_norm(h, (self.w,), eps=1e-6) * (1 + scale) + shift)
        return out.reshape(n, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, self.s, self.s)

    @classmethod
    def from_rsm(cls, model, dtype=None) -> "TorchDiT":
        c = model.config
        twin = cls(c["image_size"], c["channels"], c["patch"], c["width"], c["depth"], c["heads"],
                   c["num_classes"], c["temb_dim"])
        if dtype is None:
            dtype = torch.float64 if c["dtype"] == "float64" else torch.float32
        twin = twin.to(dtype)
        twin.freqs = twin.freqs.to(torch.float64)
        twin._rsm_names = list(model.named_params())
        state = {k: torch.from_numpy(np.array(v)).to(dtype) for k, v in model.named_params().items()}
        missing, unexpected = twin.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"freqs", "pos"}, (missing, unexpected)
        return twin

    def flat_grad(self) -> torch.Tensor:
        """The parameters' .grad in rsm's flat order (named_params order is the flat order)."""
        params = dict(self.named_parameters())
        return torch.cat([params[k].grad.reshape(-1) if params[k].grad is not None
                          else torch.zeros(params[k].numel(), dtype=params[k].dtype)
                          for k in self._rsm_names])


if __name__ == "__main__":
    import rsm

    rng = np.random.default_rng(0)
    for dtype, tol in (("float64", 1e-10), ("float32", 2e-4)):
        model = rsm.DiT(8, 3, 2, 32, 2, 4, 5, dtype=dtype)
        for v in model.named_params().values():
            v[...] = rng.normal(0, 0.3 / np.sqrt(v.shape[-1] if v.ndim == 2 else 1), v.shape)
        twin = TorchDiT.from_rsm(model)
        x = rng.normal(size=(4, 3, 8, 8)).astype(dtype)
        t = rng.uniform(size=4)
        y = rng.integers(0, 6, 4)
        a = np.asarray(model.forward(x, t, y))
        b = twin(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).detach().numpy()
        err = np.abs(a - b).max() / np.abs(b).max()
        print(dtype, "max rel err", err)
        assert err < tol
