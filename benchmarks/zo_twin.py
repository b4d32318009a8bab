"""A PyTorch eager twin of one rsm-zo fine-tuning iteration (the flow redesign, THEORY.md §9.2), for
benchmarks/bench_finetune.py and tests/test_zo_twin.py.

The iteration, written from THEORY.md §9.2.1-§9.2.5 (not from python/rsm/finetune.py):

  rollout (no grad)  an ODE root per condition over the grid ts[0..S]; for every transition i with
                     budget k_i > 0: the root state x_{t_i} repeated k_i times, ONE Flow-GRPO SDE
                     step x' = A x + K u_old + std z (rows (x_{t_i}, u_old, z)), then the ODE down
                     to t = 0 (9.2.1);
  reward             r(x0) = -|x0 - center|^2 / 2 on every branch end;
  advantages         per group (root, t_i) of k_i children: A = clip((r - mean) / (std + eps), +-5),
                     population std; zero-std groups get A = 0 and are masked (9.2.2);
  loss               per row, with dv = u_theta - u_old, w = |K| / std, s~ = std / sqrt(dt):
                       T1 = mean((w dv)^2) / 2,  T2 = mean(w dv z)          (-log rho = T1 + T2)
                       T  = (T1 + T2) s~^2 dt                                (fairclip2, 9.2.3)
                       l  = max(eps |A| + A T, 0) s~ / (sqrt(dt) s~^2 dt)
                       kl = (w^2 / 2) mean((u_theta - u_ref)^2)  (= mean|mu - mu_ref|^2 / (2 std^2))
                     ODE KL-anchor rows (9.2.5): the root states x_{t_i} of the transitions the
                     budget leaves at k_i = 0 (i < the budget's length, never the last
                     transition), with that step's SDE weight w_i and weight k_avg:
                       kl_anchor = (w_i^2 / 2) mean((u_theta - u_ref)^2)
                     loss = [sum_rows (k_avg / k_i) (l + beta kl)
                             + sum_anchor_rows k_avg beta kl_anchor] / max(sum mask, 1)
  update             backward, global grad-norm clip (1.0), torch.optim.AdamW.

The sampler's per-step scalars (A, K, std of the SDE and ODE steps) come from
rsm.step_coefficients, as in the Flow-GRPO twin; everything else is computed here in torch.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from torch_twin import flat_grads, twin_of  # noqa: E402


class ZoTwin:
    """The torch side of one rsm-zo iteration for `trainer` (an rsm.Trainer with a branch rollout),
    on torch copies of its policy and reference (twin_of), with a torch AdamW of the trainer's
    hyper-parameters. `center` is the quadratic reward's centre."""

    def __init__(self, trainer: rsm.Trainer, center) -> None:
        cfg = trainer.cfg
        if cfg["rollout"] != "branch" or cfg["form"] != "matching" or cfg["reweight"] != "fairclip2":
            raise ValueError("ZoTwin covers the branch rollout with the fairclip2 matching hinge "
                             f"(rsm-zo); got {cfg['rollout']}/{cfg['form']}/{cfg['reweight']}")
        self.trainer = trainer
        self.policy, self.ref = twin_of(trainer.policy), twin_of(trainer.ref)
        for p in self.ref.parameters():
            p.requires_grad_(False)
        self.dtype = self.policy.input.weight.dtype
        self.center = torch.tensor(center, dtype=self.dtype)
        self.roots = trainer.batch_size
        self.ts = np.asarray(trainer.ts, dtype=np.float64)
        steps = len(self.ts) - 1
        self.budget = list(cfg["budget"]) + [0] * (steps - len(cfg["budget"]))
        active = [k for k in self.budget if k > 0]
        self.k_avg = sum(active) / len(active)
        self.ode = [(c["A"], c["K"]) for c in rsm.step_coefficients(trainer.path, self.ts, "ode")]
        # the branch's SDE step is step 0 of the sub-grid ts[i:] (what the branch sampler runs)
        self.sde = {}
        for i, k in enumerate(self.budget):
            if k > 0:
                c = rsm.step_coefficients(trainer.path, self.ts[i:], "sde", noise_level=cfg["noise_level"])[0]
                w = abs(c["K"]) / c["std"]
                sigma_tilde = c["std"] / math.sqrt(c["dt"])
                self.sde[i] = {"A": c["A"], "K": c["K"], "std": c["std"], "w": w,
                               "term_scale": sigma_tilde**2 * c["dt"],
                               "post": sigma_tilde / (math.sqrt(c["dt"]) * sigma_tilde**2 * c["dt"])}
        self.eps, self.beta = cfg["clip_eps"], cfg["kl"]
        # the anchor steps and their SDE weights |K_i| / std_i on the full grid
        self.beta_anchor = cfg["kl"] if cfg.get("kl_anchor") is None else cfg["kl_anchor"]
        full = rsm.step_coefficients(trainer.path, self.ts, "sde", noise_level=cfg["noise_level"])
        last = min(len(cfg["budget"]), steps - 1)
        self.anchor_w = {i: abs(full[i]["K"]) / full[i]["std"] for i in range(last)
                         if self.budget[i] == 0 and self.beta_anchor > 0}
        self.adv_eps, self.adv_clip = cfg["adv_eps"], cfg["adv_clip"]
        self.max_grad_norm = cfg["max_grad_norm"]
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg["lr"], betas=(0.9, 0.999),
                                     eps=1e-8, weight_decay=cfg["weight_decay"])

    def _t(self, i: int, n: int) -> torch.Tensor:
        return torch.full((n,), float(self.ts[i]), dtype=self.dtype)

    @torch.no_grad()
    def rollout(self, gen: torch.Generator | None = None, prior=None, noises=None) -> dict:
        """The ODE root and the branches. prior [roots, D] and noises {i: [roots k_i, D]} replace
        the draws from `gen` (to replay an rsm rollout)."""
        roots, dim = self.roots, self.policy.dim
        x = torch.randn(roots, dim, generator=gen, dtype=self.dtype) if prior is None else prior
        root_xs = [x]
        for i in range(len(self.ts) - 1):  # all the way to t = 0, as rsm's root sampler
            cx, cu = self.ode[i]
            x = cx * x + cu * self.policy(x, self._t(i, roots))
            root_xs.append(x)
        rows, ends = [], []
        for i, k in enumerate(self.budget):
            if k == 0:
                continue
            n = roots * k
            xi = root_xs[i].repeat_interleave(k, dim=0)
            u_old = self.policy(xi, self._t(i, n))
            c = self.sde[i]
            z = torch.randn(n, dim, generator=gen, dtype=self.dtype) if noises is None else noises[i]
            x = c["A"] * xi + c["K"] * u_old + c["std"] * z
            for j in range(i + 1, len(self.ts) - 1):
                cx, cu = self.ode[j]
                x = cx * x + cu * self.policy(x, self._t(j, n))
            rows.append({"step": i, "k": k, "x": xi, "u_old": u_old, "noise": z})
            ends.append(x)
        anchors = [{"step": i, "x": root_xs[i]} for i in sorted(self.anchor_w)]
        return {"root_xs": root_xs, "rows": rows, "x0": torch.cat(ends), "anchors": anchors}

    @torch.no_grad()
    def advantages(self, rewards: torch.Tensor, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Group advantages per (root, t_i): each branch block is [roots, k_i] in root-major order."""
        adv, mask, offset = [], [], 0
        for row in rows:
            n = self.roots * row["k"]
            g = rewards[offset:offset + n].view(self.roots, row["k"])
            std = g.std(1, unbiased=False, keepdim=True)
            a = ((g - g.mean(1, keepdim=True)) / (std + self.adv_eps)).clamp(-self.adv_clip, self.adv_clip)
            signal = (std > 0).expand_as(g)
            adv.append(torch.where(signal, a, torch.zeros_like(a)).reshape(-1))
            mask.append(signal.reshape(-1))
            offset += n
        return torch.cat(adv), torch.cat(mask)

    def reward(self, x0: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x0 - self.center) ** 2).sum(1)

    def loss_backward(self, rows: list, adv: torch.Tensor, mask: torch.Tensor,
                      anchors: list = ()) -> float:
        """Accumulate the gradient of the iteration's loss into .grad, block by block (one backward
        per trained transition and per anchor step, as rsm). Returns the loss."""
        normalizer = max(float(mask.sum()), 1.0)
        total, offset = 0.0, 0
        for row in anchors:
            n = row["x"].shape[0]
            t = self._t(row["step"], n)
            u = self.policy(row["x"], t)
            with torch.no_grad():
                u_ref = self.ref(row["x"], t)
            kl = 0.5 * self.anchor_w[row["step"]] ** 2 * ((u - u_ref) ** 2).mean(1)
            loss = self.k_avg * self.beta_anchor * kl.sum() / normalizer
            loss.backward()
            total += float(loss.detach())
        for row in rows:
            n = row["x"].shape[0]
            c = self.sde[row["step"]]
            a = (adv[offset:offset + n] * mask[offset:offset + n]).to(self.dtype)
            t = self._t(row["step"], n)
            u = self.policy(row["x"], t)
            with torch.no_grad():
                u_ref = self.ref(row["x"], t)
            dv = c["w"] * (u - row["u_old"])
            minus_log_rho = 0.5 * (dv**2).mean(1) + (dv * row["noise"]).mean(1)
            hinge = self.eps * a.abs() + a * (c["term_scale"] * minus_log_rho)
            policy_loss = torch.relu(hinge) * c["post"]
            kl = 0.5 * c["w"] ** 2 * ((u - u_ref) ** 2).mean(1)
            loss = (self.k_avg / row["k"]) * (policy_loss + self.beta * kl).sum() / normalizer
            loss.backward()
            total += float(loss.detach())
            offset += n
        return total

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.opt.step()

    def iteration(self, gen: torch.Generator) -> None:
        """One full iteration: rollout, reward, advantages, loss + backward, clip, AdamW."""
        out = self.rollout(gen)
        adv, mask = self.advantages(self.reward(out["x0"]), out["rows"])
        self.opt.zero_grad()
        self.loss_backward(out["rows"], adv, mask, out["anchors"])
        self.step()


def rel(a, b) -> float:
    """max |a - b| / max |b| (in float64)."""
    a = np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check(trainer: rsm.Trainer, twin: ZoTwin, perturb: float = 0.0, seed: int = 5) -> dict:
    """Compare one rsm-zo iteration of `trainer` with `twin` (same weights): returns max relative
    errors of the rollout (root states, rollout outputs, x0), the rewards and advantages (rsm's
    rollout replayed in torch with rsm's prior and branch noises), the parameter gradient of the
    loss on rsm's recorded rollout, and the parameter change of the update. perturb > 0 moves both
    policies by the same random amount after the rollout (as a later inner epoch would), so that
    dv != 0 (the quadratic term of log rho, the hinge) and u != u_ref (the KL) are exercised.
    The trainer's policy and optimizer take one step, as do the twin's."""
    dtype = twin.dtype
    batch = trainer.rollout()
    rows = batch["rows"]
    if rows[0]["step"] != 0:
        raise ValueError("check(): the budget must branch at t_0 (its rows hold the root prior)")
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dtype)  # noqa: E731
    prior = as_t(rows[0]["x"][:: twin.budget[0]])
    replay = twin.rollout(prior=prior, noises={r["step"]: as_t(r["noise"]) for r in rows})
    errs = {"root states": max(rel(replay["root_xs"][r["step"]].repeat_interleave(twin.budget[r["step"]], 0),
                                   r["x"]) for r in rows),
            "u_old": max(rel(t["u_old"], r["u_old"]) for t, r in zip(replay["rows"], rows)),
            "x0": rel(replay["x0"], batch["x0"])}
    rewards = twin.reward(replay["x0"].double())
    errs["rewards"] = rel(rewards, batch["rewards"])
    adv, mask = twin.advantages(rewards, replay["rows"])
    errs["advantages"] = rel(adv, batch["adv"])
    if not np.array_equal(mask.numpy(), batch["mask"]):
        errs["advantages"] = float("inf")

    if perturb:
        rng = np.random.default_rng(seed)
        p = np.from_dlpack(trainer.policy.params)
        p += (perturb * rng.standard_normal(p.shape)).astype(p.dtype)
        state = {k: torch.from_numpy(np.array(v)) for k, v in trainer.policy.named_params().items()}
        twin.policy.load_state_dict(state, strict=False)
    # the loss gradient on rsm's recorded rollout (rsm's states, outputs, noises, advantages)
    recorded = [{"step": r["step"], "k": twin.budget[r["step"]], "x": as_t(r["x"]),
                 "u_old": as_t(r["u_old"]), "noise": as_t(r["noise"])} for r in rows]
    if [a["step"] for a in batch["anchor_rows"]] != [a["step"] for a in replay["anchors"]]:
        errs["root states"] = float("inf")
    recorded_anchors = [{"step": a["step"], "x": as_t(a["x"])} for a in batch["anchor_rows"]]
    for a, t in zip(batch["anchor_rows"], replay["anchors"]):
        errs["root states"] = max(errs["root states"], rel(t["x"], a["x"]))
    grads, _ = trainer.loss_and_grad(batch)
    twin.opt.zero_grad()
    twin.loss_backward(recorded, torch.from_numpy(batch["adv"]), torch.from_numpy(batch["mask"]),
                       recorded_anchors)
    errs["gradient"] = rel(flat_grads(twin.policy, trainer.policy), grads)
    # one update: rsm's Trainer.update against clip + AdamW in torch
    before = np.array(np.from_dlpack(trainer.policy.params), dtype=np.float64)
    trainer.update(batch)
    after = np.from_dlpack(trainer.policy.params).astype(np.float64)
    torch_before = flat_params(twin.policy, trainer.policy)
    twin.step()
    errs["update"] = float(np.linalg.norm((flat_params(twin.policy, trainer.policy) - torch_before)
                                          - (after - before)) / np.linalg.norm(after - before))
    return errs


def flat_params(twin: torch.nn.Module, model) -> np.ndarray:
    """The twin's parameters in rsm's flat order (float64)."""
    flat = np.zeros(model.num_params, dtype=np.float64)
    base = np.from_dlpack(model.params)
    params = dict(twin.named_parameters())
    for name, view in model.named_params().items():
        off = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // view.itemsize
        flat[off:off + view.size] = params[name].detach().double().numpy().ravel()
    return flat
