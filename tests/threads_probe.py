"""Run by tests/test_threads.py in a subprocess (OMP_NUM_THREADS set by the caller): computes a
set of configurations and prints one JSON object {name: sha256 of the bytes of its outputs}.

The sizes are small enough for a test, but large enough that the GEMMs are cut into several row
tiles (csrc/blas.c: at least 64 rows a tile, up to 8 tiles, from 2 MFLOP): 512-row batches on a
width-120 MLP, 512 token rows on the DiT."""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

import rsm

WIDTH = 120  # not a multiple of 16: OpenBLAS sums some of these shapes in another order per row count
ROWS = 512


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.from_dlpack(a) if not isinstance(a, np.ndarray) else a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def toy_data(n=4096, seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([[3, -np.sqrt(3)], [-3, -np.sqrt(3)], [0, 2 * np.sqrt(3)]])
    return (means[rng.choice(3, n)] + rng.standard_normal((n, 2))).astype(np.float32)


def pretrained(path):
    model = rsm.MLP(2, WIDTH, 2, seed=0)
    hist = rsm.pretrain(model, toy_data(), path, steps=20, batch_size=ROWS, lr=2e-3,
                        progress=False, log_every=1)
    return model, hist


def probe_pretrain(out):
    for name, path in (("flow", rsm.FlowPath()), ("vp", rsm.VPPath("linear"))):
        model, hist = pretrained(path)
        out[f"pretrain-{name}"] = digest(model.params, hist.column("loss"), hist.column("grad_norm"))


def probe_samplers(out, model, vp_model):
    flow, vp = rsm.FlowPath(), rsm.VPPath("linear")
    cases = {
        "euler": (model, flow, dict(sampler="ode")),
        "heun": (model, flow, dict(sampler="heun")),
        "sde": (model, flow, dict(sampler="sde", noise_level=0.7)),
        "ddim": (vp_model, vp, dict(sampler="ddim", eta=0.5)),
        "ddpm": (vp_model, vp, dict(sampler="ddpm")),
        "branching": (model, flow, dict(sampler="sde", branch_steps=[1, 3], branch_factor=2)),
    }
    assert tuple(cases) == SAMPLERS
    for name, (m, path, kw) in cases.items():
        traj = rsm.sample(m, ROWS, path, steps=6, seed=3, return_trajectory=True, **kw)
        out[f"sample-{name}"] = digest(traj.xs, traj.log_probs, traj.means, traj.outputs)


def probe_presets(out, model, vp_model):
    reward = rsm.rewards.quadratic([1.0, 0.5])
    for method in rsm.methods.names():
        cfg = rsm.methods.get(method)
        vp = cfg["path"] == "vp"
        base = vp_model if vp else model
        path = rsm.VPPath("linear") if vp else rsm.FlowPath()
        policy = base.copy()
        group = cfg["branch"] ** cfg["split"] if cfg["rollout"] == "tree" else 16
        trainer = rsm.Trainer(policy, base, reward, method, path=path, batch_size=256 // group,
                              group_size=group, seed=1, kl_every=0)
        row = trainer.step()
        scalars = np.array([v for k, v in sorted(row.items()) if k not in ("seconds", "eval_seconds")
                            and isinstance(v, (int, float, np.floating))], dtype=np.float64)
        out[f"update-{method}"] = digest(policy.params, scalars)


def probe_dit(out):
    model = rsm.DiT(8, 1, 2, 120, 2, 4, 10, seed=0)  # 16 tokens x 32 images = 512 token rows
    params = np.from_dlpack(model.params)
    params[:] = np.random.default_rng(0).normal(scale=0.05, size=params.shape).astype(params.dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    t = rng.uniform(0.05, 0.95, 32).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int64)
    cot = rng.standard_normal((32, 64)).astype(np.float32)
    fwd = model.forward(x, t, y)
    res = model.forward_and_vjp(x, t, cot, y)
    out["dit-forward-vjp"] = digest(fwd, *res)


SAMPLERS = ("euler", "heun", "sde", "ddim", "ddpm", "branching")


def names() -> list[str]:
    """Every configuration main() hashes, in order."""
    return (["pretrain-flow", "pretrain-vp"] + [f"sample-{s}" for s in SAMPLERS]
            + [f"update-{m}" for m in rsm.methods.names()] + ["dit-forward-vjp"])


def main() -> None:
    which = set(sys.argv[1:]) or {"pretrain", "samplers", "presets", "dit"}
    out: dict[str, str] = {"num_threads": str(rsm.get_num_threads())}
    if "pretrain" in which:
        probe_pretrain(out)
    if which & {"samplers", "presets"}:
        model, _ = pretrained(rsm.FlowPath())
        vp_model, _ = pretrained(rsm.VPPath("linear"))
        if "samplers" in which:
            probe_samplers(out, model, vp_model)
        if "presets" in which:
            probe_presets(out, model, vp_model)
    if "dit" in which:
        probe_dit(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
