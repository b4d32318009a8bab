"""rsm.AdamW against an independent numpy implementation of torch.optim.AdamW (+ clip_grad_norm_
and an EMA), and the state_dict round trip."""
from __future__ import annotations

import numpy as np
import pytest

import rsm

STEPS = 20


class RefAdamW:
    """torch.optim.AdamW (amsgrad=False, maximize=False) written out in float64 numpy, with
    torch.nn.utils.clip_grad_norm_ in front and an EMA behind."""

    def __init__(self, params, lr, betas, eps, weight_decay, max_grad_norm=0.0, ema_decay=0.0):
        self.p = np.array(params, dtype=np.float64)
        self.m = np.zeros_like(self.p)
        self.v = np.zeros_like(self.p)
        self.ema = self.p.copy() if ema_decay > 0 else None
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.max_norm, self.d = max_grad_norm, ema_decay
        self.t = 0

    def step(self, g, lr=None):
        lr = self.lr if lr is None else lr
        g = np.array(g, dtype=np.float64)
        norm = float(np.sqrt(np.sum(g * g)))
        if self.max_norm > 0:
            g = g * min(1.0, self.max_norm / (norm + 1e-6))
        self.t += 1
        self.p = self.p * (1.0 - lr * self.wd)                     # decoupled weight decay
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        denom = np.sqrt(self.v) / np.sqrt(bc2) + self.eps
        self.p = self.p - (lr / bc1) * self.m / denom
        if self.ema is not None:
            self.ema = self.d * self.ema + (1 - self.d) * self.p
        return norm, g


def _model(dtype, seed=0):
    model = rsm.MLP(3, 8, 1, cond_dim=2, seed=seed, dtype=dtype)
    flat = np.from_dlpack(model.params)
    flat[...] = np.random.default_rng(100 + seed).normal(0, 0.5, flat.shape).astype(dtype)
    return model


def _grads(n, steps, dtype, scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    # varied magnitudes per step so that clipping is sometimes active, sometimes not
    return [(rng.normal(size=n) * scale * rng.uniform(0.05, 3.0)).astype(dtype) for _ in range(steps)]


TOL = {"float64": 1e-12, "float32": 1e-6}


def _close(got, ref, dtype, what):
    tol = TOL[dtype]
    # relative to the size of the quantity (atol = rtol * max|ref| guards entries near zero)
    err = np.max(np.abs(np.asarray(got, np.float64) - ref))
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert err <= tol * scale, f"{what}: max abs err {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hp", [
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=1e-1, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01),
], ids=["default", "wd", "big-lr"])
def test_adamw_matches_torch_semantics(dtype, hp):
    model = _model(dtype)
    opt = rsm.AdamW(model, **hp)
    ref = RefAdamW(np.from_dlpack(model.params), **hp)
    for g in _grads(model.num_params, STEPS, dtype):
        norm = opt.step(g.copy())
        ref_norm, _ = ref.step(g)
        assert norm == pytest.approx(ref_norm, rel=1e-12)
    assert opt.step_count == STEPS
    _close(np.from_dlpack(model.params), ref.p, dtype, "params")
    _close(np.from_dlpack(opt._core.m), ref.m, dtype, "m")
    _close(np.from_dlpack(opt._core.v), ref.v, dtype, "v")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bias_correction_first_step(dtype):
    # step 1 with zero weight decay: m_hat = g and sqrt(v_hat) = |g|, so the update is
    # lr * g / (|g| + eps) elementwise (about lr * sign(g): Adam's first step)
    model = _model(dtype)
    p0 = np.array(np.from_dlpack(model.params), dtype=np.float64)
    opt = rsm.AdamW(model, lr=0.01, eps=1e-12)
    g = _grads(model.num_params, 1, dtype)[0]
    opt.step(g.copy())
    step = p0 - np.from_dlpack(model.params).astype(np.float64)
    g64 = g.astype(np.float64)
    _close(step, 0.01 * g64 / (np.abs(g64) + 1e-12), dtype, "first step")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_per_step_lr(dtype):
    model = _model(dtype)
    opt = rsm.AdamW(model, lr=1.0, weight_decay=0.05)  # the config lr must not be used
    ref = RefAdamW(np.from_dlpack(model.params), lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    for k, g in enumerate(_grads(model.num_params, STEPS, dtype)):
        lr = 1e-2 * (k + 1) / STEPS
        opt.step(g.copy(), lr=lr)
        ref.step(g, lr=lr)
    _close(np.from_dlpack(model.params), ref.p, dtype, "params")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("max_norm", [0.5, 5.0, 1e6])
def test_gradient_clipping(dtype, max_norm):
    model = _model(dtype)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt = rsm.AdamW(model, max_grad_norm=max_norm, **hp)
    ref = RefAdamW(np.from_dlpack(model.params), max_grad_norm=max_norm, **hp)
    clipped_any = unclipped_any = False
    for g in _grads(model.num_params, STEPS, dtype, scale=0.3):
        buf = g.copy()
        norm = opt.step(buf)
        ref_norm, g_clipped = ref.step(g)
        # the returned norm is the pre-clip norm (in double, whatever the dtype)
        assert norm == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)
        assert norm == pytest.approx(ref_norm, rel=1e-12)
        # grads are clipped in place: scale max_norm / (norm + 1e-6)
        _close(buf, g_clipped, dtype, "clipped grads")
        if norm > max_norm:
            clipped_any = True
            assert np.linalg.norm(buf.astype(np.float64)) == pytest.approx(max_norm, rel=1e-5)
        else:
            unclipped_any = True
            assert buf.tobytes() == g.tobytes()
    if max_norm == 1e6:
        assert unclipped_any and not clipped_any
    if max_norm == 0.5:
        assert clipped_any
    _close(np.from_dlpack(model.params), ref.p, dtype, "params")
    _close(np.from_dlpack(opt._core.m), ref.m, dtype, "m")
    _close(np.from_dlpack(opt._core.v), ref.v, dtype, "v")


