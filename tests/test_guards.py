"""Guards against silent misuse: the recorded path, policy/reference aliasing, the two meanings of
"steps", reward arity, dtype advice. Every error names both sides."""
import json
import warnings

import numpy as np
import pytest

import rsm
from toy_models import make_models


def _pretrained(path, seed=0):
    model = rsm.MLP(2, 16, 1, seed=seed)
    data = rsm.datasets.get("8gaussians").sample(512, seed=0)
    rsm.pretrain(model, data, path, steps=5, batch_size=32, progress=False)
    return model


def _reward():
    return rsm.rewards.quadratic([1.0, 0.0])


def test_pretrain_records_path_in_memory_and_file(tmp_path):
    flow = _pretrained(rsm.FlowPath())
    assert rsm.guards.path_info(flow) == {"kind": "flow", "parameterization": "velocity"}
    vp = _pretrained(rsm.VPPath("cosine"))
    assert rsm.guards.path_info(vp) == {"kind": "vp", "schedule": "cosine", "parameterization": "eps"}
    assert rsm.guards.path_info(vp.copy()) == rsm.guards.path_info(vp)
    vp.save(tmp_path / "vp.safetensors")
    loaded = rsm.load(tmp_path / "vp.safetensors")
    assert rsm.guards.path_info(loaded) == rsm.guards.path_info(vp)
    _, meta = rsm.io.load_file(tmp_path / "vp.safetensors")
    assert json.loads(meta["rsm_path"])["schedule"] == "cosine"


def test_old_files_load_with_the_path_unknown(tmp_path):
    model = _pretrained(rsm.FlowPath())
    model.save(tmp_path / "m.safetensors")
    tensors, meta = rsm.io.load_file(tmp_path / "m.safetensors")
    del meta["rsm_path"]   # a file written before paths were recorded
    rsm.io.save_file(tensors, tmp_path / "old.safetensors", metadata=meta)
    old = rsm.load(tmp_path / "old.safetensors")
    assert rsm.guards.path_info(old) is None
    # unknown is never guessed: a VP preset runs (the user's responsibility)
    rsm.Trainer(old.copy(), old, _reward(), "ddpo", batch_size=2, group_size=2)


def test_preset_for_another_path_is_refused_naming_both():
    flow = _pretrained(rsm.FlowPath())
    with pytest.raises(ValueError, match=r"method 'ddpo' runs on the vp path, but the models were "
                                         r"trained on the flow path"):
        rsm.finetune(flow.copy(), flow, _reward(), "ddpo", iterations=1, progress=False)
    vp = _pretrained(rsm.VPPath("cosine"))
    with pytest.raises(ValueError, match=r"'flow-grpo' runs on the flow path.*VP path \(schedule 'cosine'"):
        rsm.Trainer(vp.copy(), vp, _reward(), "flow-grpo")
    with pytest.raises(ValueError, match=r"path=VPPath\(schedule='linear'\) is not the path.*cosine"):
        rsm.Trainer(vp.copy(), vp, _reward(), "ddpo", path=rsm.VPPath("linear"))
    with pytest.raises(ValueError, match="policy was trained on the flow path.*but ref on the VP path"):
        rsm.Trainer(flow.copy(), vp, _reward(), "reinforce-kl")
    # the models' own path is used: a cosine VP model gets the cosine path, not VP linear
    t = rsm.Trainer(vp.copy(), vp, _reward(), "ddpo", batch_size=2, group_size=2)
    assert t.path.kind == "vp" and t.path.schedule == "cosine"
    t = rsm.Trainer(vp.copy(), vp, _reward(), "reinforce-kl", batch_size=2, group_size=2)  # "any"
    assert t.path.kind == "vp"


def test_policy_is_ref_or_shares_its_buffer_is_refused():
    policy, ref = make_models()
    with pytest.raises(ValueError, match="policy and ref are the same model"):
        rsm.finetune(ref, ref, _reward(), "rsm-fo", iterations=1, progress=False)
    cond = rsm.MLP(2, 8, 1, cond_dim=1, seed=0)
    with pytest.raises(ValueError, match="same model"):
        rsm.Trainer(rsm.Guided(cond, 2.0), rsm.Guided(cond, 1.0), _reward(), "rsm-fo",
                    conditions=np.zeros((4, 1)))

    class View:   # another object on the same parameter buffer
        def __init__(self, model):
            self._m = model

        def __getattr__(self, name):
            return getattr(self._m, name)

    with pytest.raises(ValueError, match="share their parameter buffer"):
        rsm.Trainer(View(ref), ref, _reward(), "rsm-fo")


def test_iterations_and_sampler_steps():
    policy, ref = make_models()
    with pytest.warns(DeprecationWarning, match=r"finetune\(steps=...\) is deprecated.*iterations="):
        run = rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", steps=2, batch_size=2,
                           group_size=2, progress=False)
    assert run.trainer.iteration == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        run = rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, sampler_steps=7,
                           batch_size=2, group_size=2, progress=False)
    assert run.trainer.cfg["steps"] == 7 and len(run.trainer.ts) == 8
    assert run.history[0]["rollout_nfe"] == 2 * 2 * 7
    with pytest.warns(DeprecationWarning, match=r"Trainer\(steps=...\) is ambiguous"):
        t = rsm.Trainer(policy.copy(), ref, _reward(), "rsm-fo", steps=6)
    assert t.cfg["steps"] == 6
    with pytest.raises(ValueError, match="give iterations= only"):
        rsm.finetune(policy.copy(), ref, _reward(), "rsm-fo", iterations=1, steps=1)
    with pytest.raises(ValueError, match="give sampler_steps= only"):
        rsm.Trainer(policy.copy(), ref, _reward(), "rsm-fo", steps=5, sampler_steps=6)


def test_reward_arity_checked_at_construction():
    def score(x0):
        return np.zeros(len(x0))

    with pytest.raises(TypeError, match=r"reward 'score' takes \(x0\), but rsm calls rewards as reward\(x0, cond\)"
                                        r".*def score\(x0, cond=None\)"):
        rsm.Reward(score)
    policy, ref = make_models()
    with pytest.raises(TypeError, match="takes 1 positional"):
        rsm.finetune(policy.copy(), ref, score, "flow-grpo", iterations=1, progress=False)
    rsm.Reward(lambda x0, cond=None: np.zeros(len(x0)))    # fine
    rsm.Reward(lambda *args: np.zeros(len(args[0])))       # fine

    class Scorer:
        def __call__(self, x0, cond):
            return np.zeros(len(x0))

    rsm.Reward(Scorer())


def test_dtype_error_advice_is_not_numpy_only():
    model = rsm.MLP(2, 8, 1)
    with pytest.raises(TypeError) as info:
        model.forward(np.zeros((3, 2)), 0.5)
    msg = str(info.value)
    assert "float64" in msg and "float32" in msg
    assert "torch" in msg and "numpy" in msg and 'dtype="float64"' in msg
