"""Hostile input (issue 16): one test per defect class. Each asserts the exception class, that the
message names the argument (or the file and the field), and that the model / optimizer state is
bitwise unchanged by the refused call. The fuzz harness (tests/test_fuzz.py) covers the same entry
points with random inputs; the crafted files here are also in tests/fuzz_corpus/."""
import json
import os
import struct
import sys

import numpy as np
import pytest

import rsm
from rsm import _C
from rsm.io import CheckpointError
from rsm.rewards import RewardError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_harness as fh  # noqa: E402  (the capsule builder and file helpers)

BIG = [2**40 + 1, 2**62, 2**63 - 1]


def state_bytes(model, opt=None):
    out = [np.from_dlpack(model.params).tobytes()]
    if opt is not None:
        s = opt.state_dict()
        out += [s["m"].tobytes(), s["v"].tobytes(), s.get("ema", np.zeros(0)).tobytes(), str(s["step"])]
    return out


def trained(model, ema=0.9):
    opt = rsm.AdamW(model, lr=1e-2, ema_decay=ema)
    opt.step(np.linspace(-1, 1, model.num_params).astype(model.dtype))
    return opt


# ---- 1. every size overflow-checked, bounded, the argument named ----------------------------


@pytest.mark.parametrize("value", BIG)
@pytest.mark.parametrize("name", ["dim", "hidden", "depth", "cond_dim", "temb_dim"])
def test_mlp_sizes(name, value):
    kwargs = {"dim": 2, "hidden": 8, "depth": 1, name: value}
    with pytest.raises(ValueError, match=name):
        rsm.MLP(**kwargs)


def test_mlp_parameter_count_bound_names_the_arguments():
    # each size is below the bound, their product is not: refused before any allocation
    with pytest.raises(ValueError, match=r"hidden=1073741824.*more than 2\^40 parameters"):
        rsm.MLP(2, hidden=2**30)
    with pytest.raises(ValueError, match=r"depth"):
        rsm.MLP(1, 1, depth=2**38)  # 2**62 wrapped the count to 68 before; now counted exactly


def test_int_sizes_beyond_int64_name_the_argument():
    with pytest.raises(ValueError, match="hidden"):
        rsm.MLP(2, hidden=2**64)
    with pytest.raises(ValueError, match="depth"):
        rsm.DiT(8, 1, 2, 8, 2**70, 2, 10)


@pytest.mark.parametrize("name,value", [("depth", 2**62), ("image_size", 2**31), ("temb_dim", 2**62),
                                        ("num_classes", 2**62), ("width", 2**40), ("channels", 2**40)])
def test_dit_sizes(name, value):
    kwargs = dict(image_size=4, channels=1, patch=2, width=8, depth=1, heads=2, num_classes=3)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        rsm.DiT(**kwargs)


def test_dit_layout_is_checked_in_the_core():
    # the binding passes sizes through; the C layout refuses (the message comes from csrc/checked.h)
    with pytest.raises(ValueError, match=r"image_size=2147483648.*2\^40"):
        _C.DiTCore(2**31, 1, 1, 8, 1, 2, 10, 64, "float32", 0, False)
    with pytest.raises(ValueError, match=r"num_classes.*2\^40"):
        _C.DiTCore(4, 1, 2, 2**20, 1, 2, 2**20, 64, "float32", 0, False)


def test_lora_rank():
    base = rsm.DiT(4, 1, 2, 8, 1, 2, 3)
    before = state_bytes(base)
    for rank in (2**62, 2**40):
        with pytest.raises(ValueError, match="rank"):
            rsm.lora(base, rank=rank)
    with pytest.raises(ValueError, match="rank"):  # in the core too: rank * width overflows the bound
        _C.DiTCore(base=base._core, rank=2**38, alpha=1.0, targets=["attn", "mlp"], seed=0)
    assert state_bytes(base) == before


def test_dit_activation_rows():
    model = rsm.DiT(4, 1, 2, 8, 1, 2, 3)
    assert model.activation_bytes(2) > 0
    with pytest.raises(ValueError, match="n="):
        model.activation_bytes(2**39)