def test_clip_coefficient_at_the_threshold():
    # torch clamps max_norm / (norm + 1e-6) to 1: a norm equal to max_norm is still scaled
    model = _model("float64")
    g = np.random.default_rng(4).normal(size=model.num_params)
    norm = float(np.sqrt(np.sum(g * g)))
    opt = rsm.AdamW(model, max_grad_norm=norm)
    buf = g.copy()
    assert opt.step(buf) == pytest.approx(norm, rel=1e-14)  # summation order may differ
    np.testing.assert_allclose(buf, g * (norm / (norm + 1e-6)), rtol=1e-15, atol=0)
    assert not np.array_equal(buf, g)


def test_no_clipping_when_disabled():
    model = _model("float64")
    opt = rsm.AdamW(model, max_grad_norm=0.0)
    g = np.full(model.num_params, 1e3)
    buf = g.copy()
    norm = opt.step(buf)
    assert norm == pytest.approx(1e3 * np.sqrt(model.num_params), rel=1e-14)
    assert np.array_equal(buf, g)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("decay", [0.5, 0.99])
def test_ema(dtype, decay):
    model = _model(dtype)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt = rsm.AdamW(model, ema_decay=decay, **hp)
    ema0 = np.array(np.from_dlpack(opt.ema))
    assert ema0.tobytes() == np.from_dlpack(model.params).tobytes()  # starts at the parameters
    ema = ema0.astype(np.float64)
    for g in _grads(model.num_params, STEPS, dtype):
        opt.step(g.copy())
        # ema = d ema + (1 - d) p with the just-updated parameters p
        ema = decay * ema + (1 - decay) * np.from_dlpack(model.params).astype(np.float64)
    _close(np.from_dlpack(opt.ema), ema, dtype, "ema")
    assert "ema" in opt.state_dict()


def test_no_ema_by_default():
    opt = rsm.AdamW(_model("float32"))
    assert opt.ema is None and "ema" not in opt.state_dict()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_state_dict_round_trip(dtype):
    hp = dict(lr=1e-2, weight_decay=0.05, max_grad_norm=1.0, ema_decay=0.9)
    grads = _grads(_model(dtype).num_params, 2 * STEPS, dtype)
    # uninterrupted
    a = _model(dtype)
    opt_a = rsm.AdamW(a, **hp)
    for g in grads:
        opt_a.step(g.copy())
    # interrupted after STEPS: params + state go into a fresh model (other initial weights) and
    # a fresh optimizer, which must then continue bitwise like the uninterrupted run
    b = _model(dtype)
    opt_b = rsm.AdamW(b, **hp)
    for g in grads[:STEPS]:
        opt_b.step(g.copy())
    state = opt_b.state_dict()
    params = np.array(np.from_dlpack(b.params))
    assert state["step"] == STEPS
    saved = {k: np.array(v, copy=True) for k, v in state.items() if k != "step"}
    opt_b.step(np.ones(b.num_params, dtype))  # the state dict holds copies, not views
    for key, value in saved.items():
        assert state[key].tobytes() == value.tobytes(), key
    c = _model(dtype, seed=3)
    c.load_params(params)
    opt_c = rsm.AdamW(c, **hp)
    opt_c.load_state_dict(state)
    assert opt_c.step_count == STEPS
    for g in grads[STEPS:]:
        opt_c.step(g.copy())
    assert np.from_dlpack(c.params).tobytes() == np.from_dlpack(a.params).tobytes()
    for key in ("m", "v", "ema"):
        got = np.from_dlpack(getattr(opt_c._core, key)).tobytes()
        assert got == np.from_dlpack(getattr(opt_a._core, key)).tobytes(), key
    assert opt_c.step_count == opt_a.step_count == 2 * STEPS


def test_step_count_drives_bias_correction():
    # a restored step count changes the next update exactly as the reference does
    model = _model("float64")
    opt = rsm.AdamW(model, lr=1e-2)
    ref = RefAdamW(np.from_dlpack(model.params), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    m0 = np.random.default_rng(9).normal(size=model.num_params)
    v0 = np.abs(np.random.default_rng(10).normal(size=model.num_params))
    opt.load_state_dict({"m": m0, "v": v0, "step": 7})
    ref.m, ref.v, ref.t = m0.copy(), v0.copy(), 7
    g = _grads(model.num_params, 1, "float64")[0]
    opt.step(g.copy())
    ref.step(g)
    _close(np.from_dlpack(model.params), ref.p, "float64", "params")
