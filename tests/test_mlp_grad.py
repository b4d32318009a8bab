"""The MLP backward (MLP.vjp) against central finite differences in float64, float32 against
float64, and (where torch is importable) forward and backward against torch autograd.

The scalar checked is L(params, x) = <cotangent, forward(x, t, cond)>, whose gradients are exactly
what vjp returns: dparams = dL/dparams and dx = dL/dx.

The finite differences and their tolerance are tests/gradcheck.py's.
"""
from __future__ import annotations

import numpy as np
import pytest

import rsm
from gradcheck import fd_check, fd_direction, fd_params, fd_x, vjp_and_scale


def randomize(model, seed, scale=0.5):
    """Random weights everywhere (the output layer starts at zero, which would hide every
    gradient but the output layer's); each matrix scaled by 1/sqrt(fan_in)."""
    rng = np.random.default_rng(seed)
    for name, view in model.named_params().items():
        fan_in = view.shape[1] if view.ndim == 2 else 1
        view[...] = rng.normal(0, scale / np.sqrt(fan_in), view.shape)
    return model


def inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, model.dim))
    t = rng.uniform(0.0, 1.0, n)
    cond = rng.normal(size=(n, model.cond_dim)) if model.cond_dim else None
    cot = rng.normal(size=(n, model.dim))
    return x, t, cond, cot


def tiny():
    return randomize(rsm.MLP(2, 8, 2, cond_dim=3, seed=0, temb_dim=8, dtype="float64"), seed=1)


def bigger():
    return randomize(rsm.MLP(2, 64, 3, cond_dim=3, seed=0, temb_dim=16, dtype="float64"), seed=2)


