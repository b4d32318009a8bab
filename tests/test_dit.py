"""The DiT backbone: backward (d params and d x) against central finite differences in float64,
LoRA (adapter gradients, frozen base, merge), gradient checkpointing (identical gradients, less
memory), determinism, sampling and pretraining through the generic entry points, files, bad
input, and (where torch is importable) equality with a torch autograd twin on the same weights.

Finite differences: L = <cotangent, forward(x, t, cond)>; |fd - g| <= atol + rtol |g| with
rtol = 1e-6 and atol = 1e-8 * sum|cot * out| (rounding of L at eps = 1e-6, as in
tests/test_mlp_grad.py). Tiny configs keep the file fast (4x4 images, patch 2, width 8).
"""
from __future__ import annotations

import numpy as np
import pytest

import rsm
from gradcheck import fd_check, fd_params, fd_x, vjp_and_scale


CFG = dict(image_size=4, channels=2, patch=2, width=8, depth=2, heads=2, num_classes=3)


def tiny(dtype="float64", seed=0, **kw):
    return rsm.DiT(**{**CFG, **kw}, seed=seed, dtype=dtype)


def randomize(model, seed, scale=0.5):
    """Random weights everywhere: adaLN-Zero starts with zero gates and output layer, which
    would make most gradients exactly zero and the check weak."""
    rng = np.random.default_rng(seed)
    for view in model.named_params().values():
        fan_in = view.shape[-1] if view.ndim == 2 else 1
        view[...] = rng.normal(0, scale / np.sqrt(fan_in), view.shape)
    return model


def inputs(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + model.image_shape)
    t = rng.uniform(0, 1, n)
    cond = rng.integers(0, model.config["num_classes"] + 1, n)
    cot = rng.normal(size=x.shape)
    return x, t, cond, cot


def assert_fd(fd, g, scale):
    bad = fd_check(fd, g, scale)
    assert bad.size == 0, (bad[:5], np.asarray(fd)[bad][:5], np.asarray(g)[bad][:5])


def sample_index(model, per_tensor=6, seed=0):
    """A few flat indices inside every named tensor (every layer is checked)."""
    rng = np.random.default_rng(seed)
    flat = np.from_dlpack(model.params)
    base = flat.__array_interface__["data"][0]
    index = []
    for view in model.named_params().values():
        start = (view.__array_interface__["data"][0] - base) // flat.itemsize
        index += list(start + rng.choice(view.size, min(per_tensor, view.size), replace=False))
    return np.array(sorted(set(index)))


# ---- the backbone ---------------------------------------------------------------------------

def test_untrained_outputs_zero_and_shapes():
    model = tiny("float32")
    x, t, cond, _ = inputs(model)
    out = model.forward(x.astype(np.float32), t, cond)
    assert out.shape == x.shape and np.all(out == 0)  # adaLN-Zero: output layer and gates are 0
    flat = x.reshape(len(x), -1).astype(np.float32)
    assert np.from_dlpack(model.forward(flat, t)).shape == flat.shape
    assert model.dim == 2 * 4 * 4 and model.cond_dim == 1 and model.dtype == "float32"
    assert model.num_params == np.from_dlpack(model.params).size
    assert sum(v.size for v in model.named_params().values()) == model.num_params


def test_dparams_match_finite_differences():
    model = randomize(tiny(), 1)
    x, t, cond, cot = inputs(model, seed=2)
    dx, dparams, scale = vjp_and_scale(model, x, t, cond, cot)
    index = sample_index(model)
    assert_fd(fd_params(model, x, t, cond, cot, index), dparams[index], scale)
    assert np.abs(dparams[index]).max() > 1e-2


def test_dx_matches_finite_differences():
    model = randomize(tiny(), 3)
    x, t, cond, cot = inputs(model, seed=4)
    dx, _, scale = vjp_and_scale(model, x, t, cond, cot)
    assert dx.shape == x.shape
    assert_fd(fd_x(model, x, t, cond, cot).ravel(), dx.ravel(), scale)


def test_float32_matches_float64():
    m64 = randomize(tiny(), 5)
    m32 = tiny("float32")
    m32.load_params(np.from_dlpack(m64.params).astype(np.float32))
    x, t, cond, cot = inputs(m64, seed=6)
    o64 = np.asarray(m64.forward(x, t, cond))
    o32 = np.asarray(m32.forward(x.astype(np.float32), t, cond))
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-4 * np.abs(o64).max())
    g64 = np.from_dlpack(m64.vjp(x, t, cot, cond)[1])
    g32 = np.from_dlpack(m32.vjp(x.astype(np.float32), t, cot.astype(np.float32), cond)[1])
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4 * np.abs(g64).max())


