"""Bitwise reproducibility: pretraining (seed, chunking into C calls, resumption from a
checkpoint) and sampling."""
from __future__ import annotations

import numpy as np
import pytest

import rsm

STEPS = 200


def eight_gaussians(n=2048, seed=0):
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(8) / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x = centers[rng.integers(0, 8, n)] + 0.1 * rng.normal(size=(n, 2))
    return x.astype(np.float32)


DATA = eight_gaussians()


def _run(seed=0, train_seed=0, steps=STEPS, path=None, optimizer_kwargs=None, **kwargs):
    model = rsm.MLP(2, 32, 2, seed=seed, temb_dim=16)
    opt = rsm.AdamW(model, lr=2e-3, max_grad_norm=1.0, weight_decay=1e-4, ema_decay=0.99,
                    **(optimizer_kwargs or {}))
    hist = rsm.pretrain(model, DATA, path or rsm.FlowPath(), steps=steps, batch_size=64, lr=2e-3,
                        seed=train_seed, progress=False, optimizer=opt, warmup_steps=20, **kwargs)
    return model, opt, hist


def _state(model, opt):
    out = {"params": np.from_dlpack(model.params).tobytes(),
           "m": np.from_dlpack(opt._core.m).tobytes(), "v": np.from_dlpack(opt._core.v).tobytes(),
           "step": opt.step_count}
    if opt.ema is not None:
        out["ema"] = np.from_dlpack(opt.ema).tobytes()
    return out


@pytest.fixture(scope="module")
def reference():
    model, opt, hist = _run()
    return model, opt, hist


def test_training_does_something(reference):
    _, opt, hist = reference
    loss = hist.column("loss")
    assert len(hist) == STEPS and opt.step_count == STEPS
    assert np.all(np.isfinite(loss))
    assert loss[-20:].mean() < loss[:20].mean()


@pytest.mark.parametrize("path", [rsm.FlowPath(), rsm.VPPath()], ids=["flow", "vp"])
def test_same_seed_bitwise(path):
    a = _run(path=path)
    b = _run(path=path)
    assert _state(*a[:2]) == _state(*b[:2])
    assert np.array_equal(a[2].column("loss"), b[2].column("loss"))
    assert np.array_equal(a[2].column("grad_norm"), b[2].column("grad_norm"))


def test_different_seeds_differ(reference):
    ref = np.from_dlpack(reference[0].params)
    for kwargs in (dict(train_seed=1), dict(seed=1)):  # data/time/noise streams; the init
        model, _, _ = _run(**kwargs)
        assert not np.array_equal(np.from_dlpack(model.params), ref), kwargs


@pytest.mark.parametrize("log_every", [1, 7, 64, STEPS, 1000])
def test_independent_of_log_every(reference, log_every):
    model, opt, hist = _run(log_every=log_every)
    assert _state(model, opt) == _state(*reference[:2])
    assert np.array_equal(hist.column("loss"), reference[2].column("loss"))
    assert list(hist.column("step")) == list(range(STEPS))


def test_float64_same_seed_bitwise():
    def run():
        m = rsm.MLP(2, 16, 2, seed=3, dtype="float64")
        rsm.pretrain(m, DATA.astype(np.float64), rsm.FlowPath(), steps=50, batch_size=32,
                     seed=5, progress=False, log_every=9)
        return np.from_dlpack(m.params).tobytes()
    assert run() == run()


# ---- resumption from a checkpoint (needs rsm.io) ---------------------------------------------

@pytest.fixture
def io():
    return pytest.importorskip("rsm.io")


def test_checkpoint_every_does_not_change_the_run(io, tmp_path, reference):
    ckpt = tmp_path / "run.safetensors"
    model, opt, hist = _run(checkpoint=str(ckpt), checkpoint_every=60, log_every=25)
    assert _state(model, opt) == _state(*reference[:2])
    assert ckpt.exists()


@pytest.mark.parametrize("stop", [1, 50, 137])
def test_resume_equals_uninterrupted(io, tmp_path, reference, stop):
    ckpt = tmp_path / "ckpt.safetensors"
    # an interrupted run: the last checkpoint (checkpoint_every) is at step `stop`
    _run(steps=stop, checkpoint=str(ckpt), checkpoint_every=stop)
    # a fresh process: new model (other init) and optimizer, resumed from the file
    model = rsm.MLP(2, 32, 2, seed=99, temb_dim=16)
    opt = rsm.AdamW(model, lr=2e-3, max_grad_norm=1.0, weight_decay=1e-4, ema_decay=0.99)
    hist = rsm.pretrain(model, DATA, rsm.FlowPath(), steps=STEPS, batch_size=64, lr=2e-3, seed=0,
                        progress=False, optimizer=opt, warmup_steps=20, resume=str(ckpt))
    assert _state(model, opt) == _state(*reference[:2])
    assert [r["step"] for r in hist] == list(range(stop, STEPS))
    assert np.array_equal(hist.column("loss"), reference[2].column("loss")[stop:])


def test_resume_from_intermediate_checkpoint(io, tmp_path, reference):
    # checkpoint_every writes during the run: the file after step 100 of a 100-step run with
    # checkpoint_every=40 is at step 100 (the final save); resume continues to STEPS bitwise
    ckpt = tmp_path / "mid.safetensors"
    _run(steps=100, checkpoint=str(ckpt), checkpoint_every=40)
    _, meta = io.load_file(str(ckpt))
    assert meta["step"] == "100"
    model, opt, _ = _run(seed=7, resume=str(ckpt))
    assert _state(model, opt) == _state(*reference[:2])


# ---- sampling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ode", "heun", "sde", "ddim", "ddpm"])
def test_sample_same_seed_bitwise(reference, sampler):
    model = reference[0]
    path = rsm.FlowPath() if sampler in ("ode", "heun", "sde") else rsm.VPPath()
    a = rsm.sample(model, 256, path, sampler, steps=10, seed=11, return_trajectory=True)
    b = rsm.sample(model, 256, path, sampler, steps=10, seed=11, return_trajectory=True)
    for key in ("xs", "means", "log_probs", "noises", "outputs"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key
    c = rsm.sample(model, 256, path, sampler, steps=10, seed=12)
    assert not np.array_equal(np.from_dlpack(c), a.x)  # the prior draw depends on the seed
    # and x alone equals the trajectory's last state
    x = rsm.sample(model, 256, path, sampler, steps=10, seed=11)
    assert np.from_dlpack(x).tobytes() == a.x.tobytes()