def test_every_parameter_tiny_model():
    model = tiny()
    x, t, cond, cot = inputs(model, 5, 3)
    dx, dp, scale = vjp_and_scale(model, x, t, cond, cot)
    fd = fd_params(model, x, t, cond, cot)
    assert fd.shape == dp.shape == (model.num_params,)
    bad = fd_check(fd, dp, scale)
    assert bad.size == 0, f"{bad.size} parameters off, e.g. {bad[:5]}: fd {fd[bad[:5]]} vs {dp[bad[:5]]}"
    # every named block carries gradient (nothing trivially zero)
    flat_grad = dp.copy()
    for name, view in model.named_params().items():
        off = view.__array_interface__["data"][0] - np.from_dlpack(model.params).__array_interface__["data"][0]
        sl = slice(off // 8, off // 8 + view.size)
        assert np.any(flat_grad[sl] != 0), name


def test_input_vjp_tiny_model():
    model = tiny()
    x, t, cond, cot = inputs(model, 6, 4)
    dx, _, scale = vjp_and_scale(model, x, t, cond, cot)
    fd = fd_x(model, x, t, cond, cot)
    assert fd_check(fd.ravel(), dx.ravel(), scale).size == 0


def test_random_directions_bigger_model():
    model = bigger()
    x, t, cond, cot = inputs(model, 16, 5)
    dx, dp, scale = vjp_and_scale(model, x, t, cond, cot)
    rng = np.random.default_rng(6)
    for _ in range(8):
        d = rng.normal(size=model.num_params)
        d /= np.linalg.norm(d)
        fd = fd_direction(model, x, t, cond, cot, d)
        assert fd_check([fd], [dp @ d], scale).size == 0, (fd, dp @ d)
    fdx = fd_x(model, x, t, cond, cot)
    assert fd_check(fdx.ravel(), dx.ravel(), scale).size == 0
    # a few single coordinates too, spread over the layers
    idx = rng.choice(model.num_params, 40, replace=False)
    assert fd_check(fd_params(model, x, t, cond, cot, idx), dp[idx], scale).size == 0


def test_unconditional_and_depth0():
    for model in (randomize(rsm.MLP(3, 8, 2, seed=0, temb_dim=4, dtype="float64"), 7),
                  randomize(rsm.MLP(2, 8, 0, cond_dim=1, seed=0, temb_dim=4, dtype="float64"), 8)):
        x, t, cond, cot = inputs(model, 4, 9)
        dx, dp, scale = vjp_and_scale(model, x, t, cond, cot)
        assert fd_check(fd_params(model, x, t, cond, cot), dp, scale).size == 0
        assert fd_check(fd_x(model, x, t, cond, cot).ravel(), dx.ravel(), scale).size == 0


def test_vjp_is_linear_in_the_cotangent_and_batches_add():
    model = tiny()
    x, t, cond, cot = inputs(model, 6, 10)
    _, dp = model.vjp(x, t, cot, cond)
    _, dp2 = model.vjp(x, t, 2.5 * cot, cond)
    np.testing.assert_allclose(np.from_dlpack(dp2), 2.5 * np.from_dlpack(dp), rtol=1e-13, atol=1e-15)
    # dparams sums over rows: the two halves add up to the whole
    _, a = model.vjp(x[:3], t[:3], cot[:3], cond[:3])
    _, b = model.vjp(x[3:], t[3:], cot[3:], cond[3:])
    np.testing.assert_allclose(np.from_dlpack(a) + np.from_dlpack(b), np.from_dlpack(dp), rtol=1e-12, atol=1e-14)


def test_forward_and_vjp_output_equals_forward():
    model = tiny()
    x, t, cond, cot = inputs(model, 5, 11)
    out, dx, dp = model.forward_and_vjp(x, t, cot, cond)
    assert np.from_dlpack(out).tobytes() == np.from_dlpack(model.forward(x, t, cond)).tobytes()


def test_corrupted_gradient_is_detected():
    """The checker can fail: drop one term of the backward (a block of dparams) and it notices."""
    model = tiny()
    x, t, cond, cot = inputs(model, 5, 3)
    dx, dp, scale = vjp_and_scale(model, x, t, cond, cot)
    fd = fd_params(model, x, t, cond, cot)
    assert fd_check(fd, dp, scale).size == 0
    lay = model._core.layout
    h = model.config["hidden"]
    o = lay["block0"] + lay["block_size"]  # blocks.1.linear1.weight
    for sl in (slice(o, o + h * h), slice(lay["in_b"], lay["block0"]), slice(lay["out_b"], lay["num_params"])):
        bad = dp.copy()
        bad[sl] = 0.0
        assert fd_check(fd, bad, scale).size > 0, sl
    # and so is a small relative error (1e-4) in a single entry
    bad = dp.copy()
    k = int(np.argmax(np.abs(dp)))
    bad[k] *= 1 + 1e-4
    assert list(fd_check(fd, bad, scale)) == [k]
    # and in dx
    fdx = fd_x(model, x, t, cond, cot).ravel()
    bad_dx = dx.ravel().copy()
    bad_dx[0] += 1e-4 * (1 + abs(bad_dx[0]))
    assert fd_check(fdx, bad_dx, scale).size > 0


def test_float32_agrees_with_float64():
    m64 = bigger()
    c = m64.config
    m32 = rsm.MLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], temb_dim=c["temb_dim"], dtype="float32")
    m32.load_params(np.from_dlpack(m64.params).astype(np.float32))
    x, t, cond, cot = inputs(m64, 32, 12)
    # the same (float32-representable) inputs for both
    x, cond, cot = (a.astype(np.float32).astype(np.float64) for a in (x, cond, cot))
    t = t.astype(np.float32).astype(np.float64)
    p64 = np.from_dlpack(m64.params)
    p64[...] = np.from_dlpack(m32.params).astype(np.float64)
    o64, dx64, dp64 = (np.from_dlpack(a) for a in m64.forward_and_vjp(x, t, cot, cond))
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    o32, dx32, dp32 = (np.from_dlpack(a).astype(np.float64)
                       for a in m32.forward_and_vjp(f32(x), f32(t), f32(cot), f32(cond)))
    for name, a, b in (("out", o32, o64), ("dx", dx32, dx64), ("dparams", dp32, dp64)):
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel <= 1e-4, f"{name}: relative error {rel:.2e}"


# ---- an independent forward in numpy (and in torch, where importable) -------------------------

def temb(t, dim):
    half = dim // 2
    f = 10000.0 ** (-np.arange(half) / half)
    a = 1000.0 * t[:, None] * f[None, :]
    return np.concatenate([np.sin(a), np.cos(a)], axis=1)


def silu(z):
    return z / (1.0 + np.exp(-z))


def numpy_forward(model, x, t, cond):
    p = model.named_params()
    inp = np.concatenate([x, temb(t, model.config["temb_dim"])] + ([cond] if cond is not None else []), axis=1)
    h = inp @ p["input.weight"].T + p["input.bias"]
    for b in range(model.config["depth"]):
        z = silu(h @ p[f"blocks.{b}.linear1.weight"].T + p[f"blocks.{b}.linear1.bias"])
        h = h + z @ p[f"blocks.{b}.linear2.weight"].T + p[f"blocks.{b}.linear2.bias"]
    return silu(h) @ p["output.weight"].T + p["output.bias"]


