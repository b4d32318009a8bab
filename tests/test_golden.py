"""Regression guard: bitwise hashes of a fixed set of runs (issue 12 and 13: "every number
unchanged" across refactors).

Each case below runs a small, fixed computation through the public API and hashes every output
array's bytes (sha256). The hashes are stored per *build fingerprint* (CPU model, compiler, flags,
BLAS kernel) in tests/golden/hashes.json, because float results legitimately differ between CPUs
and builds (-march=native, the BLAS's kernel); a fingerprint with no recorded hashes skips with
the command that records them.

Regenerating (only with a commit message that says which numbers changed and why):

    RSM_GOLDEN_REGEN=1 .venv/bin/python -m pytest tests/test_golden.py -q

Cases: pretraining (MLP flow and VP, DiT), every sampler's trajectory (euler, heun, sde, ddim,
ddpm, pcpo, windows, branching) on MLP and DiT, one Trainer iteration of every preset,
methods.table(), and a short multi-iteration fine-tuning run's history (the demo's shape).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np
import pytest

import rsm

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "hashes.json")
REGEN = os.environ.get("RSM_GOLDEN_REGEN") == "1"


def fingerprint() -> str:
    """What the bits depend on besides the source: CPU model, compiler, flags, BLAS kernel,
    thread count of the BLAS/OpenMP (the numbers are thread-count invariant only where tested)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = rsm.build_info()
    parts = [platform.machine(), cpu, str(info.get("compiler")), str(info.get("c_flags")),
             str(info.get("blas")), str(info.get("sanitizers"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"<none>")
            continue
        if isinstance(a, (bytes, str)):
            h.update(a.encode() if isinstance(a, str) else a)
            continue
        arr = np.ascontiguousarray(np.asarray(np.from_dlpack(a)) if hasattr(a, "__dlpack__") else a)
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _toy_data(n=2048, seed=0):
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(8) / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centers[rng.integers(0, 8, n)] + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)


def _pretrained_mlp(path, dtype="float32"):
    model = rsm.MLP(2, 32, 2, seed=0, temb_dim=16, dtype=dtype)
    hist = rsm.pretrain(model, _toy_data().astype(dtype), path, steps=60, batch_size=64, lr=2e-3,
                        seed=0, progress=False, warmup_steps=5)
    return model, hist


def _dit():
    return rsm.DiT(image_size=4, channels=1, patch=2, width=16, depth=2, heads=2, num_classes=3,
                   seed=0, temb_dim=8)


# ---- the cases: each returns a digest string ---------------------------------------------------

def case_pretrain_mlp_flow():
    model, hist = _pretrained_mlp(rsm.FlowPath())
    return _digest(model.params, hist.column("loss"), hist.column("grad_norm"))


def case_pretrain_mlp_vp():
    model, hist = _pretrained_mlp(rsm.VPPath("cosine"))
    return _digest(model.params, hist.column("loss"))


def case_pretrain_mlp_flow_f64():
    model, hist = _pretrained_mlp(rsm.FlowPath(), dtype="float64")
    return _digest(model.params, hist.column("loss"))


def case_pretrain_dit():
    model = _dit()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 128)
    hist = rsm.pretrain(model, x, rsm.FlowPath(), steps=8, batch_size=16, lr=1e-3, seed=0,
                        progress=False, cond=labels, cond_dropout=0.1)
    return _digest(model.params, hist.column("loss"))


_SAMPLERS = {
    "euler": dict(sampler="euler", steps=6),
    "heun": dict(sampler="heun", steps=6),
    "sde": dict(sampler="sde", steps=6, noise_level=0.7),
    "sde_window": dict(sampler="sde", steps=6, noise_level=0.7, sde_window=(1, 4)),
    "sde_branch": dict(sampler="sde", steps=6, noise_level=0.7, branch_steps=[1, 3], branch_factor=2),
    "ddim": dict(sampler="ddim", steps=6, eta=0.5),
    "ddpm": dict(sampler="ddpm", steps=6),
    "ddim_pcpo": dict(sampler="ddim", steps=20, eta=1.0, pcpo_weight=4.5),  # PCPO's std needs a fine grid near t = 1
}


def _traj_digest(traj):
    return _digest(traj.xs, traj.ts, traj.means, traj.stds, traj.log_probs, traj.noises)


def _sampler_case(name, path_name):
    def run():
        path = rsm.FlowPath() if path_name == "flow" else rsm.VPPath("linear")
        model, _ = _pretrained_mlp(path)
        kw = dict(_SAMPLERS[name])
        traj = rsm.sample(model, 48, path, seed=3, return_trajectory=True, **kw)
        return _traj_digest(traj)
    return run