@pytest.mark.parametrize("kwargs,name", [
    (dict(n=4, branch_steps=[0, 1], branch_factor=2**31), "branch_factor"),
    (dict(n=4, branch_steps=[0, 1, 2], branch_factor=2**20), "branch_factor"),
    (dict(n=2**40), "n"),
])
def test_sample_row_count(kwargs, name):
    model = rsm.MLP(2, hidden=8, depth=1)
    before = state_bytes(model)
    n = kwargs.pop("n")
    sampler = "sde" if "branch_steps" in kwargs else "ode"
    with pytest.raises(ValueError, match=name):
        rsm.sample(model, n, rsm.FlowPath(), sampler, steps=4, **kwargs)
    assert state_bytes(model) == before


def test_branch_rollout_budget():
    model = rsm.MLP(2, hidden=8, depth=1)
    ts = np.linspace(1, 0, 5)
    with pytest.raises(ValueError, match="budget"):
        _C.branch_rollout(model._core, rsm.FlowPath()._core, ts, 4, "euler", "sde",
                          np.array([2**40, 2**40, 0, 0], dtype=np.int64), np.arange(4, dtype=np.uint64),
                          seed=0, root_eta=0.0, branch_eta=0.0, noise_level=0.7, pcpo_weight=0.0)


@pytest.mark.parametrize("batch_size", [2**40, 2**61, 2**62])
def test_pretrain_batch_size(batch_size):
    model = rsm.MLP(2, hidden=8, depth=1)
    opt = trained(model)
    before = state_bytes(model, opt)
    data = np.zeros((16, 2), np.float32)
    with pytest.raises(ValueError, match="batch_size"):
        rsm.pretrain(model, data, rsm.FlowPath(), steps=1, batch_size=batch_size, optimizer=opt, progress=False)
    assert state_bytes(model, opt) == before


# ---- 2. the DLPack importer checks every field it can ---------------------------------------


@pytest.mark.parametrize("desc,field", [
    ({"ndim": 2, "shape": [2, 2], "shape_null": True}, "shape is NULL"),
    ({"versioned": False, "ndim": 1, "shape": [4], "shape_null": True}, "shape is NULL"),
    ({"ndim": 2, "shape": [2, 2], "data_null": True}, "data is NULL"),
    ({"ndim": 2, "shape": [-2, 3]}, r"shape\[0\]=-2"),
    ({"ndim": 3, "shape": [2**20, 2**20, 2**31]}, r"shape\[2\]"),
    ({"ndim": 2, "shape": [2**63 - 1, 2]}, r"shape\[0\]"),
    ({"ndim": 65, "shape": [1] * 65}, "ndim=65"),
    ({"ndim": -1, "shape": [1]}, "ndim=-1"),
    ({"ndim": 2, "shape": [2, 2], "strides": [2**62, 1]}, r"strides\[0\]"),
    ({"ndim": 2, "shape": [2, 2], "strides": [-2**63, 1]}, r"strides\[0\]"),
    ({"ndim": 1, "shape": [4], "byte_offset": 2**64 - 1}, "byte_offset"),
])
def test_dlpack_importer_refuses(desc, field):
    cap = fh.Capsule(desc)
    with pytest.raises(BufferError, match=field) as info:
        rsm.from_dlpack(cap.capsule())
    assert "obj" in str(info.value)


def test_dlpack_importer_accepts_what_is_valid():
    cap = fh.Capsule({"ndim": 2, "shape": [0, 3], "data_null": True})  # empty: data never read
    assert rsm.from_dlpack(cap.capsule()).shape == (0, 3)
    cap2 = fh.Capsule({"ndim": 2, "shape": [3, 4], "strides": [8, 2], "code": 2, "bits": 32})
    t = rsm.from_dlpack(cap2.capsule())
    assert t.shape == (3, 4) and t.strides == (8, 2)
    assert np.from_dlpack(t.copy()).shape == (3, 4)
    del t  # the tensor calls the producer's deleter: before the producer (cap2) goes


# ---- 3. validate, then commit: files ----------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    return fh.seed_files(str(d))


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def with_config(data, key, raw, meta_key="config"):
    header, body = fh.split_file(data)
    config = json.loads(header["__metadata__"][meta_key])
    config[key] = fh.PLACEHOLDER
    header["__metadata__"][meta_key] = json.dumps(config).replace(f'"{fh.PLACEHOLDER}"', raw)
    return fh.join_file(json.dumps(header), body)