def test_null_class_is_the_default_and_class_changes_output():
    model = randomize(tiny(), 7)
    x, t, _, _ = inputs(model, seed=8)
    k = CFG["num_classes"]
    np.testing.assert_array_equal(np.asarray(model.forward(x, t)), np.asarray(model.forward(x, t, [k] * 3)))
    assert not np.allclose(np.asarray(model.forward(x, t, [0] * 3)), np.asarray(model.forward(x, t, [1] * 3)))


def test_forward_keep_backward_equals_vjp_and_tokens_expire():
    model = randomize(tiny(), 9)
    x, t, cond, cot = inputs(model, seed=10)
    out, token = model.forward_keep(x, t, cond)
    dx, dp = model.backward(cot, token)
    dx2, dp2 = model.vjp(x, t, cot, cond)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx2))
    np.testing.assert_array_equal(np.from_dlpack(dp), np.from_dlpack(dp2))
    with pytest.raises(RuntimeError, match="gone"):
        model.backward(cot, token)


def test_determinism():
    a, b, c = tiny("float32", seed=4), tiny("float32", seed=4), tiny("float32", seed=5)
    np.testing.assert_array_equal(np.from_dlpack(a.params), np.from_dlpack(b.params))
    assert not np.array_equal(np.from_dlpack(a.params), np.from_dlpack(c.params))
    randomize(a, 1)
    randomize(b, 1)
    x, t, cond, cot = inputs(a, n=5, seed=11)
    x, cot = x.astype(np.float32), cot.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(a.forward(x, t, cond)), np.asarray(b.forward(x, t, cond)))
    np.testing.assert_array_equal(np.from_dlpack(a.vjp(x, t, cot, cond)[1]),
                                  np.from_dlpack(b.vjp(x, t, cot, cond)[1]))


# ---- gradient checkpointing -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_checkpointing_gives_identical_gradients_with_less_memory(dtype):
    model = randomize(tiny(dtype, depth=3), 12)
    x, t, cond, cot = inputs(model, n=4, seed=13)
    x, cot = x.astype(dtype), cot.astype(dtype)
    full = model.vjp(x, t, cot, cond)
    bytes_full = model.activation_bytes(64)
    model.checkpoint = True
    assert model.checkpoint and model.config["checkpoint"]
    ckpt = model.vjp(x, t, cot, cond)
    bytes_ckpt = model.activation_bytes(64)
    np.testing.assert_array_equal(np.asarray(ckpt[0]), np.asarray(full[0]))  # bitwise
    np.testing.assert_array_equal(np.from_dlpack(ckpt[1]), np.from_dlpack(full[1]))
    assert bytes_ckpt < 0.6 * bytes_full
    made = rsm.DiT(**{**CFG, "depth": 3}, dtype=dtype, checkpoint=True)
    assert made.checkpoint and made.activation_bytes(64) == bytes_ckpt


# ---- LoRA -----------------------------------------------------------------------------------

