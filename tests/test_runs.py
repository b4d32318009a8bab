"""Run management: Trainer.save / Trainer.load / finetune(resume_from=, save_every=) resume a run
bitwise; the CSV logger's file; the KL warning."""
import csv
import math

import numpy as np
import pytest

import rsm
from toy_models import make_models

TIMING = ("seconds", "eval_seconds")
# a zeroth-order and a first-order preset, small, with an EMA so that it is resumed too
CASES = {
    "flow-grpo": dict(sampler_steps=4, lr=5e-3, clip_eps=0.2, kl=0.1, ema_decay=0.9),
    "rsm-fo": dict(sampler_steps=4, lr=5e-3, ema_decay=0.9),
}


def _reward():
    return rsm.rewards.quadratic([1.0, -0.5], scale=1.0)


def _common(method):
    return dict(batch_size=4, group_size=4, seed=3, kl_every=2, progress=False, **CASES[method])


def _strip(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _same_rows(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(_strip(a), _strip(b)):
        assert ra.keys() == rb.keys()
        for k in ra:
            va, vb = ra[k], rb[k]
            assert (va == vb) or (isinstance(va, float) and math.isnan(va) and math.isnan(vb)), (k, va, vb)


def _state(trainer):
    opt = trainer.optimizer.state_dict()
    return (np.array(np.from_dlpack(trainer.policy.params)), opt["m"], opt["v"], opt["ema"], opt["step"])


def _assert_same_state(t1, t2):
    for a, b in zip(_state(t1), _state(t2)):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        else:
            assert a == b
    assert t1.iteration == t2.iteration


@pytest.mark.parametrize("method", sorted(CASES))
def test_save_load_resumes_bitwise(method, tmp_path):
    policy, ref = make_models()
    full = rsm.finetune(policy.copy(), ref, _reward(), method, iterations=5, **_common(method))

    file = tmp_path / "run.safetensors"
    part = rsm.finetune(policy.copy(), ref, _reward(), method, iterations=2, save_path=file,
                        **_common(method))
    assert part.trainer.iteration == 2
    # a fresh process would have only the file, the reference and the reward
    trainer = rsm.Trainer.load(file, ref, _reward())
    assert trainer.iteration == 2 and len(trainer.history) == 2
    _same_rows(trainer.history, full.history[:2])
    for _ in range(3):
        trainer.step()
    _assert_same_state(trainer, full.trainer)
    _same_rows(trainer.history, full.history)
    # the analytic reward is stored in the file, so it can be left out
    again = rsm.Trainer.load(file, ref)
    again.step()
    _same_rows(again.history, full.history[:3])


@pytest.mark.parametrize("method", sorted(CASES))
def test_resume_from_after_a_crash(method, tmp_path):
    """save_every=2; the reward fails in iteration 3, so the file holds iteration 2; resuming
    with resume_from= runs to the same end as the uninterrupted run, history continued."""
    policy, ref = make_models()
    full = rsm.finetune(policy.copy(), ref, _reward(), method, iterations=5, **_common(method))

    quad = _reward()
    calls = {"n": 0}

    def flaky(x0, cond):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("the reward server went away")
        return quad.fn(x0, cond)

    file = tmp_path / "run.safetensors"
    with pytest.raises(RuntimeError, match="went away"):
        rsm.finetune(policy.copy(), ref, rsm.Reward(flaky, differentiable=True), method,
                     iterations=5, save_every=2, save_path=file, **_common(method))
    resumed_policy = policy.copy()
    run = rsm.finetune(resumed_policy, ref, _reward(), method, iterations=5, resume_from=file,
                       save_path=file, **_common(method))
    _assert_same_state(run.trainer, full.trainer)
    _same_rows(run.history, full.history)
    assert rsm.Trainer.load(file, ref).iteration == 5


def test_resume_refuses_another_run(tmp_path):
    policy, ref = make_models()
    file = tmp_path / "run.safetensors"
    rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, save_path=file,
                 **_common("rsm-fo"))
    other_ref = ref.copy()
    np.from_dlpack(other_ref.params)[0] += 1e-3
    with pytest.raises(ValueError, match="reference model is not the one"):
        rsm.Trainer.load(file, other_ref)
    target = policy.copy()
    before = np.array(np.from_dlpack(target.params))
    with pytest.raises(ValueError, match="lr: file 0.005, trainer 0.001"):
        rsm.finetune(target, ref, _reward(), "rsm-fo", iterations=2, resume_from=file,
                     **{**_common("rsm-fo"), "lr": 1e-3})
    assert np.array_equal(before, np.from_dlpack(target.params))   # nothing was loaded
    with pytest.raises(ValueError, match="method: file 'rsm-fo', trainer 'vgg-flow'"):
        rsm.finetune(policy.copy(), ref, _reward(), "vgg-flow", iterations=2, resume_from=file,
                     **_common("rsm-fo"))
    with pytest.raises(ValueError, match="callable, which a file cannot hold"):
        plain = tmp_path / "plain.safetensors"
        rsm.finetune(policy.copy(), ref, rsm.Reward(_reward().fn, differentiable=True), "rsm-fo",
                     iterations=1, save_path=plain, **_common("rsm-fo"))
        rsm.Trainer.load(plain, ref)
    with pytest.raises(rsm.io.CheckpointError, match="not a trainer file"):
        ref.save(tmp_path / "model.safetensors")
        rsm.Trainer.load(tmp_path / "model.safetensors", ref)


def test_csv_logger_file(tmp_path):
    policy, ref = make_models()
    seen = []
    run = rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=4, log_dir=tmp_path,
                       log_with=["csv", lambda row, step: seen.append((step, row["reward_mean"]))],
                       **_common("rsm-fo"))
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert list(rows[0])[:2] == ["step", "reward_mean"]
    for row, hist in zip(rows, run.history):
        assert int(row["step"]) == hist["step"]
        assert float(row["reward_mean"]) == hist["reward_mean"]   # repr: exact round trip
        assert float(row["kl"]) == hist["kl"]
        if math.isnan(hist["kl_path"]):
            assert row["kl_path"] == ""
        else:
            assert float(row["kl_path"]) == hist["kl_path"]
    assert seen == [(h["step"], h["reward_mean"]) for h in run.history]
    # log_every=2: rows 0 and 2 only
    rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=4, log_dir=tmp_path / "b",
                 log_with="csv", log_every=2, **_common("rsm-fo"))
    with open(tmp_path / "b" / "history.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 2]


def test_csv_logger_resume_continues_the_file(tmp_path):
    policy, ref = make_models()
    file = tmp_path / "run.safetensors"
    rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=2, save_path=file,
                 log_with="csv", log_dir=tmp_path, **_common("rsm-fo"))
    # a row logged after the last save (a crash between saves) is dropped on resume
    with open(tmp_path / "history.csv", "a") as f:
        f.write("2,999\n")
    rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=4, resume_from=file,
                 log_with="csv", log_dir=tmp_path, **_common("rsm-fo"))
    with open(tmp_path / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert all(float(r["reward_mean"]) != 999 for r in rows)


def test_log_with_errors(tmp_path):
    policy, ref = make_models()
    with pytest.raises(ValueError, match="log_with='csvv'"):
        rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, log_with="csvv",
                     log_dir=tmp_path, **_common("rsm-fo"))
    with pytest.raises(ValueError, match="save_every= needs save_path="):
        rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, save_every=1,
                     **_common("rsm-fo"))