def with_meta(data, key, value):
    header, body = fh.split_file(data)
    header["__metadata__"][key] = value
    return fh.join_file(json.dumps(header), body)


@pytest.mark.parametrize("which,key,value", [
    (0, "hidden", 2**62), (0, "depth", 2**62), (0, "temb_dim", 2**62), (0, "depth", 10**6), (0, "dim", -1),
    (1, "depth", 2**62), (1, "image_size", 2**31), (1, "temb_dim", 2**62), (1, "num_classes", 2**62),
])
def test_load_hostile_config(tmp_path, files, which, key, value, monkeypatch):
    """A ~1 KB file whose config describes a huge model: refused before any model is built."""
    built = []
    for cls in (rsm.MLP, rsm.DiT):
        init = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _init=init, **k: (built.append(1), _init(self, *a, **k))[1])
    path = write(tmp_path, "m.safetensors", with_config(files["safetensors"][which], key, str(value)))
    with pytest.raises(CheckpointError, match=key) as info:
        rsm.load(path)
    assert path in str(info.value)
    assert built == []


def test_load_hostile_lora_rank(tmp_path, files):
    path = write(tmp_path, "l.safetensors", with_config(files["safetensors"][2], "rank", str(2**62), "lora"))
    with pytest.raises(CheckpointError, match="rank"):
        rsm.load(path)


@pytest.mark.parametrize("raw,field", [("[" * 1000 + "]" * 1000, "deeper"), ("[" * 100000 + "]" * 100000, "bytes long"), ("9" * 5000, "not valid JSON"),
                                       ("NaN", "not valid JSON"), ("8.0", "hidden")])
def test_load_hostile_config_json(tmp_path, files, raw, field):
    path = write(tmp_path, "m.safetensors", with_config(files["safetensors"][0], "hidden", raw))
    with pytest.raises(CheckpointError, match=field) as info:
        rsm.load(path)
    assert path in str(info.value) and "config" in str(info.value)


def test_load_hostile_header(tmp_path, files):
    mlp = files["safetensors"][0]
    header, body = fh.split_file(mlp)
    cases = {
        "deep": (fh.join_file("[" * 100000 + "]" * 100000, b""), "header"),
        "beyond": (struct.pack("<Q", 2**40) + mlp[8:], "header length"),
        "dims65": (None, "input.bias"),
        "huge_dim": (None, "input.bias"),
        "seed": (with_meta(mlp, "seed", str(2**64)), "seed"),
    }
    for name, shape in (("dims65", [1] * 65), ("huge_dim", [0, 2**70])):
        h = json.loads(json.dumps(header))
        h["input.bias"]["shape"] = shape
        cases[name] = (fh.join_file(json.dumps(h), body), "input.bias")
    for name, (data, field) in cases.items():
        path = write(tmp_path, f"{name}.safetensors", data)
        with pytest.raises(CheckpointError, match=field) as info:
            rsm.load(path)
        assert path in str(info.value), name