def case_sample_dit_cfg():
    model = _dit()
    p = np.from_dlpack(model.params)
    p[:] = np.random.default_rng(0).standard_normal(p.shape).astype(np.float32) * 0.1
    guided = rsm.Guided(model, 2.0)
    traj = rsm.sample(guided, 6, rsm.FlowPath(), "sde", steps=4, cond=np.array([0, 1, 2, 0, 1, 2]),
                      seed=2, return_trajectory=True)
    return _traj_digest(traj)


# ---- one Trainer iteration of every preset ----------------------------------------------------

def _reward_fn(x0, cond):
    x = np.from_dlpack(x0)
    return -0.5 * ((x - np.array([1.5, 0.0], dtype=x.dtype)) ** 2).sum(1)


def _reward_grad_fn(x0, cond):
    x = np.from_dlpack(x0)
    diff = x - np.array([1.5, 0.0], dtype=x.dtype)
    return -0.5 * (diff ** 2).sum(1), -diff


def _preset_case(method):
    def run():
        preset = rsm.methods.get(method)
        family = preset["family"]
        path = rsm.VPPath("linear") if preset.get("path", "flow") == "vp" else rsm.FlowPath()
        ref, _ = _pretrained_mlp(path)
        policy = ref.copy()
        reward = (rsm.Reward(_reward_grad_fn, differentiable=True) if family != "zeroth-order"
                  else _reward_fn)
        # a Branch-GRPO tree has branch ** split leaves per root (16 as released, 8 earlier)
        leaves = preset["branch"] ** preset["split"] if preset["rollout"] == "tree" else 4
        kw = dict(batch_size=4, group_size=leaves, seed=5, kl_every=0)
        trainer = rsm.Trainer(policy, ref, reward, method, path=path, **kw)
        rows = [trainer.step() for _ in range(2)]
        numeric = [[float(r[k]) for k in sorted(r) if k not in ("seconds", "eval_seconds")
                    and isinstance(r[k], (int, float, np.floating, np.integer))] for r in rows]
        opt = trainer.optimizer.state_dict()
        return _digest(policy.params, opt["m"], opt["v"], np.array(numeric, dtype=np.float64))
    return run


def case_methods_table():
    return _digest(json.dumps(rsm.methods.table(), sort_keys=True, default=repr))


def case_demo_history():
    """The demo's shape in small: pretrain, then several flow-grpo and rsm-zo iterations, with
    the path-KL column evaluated (kl_every=2)."""
    ref, _ = _pretrained_mlp(rsm.FlowPath())
    digests = []
    for method in ("flow-grpo", "rsm-zo"):
        run = rsm.finetune(ref.copy(), ref, _reward_fn, method=method, iterations=3, batch_size=4,
                           group_size=4, seed=1, progress=False, kl_every=2, kl_samples=32)
        cols = [c for c in sorted(run.history[-1]) if c not in ("seconds", "eval_seconds")
                and isinstance(run.history[-1][c], (int, float, np.floating, np.integer))]
        table = np.array([[float(r[c]) for c in cols] for r in run.history], dtype=np.float64)
        digests.append(_digest(run.policy.params, table, ",".join(cols)))
    return _digest(*digests)


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}
for _s in _SAMPLERS:
    for _p in ("flow", "vp"):
        CASES[f"sample_{_s}_{_p}"] = _sampler_case(_s, _p)
for _m in rsm.methods.names():
    CASES[f"preset_{_m}"] = _preset_case(_m)


def _load() -> dict:
    if not os.path.exists(GOLDEN):
        return {}
    with open(GOLDEN) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def recorded():
    store = _load()
    fp = fingerprint()
    yield store.get(fp, {}).get("hashes")
    if REGEN:
        store[fp] = {"machine": rsm.build_info().get("blas"), "hashes": dict(sorted(_NEW.items()))}
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            json.dump(store, f, indent=1, sort_keys=True)
            f.write("\n")


_NEW: dict[str, str] = {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, recorded):
    digest = CASES[name]()
    assert digest == CASES[name](), f"{name}: two runs in one process differ (not deterministic)"
    if REGEN:
        _NEW[name] = digest
        return
    if recorded is None:
        pytest.skip(f"no golden hashes recorded for this CPU/build (fingerprint {fingerprint()}); "
                    "record them with RSM_GOLDEN_REGEN=1")
    assert name in recorded, f"{name}: no recorded hash (a new case: regenerate with RSM_GOLDEN_REGEN=1)"
    assert digest == recorded[name], (f"{name}: the numbers changed bitwise. If intended, "
                                      "regenerate with RSM_GOLDEN_REGEN=1 and say why in the commit")


def test_fingerprint_is_recorded_here():
    """On the project's own machine kind the hashes must exist (a guard that silently skips
    everything guards nothing); elsewhere this only reports."""
    if REGEN:
        return
    store = _load()
    if fingerprint() not in store:
        pytest.skip(f"fingerprint {fingerprint()} not recorded (another CPU or build)")
    assert len(store[fingerprint()]["hashes"]) == len(CASES)