def lora_policy(ref, seed=21, **kw):
    policy = rsm.lora(ref, rank=2, alpha=3.0, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    for view in policy.named_params().values():  # B starts at zero: make the adapters active
        view[...] = rng.normal(0, 0.3, view.shape)
    return policy


def test_lora_starts_equal_to_ref_and_shares_its_weights():
    ref = randomize(tiny(), 14)
    policy = rsm.lora(ref, rank=2)
    assert policy.base is ref and policy.scale == 1.0
    x, t, cond, _ = inputs(ref, seed=15)
    np.testing.assert_array_equal(np.asarray(policy.forward(x, t, cond)), np.asarray(ref.forward(x, t, cond)))
    # A random small, B zero
    named = policy.named_params()
    assert all(np.all(v == 0) for k, v in named.items() if k.endswith("lora_B"))
    assert all(np.abs(v).max() > 0 for k, v in named.items() if k.endswith("lora_A"))
    assert policy.num_params == 2 * (2 * (8 + 24) + 2 * (8 + 8) + 2 * (8 + 32) + 2 * (32 + 8))
    # shared, not copied: a change of the base shows in the policy
    np.from_dlpack(ref.params)[:] *= 1.5
    np.testing.assert_array_equal(np.asarray(policy.forward(x, t, cond)), np.asarray(ref.forward(x, t, cond)))


@pytest.mark.parametrize("targets", [("attn", "mlp"), ("attn",), ("mlp",)])
def test_lora_gradients_match_finite_differences(targets):
    ref = randomize(tiny(), 16)
    policy = lora_policy(ref, targets=targets)
    x, t, cond, cot = inputs(ref, seed=17)
    dx, dparams, scale = vjp_and_scale(policy, x, t, cond, cot)
    assert dparams.shape == (policy.num_params,)
    assert_fd(fd_params(policy, x, t, cond, cot, range(policy.num_params)), dparams, scale)
    # the input VJP goes through base + adapters
    idx = np.random.default_rng(0).choice(x.size, 12, replace=False)
    assert_fd(fd_x(policy, x, t, cond, cot, idx), dx.ravel()[idx], scale)


def test_lora_merge_equals_unmerged_forward():
    ref = randomize(tiny(), 18)
    policy = lora_policy(ref)
    merged = policy.merge()
    assert type(merged) is rsm.DiT and merged.num_params == ref.num_params
    x, t, cond, _ = inputs(ref, seed=19)
    np.testing.assert_allclose(np.asarray(merged.forward(x, t, cond)), np.asarray(policy.forward(x, t, cond)),
                               rtol=1e-12, atol=1e-12)
    assert not np.allclose(np.asarray(merged.forward(x, t, cond)), np.asarray(ref.forward(x, t, cond)))


def test_lora_training_leaves_the_base_bitwise_unchanged():
    ref = tiny("float32")
    randomize(ref, 20)
    before = np.from_dlpack(ref.params).copy()
    policy = rsm.lora(ref, rank=2)
    adapters = np.from_dlpack(policy.params).copy()
    rng = np.random.default_rng(0)
    data = rng.normal(size=(16,) + ref.image_shape).astype(np.float32)
    rsm.pretrain(policy, data, rsm.FlowPath(), steps=5, batch_size=8, lr=1e-2, progress=False,
                 cond=rng.integers(0, 3, 16))
    np.testing.assert_array_equal(np.from_dlpack(ref.params), before)
    assert not np.array_equal(np.from_dlpack(policy.params), adapters)
    # checkpointing a LoRA model gives the same adapter gradients
    x, t, cond, cot = inputs(ref, seed=3)
    x, cot = x.astype(np.float32), cot.astype(np.float32)
    g = np.from_dlpack(policy.vjp(x, t, cot, cond)[1])
    policy.checkpoint = True
    np.testing.assert_array_equal(np.from_dlpack(policy.vjp(x, t, cot, cond)[1]), g)


# ---- generic entry points -------------------------------------------------------------------

@pytest.mark.parametrize("path", [rsm.FlowPath(), rsm.VPPath()], ids=["flow", "vp"])
def test_sample_with_a_dit(path):
    model = randomize(tiny("float32"), 22, scale=0.2)
    x = np.from_dlpack(rsm.sample(model, 5, path, "ode", steps=4, seed=1))
    assert x.shape == (5, model.dim) and np.all(np.isfinite(x))
    xc = np.from_dlpack(rsm.sample(model, 5, path, "sde", steps=4, seed=1, cond=[0, 1, 2, 3, 0]))
    assert xc.shape == (5, model.dim) and not np.array_equal(xc, x)
    tr = rsm.sample(model, 2, path, "sde" if path.kind == "flow" else "ddpm", steps=3, seed=2,
                    cond=[1, 2], return_trajectory=True)
    assert tr.xs.shape == (4, 2, model.dim)


def test_pretrain_lowers_the_loss():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    # two classes of 4x4 two-channel images: a bright left half or a bright top half
    images = np.full((64, 2, 4, 4), -0.5, np.float32)
    for i, y in enumerate(labels):
        if y == 0:
            images[i, :, :, :2] = 0.8
        else:
            images[i, :, :2, :] = 0.8
    model = rsm.DiT(**CFG, seed=0)
    history = rsm.pretrain(model, images, rsm.FlowPath(), steps=150, batch_size=32, lr=3e-3,
                           progress=False, cond=labels)
    losses = history.column("loss")
    assert losses[-20:].mean() < 0.7 * losses[:10].mean()


# ---- files ----------------------------------------------------------------------------------

def test_save_and_load(tmp_path):
    model = randomize(tiny("float32", checkpoint=True), 23)
    model.save(str(tmp_path / "dit.safetensors"))
    back = rsm.load(str(tmp_path / "dit.safetensors"))
    assert type(back) is rsm.DiT and back.config == model.config
    np.testing.assert_array_equal(np.from_dlpack(back.params), np.from_dlpack(model.params))
    policy = lora_policy(model)
    policy.save(str(tmp_path / "lora.safetensors"))
    again = rsm.load(str(tmp_path / "lora.safetensors"))
    assert isinstance(again, rsm.LoRADiT) and again.rank == 2 and again.alpha == 3.0
    np.testing.assert_array_equal(np.from_dlpack(again.params), np.from_dlpack(policy.params))
    np.testing.assert_array_equal(np.from_dlpack(again.base.params), np.from_dlpack(model.params))
    copy = policy.copy()
    np.testing.assert_array_equal(np.from_dlpack(copy.params), np.from_dlpack(policy.params))
    assert copy.base is model


# ---- bad input ------------------------------------------------------------------------------

def test_bad_construction():
    with pytest.raises(ValueError, match="image_size=6 is not divisible by patch=4"):
        rsm.DiT(6, 1, 4, 8, 1, 2, 2)
    with pytest.raises(ValueError, match="heads=3 does not divide width=8"):
        rsm.DiT(4, 1, 2, 8, 1, 3, 2)
    with pytest.raises(ValueError, match="dtype"):
        rsm.DiT(4, 1, 2, 8, 1, 2, 2, dtype="float16")
    with pytest.raises(TypeError, match="width"):
        rsm.DiT(4, 1, 2, 8.0, 1, 2, 2)
    with pytest.raises(TypeError, match="ref"):
        rsm.lora(rsm.MLP(2), rank=2)
    with pytest.raises(ValueError, match="targets"):
        rsm.lora(tiny(), rank=2, targets=("conv",))
    with pytest.raises(ValueError, match="rank"):
        rsm.lora(tiny(), rank=0)


def test_bad_inputs_name_the_argument_and_change_nothing():
    model = randomize(tiny(), 24)
    before = np.from_dlpack(model.params).copy()
    x, t, cond, cot = inputs(model, seed=25)
    with pytest.raises(ValueError, match=r"cond\[1\]=4 is not a class id"):
        model.forward(x, t, [0, 4, 1])
    with pytest.raises(ValueError, match=r"cond\[0\]=0.5 is not a class id"):
        model.forward(x, t, [0.5, 1, 1])
    with pytest.raises(ValueError, match="cond must have shape"):
        model.forward(x, t, [0, 1])
    with pytest.raises(ValueError, match="x must have shape"):
        model.forward(x[:, :1], t, cond)
    with pytest.raises(ValueError, match="x must have shape"):
        model.forward(x.reshape(3, -1)[:, :5], t, cond)
    with pytest.raises(ValueError, match="cotangent"):
        model.vjp(x.reshape(3, -1), t, cot.reshape(3, -1)[:, :4], cond)
    with pytest.raises(ValueError, match=r"t\[0\]"):
        model.forward(x, [2.0, 0.1, 0.1], cond)
    with pytest.raises(ValueError, match="cond"):
        rsm.sample(model, 3, rsm.FlowPath(), steps=2, cond=[0, 9, 1])
    # the C core checks class ids too (what samplers and the Trainer hand it)
    with pytest.raises(ValueError, match="cond"):
        model._core.forward(x.reshape(3, -1), t, np.array([[0.0], [3.5], [1.0]]))
    np.testing.assert_array_equal(np.from_dlpack(model.params), before)


# ---- torch twin -----------------------------------------------------------------------------

def test_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from dit_twin import TorchDiT

    model = randomize(tiny(), 26)
    twin = TorchDiT.from_rsm(model, torch.float64)
    x, t, cond, cot = inputs(model, seed=27)
    xt = torch.tensor(x, requires_grad=True)
    out = twin(xt, torch.tensor(t), torch.tensor(cond))
    np.testing.assert_allclose(out.detach().numpy(), np.asarray(model.forward(x, t, cond)), rtol=1e-10, atol=1e-12)
    (out * torch.tensor(cot)).sum().backward()
    dx, dparams = model.vjp(x, t, cot, cond)
    np.testing.assert_allclose(xt.grad.numpy(), np.asarray(dx), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(twin.flat_grad().numpy(), np.from_dlpack(dparams), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["rsm-zo", "rsm-fo", "flow-grpo"])
def test_finetune_a_lora_dit_runs_unchanged(method):
    """The Trainer drives a LoRA DiT through the same calls as an MLP (class ids as cond [B, 1]);
    the frozen base stays bitwise unchanged while the adapters move."""
    ref = randomize(tiny("float32"), 28, scale=0.2)
    before = np.from_dlpack(ref.params).copy()
    policy = rsm.lora(ref, rank=2)
    adapters = np.from_dlpack(policy.params).copy()
    reward = rsm.Reward(lambda x, c: (-np.sum(np.asarray(x) ** 2, 1), -2 * np.asarray(x)), differentiable=True)
    run = rsm.finetune(policy, ref, reward, method=method, iterations=2, batch_size=2, group_size=2,
                       cond=np.array([[0.0], [2.0]]), progress=False)
    assert len(run.history) == 2 and np.isfinite(run.history[-1]["reward_mean"])
    np.testing.assert_array_equal(np.from_dlpack(ref.params), before)
    assert not np.array_equal(np.from_dlpack(policy.params), adapters)