def test_kl_warning_threshold():
    policy, ref = make_models()
    with pytest.warns(RuntimeWarning, match=r"path KL .* \(> kl_warn=1e-09\)"):
        rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, kl_warn=1e-9,
                     **_common("rsm-fo"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, kl_warn=None,
                     **_common("rsm-fo"))


def test_image_sample_grid_logged(tmp_path):
    """An image policy logs a grid of samples every sample_every iterations (CSV: PNG files)."""
    pytest.importorskip("PIL")
    ref = rsm.DiT(image_size=4, channels=1, patch=2, width=8, depth=1, heads=1, num_classes=2, seed=0)
    rewards = rsm.Reward(lambda x0, cond: -np.from_dlpack(x0).astype(np.float64).mean(1))
    rsm.finetune(ref.copy(), ref, rewards, "flow-grpo", iterations=2, batch_size=2, group_size=2,
                 conditions=np.array([0, 1]), sampler_steps=3, progress=False, log_with="csv",
                 log_dir=tmp_path, sample_every=1, kl_every=0)
    pngs = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert pngs == ["samples_000000.png", "samples_000001.png"]


def test_tensorboard_and_wandb_adapters(monkeypatch, tmp_path):
    """The adapters call their package's API (stand-in modules here: neither package is a
    dependency); a missing package is an ImportError that says what to install."""
    import sys
    import types

    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("init", str(log_dir)))

        def add_scalar(self, key, value, step):
            calls.append(("scalar", key, value, step))

        def add_image(self, name, image, step, dataformats):
            calls.append(("image", name, image.shape, step, dataformats))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # no torch tensorboard
    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=Writer))
    logger = rsm.loggers.make_logger("tensorboard", log_dir=tmp_path)
    logger.log({"step": 3, "reward_mean": 0.5, "kl_path": float("nan"), "name": "x"}, 3)
    logger.log_images("samples", np.zeros((4, 4, 1)), 3)
    logger.close()
    assert calls == [("init", str(tmp_path)), ("scalar", "reward_mean", 0.5, 3),
                     ("image", "samples", (4, 4, 1), 3, "HWC"), ("close",)]

    logged = []
    fake = types.SimpleNamespace(run=None, init=lambda **kw: logged.append(("init", kw)),
                                 log=lambda d, step: logged.append(("log", d, step)),
                                 Image=lambda a: ("image", a.shape),
                                 finish=lambda: logged.append(("finish",)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = rsm.loggers.make_logger("wandb", config={"project": "p"})
    logger.log({"step": 1, "reward_mean": 2.0}, 1)
    logger.close()
    assert logged == [("init", {"project": "p"}), ("log", {"reward_mean": 2.0}, 1), ("finish",)]

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match="pip install wandb"):
        rsm.loggers.make_logger("wandb")