def test_forward_matches_numpy_reference():
    for model in (tiny(), bigger()):
        x, t, cond, _ = inputs(model, 7, 13)
        got = np.from_dlpack(model.forward(x, t, cond))
        np.testing.assert_allclose(got, numpy_forward(model, x, t, cond), rtol=1e-10, atol=1e-12)


def _torch_forward(torch, params, x, t, cond, cfg):
    # the embedding in float64 then rounded, as the C code does (a float32 angle up to 1000 rad
    # would already be off by ~6e-5)
    half = cfg["temb_dim"] // 2
    f = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    a = 1000.0 * t.to(torch.float64)[:, None] * f[None, :]
    emb = torch.cat([torch.sin(a), torch.cos(a)], dim=1).to(x.dtype)
    inp = torch.cat([x, emb] + ([cond] if cond is not None else []), dim=1)
    F = torch.nn.functional
    h = F.linear(inp, params["input.weight"], params["input.bias"])
    for b in range(cfg["depth"]):
        z = F.silu(F.linear(h, params[f"blocks.{b}.linear1.weight"], params[f"blocks.{b}.linear1.bias"]))
        h = h + F.linear(z, params[f"blocks.{b}.linear2.weight"], params[f"blocks.{b}.linear2.bias"])
    return F.linear(F.silu(h), params["output.weight"], params["output.bias"])


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_against_torch_autograd(dtype, tol):
    torch = pytest.importorskip("torch")
    tdt = torch.float64 if dtype == "float64" else torch.float32
    m64 = bigger()
    c = m64.config
    model = rsm.MLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], temb_dim=c["temb_dim"], dtype=dtype)
    model.load_params(np.from_dlpack(m64.params).astype(dtype))
    x, t, cond, cot = (a.astype(dtype) for a in inputs(model, 9, 14))
    out, dx, dp = (np.from_dlpack(a) for a in model.forward_and_vjp(x, t, cot, cond))
    params = {k: torch.tensor(np.array(v), dtype=tdt, requires_grad=True) for k, v in model.named_params().items()}
    tx = torch.tensor(x, dtype=tdt, requires_grad=True)
    tout = _torch_forward(torch, params, tx, torch.tensor(t, dtype=tdt), torch.tensor(cond, dtype=tdt), c)
    (tout * torch.tensor(cot, dtype=tdt)).sum().backward()

    def rel(a, b):
        b = np.asarray(b, dtype=np.float64)
        return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30)

    assert rel(out, tout.detach().numpy()) <= tol
    assert rel(dx, tx.grad.numpy()) <= tol
    views = model.named_params()
    base = np.from_dlpack(model.params).__array_interface__["data"][0]
    itemsize = np.dtype(dtype).itemsize
    for name, view in views.items():
        off = (view.__array_interface__["data"][0] - base) // itemsize
        got = dp[off:off + view.size].reshape(view.shape)
        assert rel(got, params[name].grad.numpy()) <= tol, name


def test_backward_from_kept_activations_equals_vjp():
    """forward_keep + backward (one forward) gives exactly the VJP of vjp() (forward recomputed),
    and a stale token (another forward in between, or a wrong row count) is refused."""
    model = rsm.MLP(2, 32, 2, cond_dim=3, seed=4, dtype="float64")
    p = np.from_dlpack(model.params)
    p[:] = np.random.default_rng(0).standard_normal(p.shape) * 0.3
    rng = np.random.default_rng(1)
    x, cond = rng.standard_normal((7, 2)), rng.standard_normal((7, 3))
    t = rng.uniform(0, 1, 7)
    cot = rng.standard_normal((7, 2))
    out, token = model.forward_keep(x, t, cond)
    dx, dparams = model.backward(cot, token)
    out2, dx2, dparams2 = model.forward_and_vjp(x, t, cot, cond)
    np.testing.assert_array_equal(np.from_dlpack(out), np.from_dlpack(out2))
    np.testing.assert_array_equal(np.from_dlpack(dx), np.from_dlpack(dx2))
    np.testing.assert_array_equal(np.from_dlpack(dparams), np.from_dlpack(dparams2))
    with pytest.raises(RuntimeError, match="activations"):
        model.backward(cot, token)            # forward_and_vjp ran a forward since
    _, token = model.forward_keep(x, t, cond)
    with pytest.raises(RuntimeError, match="rows"):
        model.backward(cot[:3], token)
    rsm.sample(model, 4, rsm.FlowPath(), "ode", steps=2, cond=cond[:4])
    with pytest.raises(RuntimeError, match="activations"):
        model.backward(cot, token)            # sampling also runs the model
