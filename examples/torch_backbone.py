"""Bring your own backbone: a small PyTorch DiT, built here (no download), pretrained briefly on
scikit-learn's 8x8 digits by flow matching in plain torch, then fine-tuned by rsm toward a digit
classifier's probability of the requested class with Flow-GRPO and with rsm-zo, through
rsm.TorchModel: rsm's samplers, log-probs, RSM objective and AdamW drive the torch module, whose
parameters become zero-copy views of rsm's flat buffer.

    python examples/torch_backbone.py                 # short: about 1.5 minutes on 2 shared cores
    python examples/torch_backbone.py --pretrain-steps 3000 --iterations 40   # a real run

OMP_WAIT_POLICY=passive is set below (unless the environment sets it) before torch is imported:
rsm's and torch's OpenMP thread pools take turns once per batch, and torch's default (spin before
sleeping) starves rsm's C loops on a busy machine, 4-20x (benchmarks/RESULTS.md, "External models").
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")   # before torch loads its OpenMP runtime

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import rsm  # noqa: E402
from rsm import image_datasets, image_rewards  # noqa: E402


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation by the (time, class) embedding."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(nn.functional.silu(c))[:, None].chunk(6, dim=-1)
        a = self.norm1(h) * (1 + s1) + b1
        h = h + g1 * self.attn(a, a, a, need_weights=False)[0]
        return h + g2 * self.mlp(self.norm2(h) * (1 + s2) + b2)


class TinyDiT(nn.Module):
    """x [n, 64] (8x8 images, rows) , t [n], class ids [n, 1] -> velocity [n, 64]; 2x2 patches."""

    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch, self.tokens = 2, 16
        self.embed = nn.Linear(4, width)
        self.pos = nn.Parameter(torch.randn(1, 16, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.label = nn.Embedding(classes + 1, width)   # the last id: no class (null condition)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, 4)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def patches(self, x: torch.Tensor) -> torch.Tensor:   # [n, 64] -> [n, 16, 4]
        return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)

    def unpatch(self, p: torch.Tensor) -> torch.Tensor:   # [n, 16, 4] -> [n, 64]
        return p.reshape(-1, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(-1, 64)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        freq = torch.exp(-math.log(10000.0) * torch.arange(32, dtype=x.dtype) / 32)
        angle = 1000.0 * t[:, None] * freq[None]
        c = self.time(torch.cat([angle.sin(), angle.cos()], 1)) + self.label(cond[:, 0].long())
        h = self.embed(self.patches(x)) + self.pos
        for block in self.blocks:
            h = block(h, c)
        return self.unpatch(self.out(self.norm(h)))


def pretrain(net: TinyDiT, data: np.ndarray, labels: np.ndarray, steps: int, seed: int) -> float:
    """Flow matching on rsm's flow path: x_t = (1 - t) x0 + t eps, target velocity eps - x0;
    labels dropped to the null class 10% of the time. Returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(data), torch.from_numpy(labels)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(64, generator=gen) < 0.1] = 10
        t = torch.rand(64, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None]) * x0 + t[:, None] * eps
        loss = ((net(xt, t, y[:, None].float()) - (eps - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:   # cosine decay
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rsm.set_num_threads(torch.get_num_threads())

    train = image_datasets.digits("train", seed=args.seed)
    net = TinyDiT(width=args.width)
    t0 = time.perf_counter()
    loss = pretrain(net, train.flat(), train.labels, args.pretrain_steps, args.seed)
    net.eval()   # deterministic forward: rsm's importance ratios are then exactly 1
    print(f"pretrained a torch DiT ({sum(p.numel() for p in net.parameters())} parameters) for "
          f"{args.pretrain_steps} steps: flow-matching loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")

    reward = image_rewards.digit_probability(image_rewards.digit_classifier(args.seed))
    conditions = np.arange(10)
    for method in ("flow-grpo", "rsm-zo"):
        policy = rsm.TorchModel(copy.deepcopy(net), rsm.FlowPath(), "velocity", dim=64, cond_dim=1,
                                num_classes=10)
        ref = rsm.TorchModel(net, rsm.FlowPath(), "velocity", dim=64, cond_dim=1, num_classes=10,
                             trainable=False)
        t0 = time.perf_counter()
        trainer = rsm.Trainer(policy, ref, reward, method, batch_size=10, group_size=4,
                              conditions=conditions, seed=args.seed, kl_every=0)
        print(f"{method}: on-policy check {rsm.check_on_policy(trainer)}")
        for _ in range(args.iterations):
            row = trainer.step()
            print(f"  {method} iteration {row['step']}: reward {row['reward_mean']:.3f}, "
                  f"kl {row['kl']:.3g}, {row['seconds']:.1f} s")
        print(f"{method}: {args.iterations} iterations in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