def test_load_refuses_non_regular_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        rsm.load("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):  # and does not block
        rsm.load(str(fifo))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_load_refuses_nan_weights(tmp_path, files, index):
    """MLP files are checked like DiT files (every class, every tensor)."""
    header, body = fh.split_file(files["safetensors"][index])
    name = sorted(k for k in header if k != "__metadata__")[0]
    b = bytearray(body)
    b[header[name]["data_offsets"][0]:header[name]["data_offsets"][0] + 4] = struct.pack("<f", float("nan"))
    path = write(tmp_path, "nan.safetensors", fh.join_file(json.dumps(header), bytes(b)))
    with pytest.raises(CheckpointError, match="NaN"):
        rsm.load(path)


def test_load_refuses_int_and_complex_tensors(tmp_path, files):
    header, body = fh.split_file(files["safetensors"][0])
    h = json.loads(json.dumps(header))
    h["input.bias"]["dtype"] = "I32"
    path = write(tmp_path, "int.safetensors", fh.join_file(json.dumps(h), body))
    with pytest.raises(CheckpointError, match="input.bias"):
        rsm.load(path)


def test_load_refuses_tensors_the_config_does_not_describe(tmp_path, files):
    model = rsm.MLP(2, hidden=8, depth=1, seed=3)
    tensors = {k: v.copy() for k, v in model.named_params().items()}
    tensors["blocks.7.linear1.bias"] = np.zeros(8, np.float32)
    meta = {"rsm_class": "MLP", "config": json.dumps(model.config), "seed": "3"}
    path = str(tmp_path / "extra.safetensors")
    rsm.io.save_file(tensors, path, metadata=meta)
    with pytest.raises(CheckpointError, match="blocks.7"):
        rsm.load(path)


# ---- 3b. validate, then commit: checkpoints and state dicts -----------------------------------


@pytest.mark.parametrize("key,value", [("optimizer_step", 2**63), ("optimizer_step", 2**64), ("optimizer_step", -1),
                                       ("step", 2**64), ("optimizer_step", "1e3")])
def test_checkpoint_step_out_of_range_changes_nothing(tmp_path, files, key, value):
    path = write(tmp_path, "c.ckpt", with_meta(files["checkpoint"][0], key, str(value)))
    model = rsm.MLP(2, hidden=8, depth=1, seed=11)
    opt = trained(model)
    before = state_bytes(model, opt)
    with pytest.raises(CheckpointError, match=key) as info:
        rsm.load_checkpoint(path, model, opt)
    assert path in str(info.value)
    assert state_bytes(model, opt) == before


@pytest.mark.parametrize("tensor,value,field", [("optimizer.m", float("nan"), "optimizer.m"),
                                                ("optimizer.v", -1.0, "second moment"),
                                                ("model.output.bias", float("inf"), "output.bias")])
def test_checkpoint_bad_tensor_changes_nothing(tmp_path, files, tensor, value, field):
    header, body = fh.split_file(files["checkpoint"][0])
    b = bytearray(body)
    begin = header[tensor]["data_offsets"][0]
    b[begin:begin + 4] = struct.pack("<f", value)
    path = write(tmp_path, "c.ckpt", fh.join_file(json.dumps(header), bytes(b)))
    model = rsm.MLP(2, hidden=8, depth=1, seed=11)
    opt = trained(model)
    before = state_bytes(model, opt)
    with pytest.raises(CheckpointError, match=field):
        rsm.load_checkpoint(path, model, opt)
    assert state_bytes(model, opt) == before


def test_checkpoint_loads_when_valid(tmp_path, files):
    path = write(tmp_path, "c.ckpt", files["checkpoint"][0])
    model = rsm.MLP(2, hidden=8, depth=1, seed=11)
    opt = trained(model, ema=0.9)
    rsm.load_checkpoint(path, model, opt)
    assert opt.step_count == 1


def test_checkpoint_optimizer_of_another_model(tmp_path, files):
    path = write(tmp_path, "c.ckpt", files["checkpoint"][0])
    model, other = rsm.MLP(2, hidden=8, depth=1, seed=11), rsm.MLP(2, hidden=8, depth=1, seed=12)
    opt = trained(other)
    before = state_bytes(model) + state_bytes(other, opt)
    with pytest.raises(ValueError, match="optimizer"):
        rsm.load_checkpoint(path, model, opt)
    assert state_bytes(model) + state_bytes(other, opt) == before


@pytest.mark.parametrize("patch,exc,field", [
    ({"step": 2**64}, ValueError, "step"), ({"step": 2**63}, ValueError, "step"), ({"step": -1}, ValueError, "step"),
    ({"step": 1.0}, ValueError, "step"), ({"step": True}, ValueError, "step"),
    ({"m": "m"}, TypeError, "m"), ({"m": None}, TypeError, "m"),
    ({"v": -np.ones(1)}, ValueError, "v"),
    ({"ema": np.full(1, 1e300)}, ValueError, "ema"),
])
def test_load_state_dict_refuses_and_changes_nothing(patch, exc, field):
    model = rsm.MLP(2, hidden=8, depth=1)
    opt = trained(model)
    state = opt.state_dict()
    for key, value in patch.items():
        if isinstance(value, np.ndarray) and value.shape == (1,):
            value = np.broadcast_to(value, state[key].shape).astype(np.float64)
        state[key] = value
    before = state_bytes(model, opt)
    with pytest.raises(exc, match=field):
        opt.load_state_dict(state)
    assert state_bytes(model, opt) == before
    complex_state = dict(opt.state_dict(), m=opt.state_dict()["m"].astype(np.complex64))
    with pytest.raises(TypeError, match="m"):
        opt.load_state_dict(complex_state)
    assert state_bytes(model, opt) == before


@pytest.mark.parametrize("make", ["mlp", "dit", "lora"])
def test_load_params_refuses_and_changes_nothing(make):
    base = rsm.DiT(4, 1, 2, 8, 1, 2, 3)
    model = {"mlp": lambda: rsm.MLP(2, hidden=8, depth=1), "dit": lambda: base,
             "lora": lambda: rsm.lora(base, rank=2)}[make]()
    n = model.num_params
    before = state_bytes(model)
    with pytest.raises(ValueError, match="params"):
        model.load_params(np.full(n, 1e300))         # finite in float64, inf in float32
    with pytest.raises(TypeError, match="params"):
        model.load_params(np.ones(n, np.complex128))  # would lose its imaginary part
    with pytest.raises(TypeError, match="params"):
        model.load_params(np.array(["x"] * n))
    with pytest.raises(ValueError, match="params"):
        model.load_params(np.ones(n + 1))
    assert state_bytes(model) == before
    model.load_params(np.arange(n, dtype=np.int64) % 3)  # ints are real numbers
    assert np.array_equal(np.from_dlpack(model.params), (np.arange(n) % 3).astype(np.float32))


def test_load_params_float64_model_keeps_large_values():
    model = rsm.MLP(2, hidden=8, depth=1, dtype="float64")
    model.load_params(np.full(model.num_params, 1e300))
    assert np.all(np.from_dlpack(model.params) == 1e300)


# ---- 4. seeds, rewards, pretrain's up-front checks ----------------------------------------------


BAD_SEEDS = [(2**64, ValueError), (2**64 + 5, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
             ("0", TypeError), (None, TypeError), (np.float64(3.0), TypeError)]


@pytest.mark.parametrize("seed,exc", BAD_SEEDS)
def test_seeds_everywhere(seed, exc):
    model = rsm.MLP(2, hidden=8, depth=1)
    opt = trained(model)
    before = state_bytes(model, opt)
    calls = {
        "MLP": lambda: rsm.MLP(2, seed=seed),
        "DiT": lambda: rsm.DiT(4, 1, 2, 8, 1, 2, 3, seed=seed),
        "lora": lambda: rsm.lora(rsm.DiT(4, 1, 2, 8, 1, 2, 3), seed=seed),
        "sample": lambda: rsm.sample(model, 2, rsm.FlowPath(), steps=2, seed=seed),
        "pretrain": lambda: rsm.pretrain(model, np.zeros((4, 2), np.float32), rsm.FlowPath(), steps=1,
                                         batch_size=2, seed=seed, optimizer=opt, progress=False),
        "Trainer": lambda: rsm.Trainer(model, model.copy(), lambda x, c=None: -np.sum(x**2, 1), seed=seed,
                                       batch_size=2, group_size=2),
        "finetune": lambda: rsm.finetune(model, model.copy(), lambda x, c=None: -np.sum(x**2, 1), iterations=1,
                                         seed=seed, batch_size=2, group_size=2, progress=False),
        "sample": lambda: rsm.datasets.get("two_moons").sample(4, seed=seed),
    }
    for func, call in calls.items():
        with pytest.raises(exc, match="seed") as info:
            call()
        named = {"finetune": "Trainer", "lora": "lora"}.get(func, func)  # finetune builds a Trainer
        assert f"{named}()" in str(info.value), (func, str(info.value))
    assert state_bytes(model, opt) == before


def test_seed_upper_end_is_valid_and_distinct():
    a = np.from_dlpack(rsm.sample(rsm.MLP(2, hidden=8, depth=1, seed=1), 3, rsm.FlowPath(), "sde", steps=3,
                                  seed=2**64 - 1))
    b = np.from_dlpack(rsm.sample(rsm.MLP(2, hidden=8, depth=1, seed=1), 3, rsm.FlowPath(), "sde", steps=3,
                                  seed=2**63 - 1))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("ret,match", [
    (lambda n, d: (np.zeros(n), None), "grad=None"),
    (lambda n, d: (np.zeros(n), np.zeros((n, d), np.complex128)), "grad of dtype complex"),
    (lambda n, d: (np.zeros(n), np.zeros((n, d + 1))), "grad of shape"),
    (lambda n, d: (np.zeros(n), np.full((n, d), np.nan)), "non-finite"),
    (lambda n, d: (np.zeros(n, np.complex64), np.zeros((n, d))), "rewards of dtype complex"),
    (lambda n, d: np.zeros(n), "must return \\(rewards, grad\\)"),
])
def test_differentiable_reward_validated_like_black_box(ret, match):
    reward = rsm.Reward(lambda x, c=None: ret(x.shape[0], x.shape[1]), differentiable=True, name="myreward")
    with pytest.raises(RewardError, match=match) as info:
        reward(np.zeros((3, 2)))
    assert "myreward" in str(info.value)


def test_pretrain_refuses_an_optimizer_of_another_model_before_training():
    model, other = rsm.MLP(2, hidden=8, depth=1, seed=1), rsm.MLP(2, hidden=8, depth=1, seed=2)
    opt = trained(other)  # same shape, other model: identity is checked, not shape
    before = state_bytes(model) + state_bytes(other, opt)
    with pytest.raises(ValueError, match="optimizer"):
        rsm.pretrain(model, np.zeros((8, 2), np.float32), rsm.FlowPath(), steps=2, batch_size=4,
                     optimizer=opt, progress=False)
    assert state_bytes(model) + state_bytes(other, opt) == before


def test_pretrain_checks_the_checkpoint_path_before_training(tmp_path):
    model = rsm.MLP(2, hidden=8, depth=1, seed=1)
    before = state_bytes(model)
    for bad in (str(tmp_path / "missing" / "c.ckpt"), str(tmp_path)):
        with pytest.raises((OSError, ValueError), match="checkpoint"):
            rsm.pretrain(model, np.zeros((8, 2), np.float32), rsm.FlowPath(), steps=2, batch_size=4,
                         checkpoint=bad, progress=False)
    assert state_bytes(model) == before
    assert os.listdir(tmp_path) == []  # the probe file was removed


# ---- 3c. validate, then commit: trainer files (Trainer.load / resume) ----------------------------


def test_trainer_file_hostile_metadata_changes_nothing(tmp_path):
    """A trainer file with an out-of-range optimizer step, counters of the wrong kind or deeply
    nested metadata is refused before the policy or the optimizer is touched."""
    from toy_models import make_models

    policy, ref = make_models()
    reward = rsm.rewards.quadratic([0.0, 0.0])
    opts = dict(batch_size=4, group_size=4, seed=3, kl_every=0, progress=False)
    good = tmp_path / "run.safetensors"
    run = rsm.finetune(policy.copy(), ref, reward, "flow-grpo", iterations=1, save_path=good, **opts)
    trainer = run.trainer
    data = good.read_bytes()
    header, body = fh.split_file(data)
    info = json.loads(header["__metadata__"]["trainer"])
    cases = {}
    for key, value in (("optimizer_step", 2**64), ("optimizer_step", "7"), ("iteration", -1), ("iteration", 1.5)):
        bad = dict(info, **{key: value})
        cases[f"{key}={value!r}"] = (with_meta(data, "trainer", json.dumps(bad)), (ValueError, TypeError), key)
    cases["deep history"] = (with_meta(data, "history", "[" * 1000 + "]" * 1000), CheckpointError, "history")
    cases["no method"] = (with_meta(data, "trainer", json.dumps({k: v for k, v in info.items() if k != "method"})),
                          CheckpointError, "method")
    before = state_bytes(trainer.policy, trainer.optimizer)
    for name, (payload, exc, field) in cases.items():
        path = write(tmp_path, "bad.safetensors", payload)
        with pytest.raises(exc, match=field):
            rsm.runs.restore(trainer, path)
        assert state_bytes(trainer.policy, trainer.optimizer) == before, name
        assert trainer.iteration == 1, name
