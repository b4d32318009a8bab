"""Bad input: a clear Python exception that names the argument, no crash, and nothing changes.

Every case checks the exception type, that the message names the offending argument, and that the
model's parameters (bitwise) and, where an optimizer is involved, its m / v / ema / step count are
exactly what they were before the call.
"""
from __future__ import annotations

import numpy as np
import pytest

import rsm

DIM, COND = 2, 3
F32 = np.float32


# ---- helpers --------------------------------------------------------------------------------

def snapshot(model, opt=None):
    snap = {"params": np.array(np.from_dlpack(model.params), copy=True)}
    if opt is not None:
        snap["m"] = np.array(np.from_dlpack(opt._core.m), copy=True)
        snap["v"] = np.array(np.from_dlpack(opt._core.v), copy=True)
        if opt.ema is not None:
            snap["ema"] = np.array(np.from_dlpack(opt.ema), copy=True)
        snap["step"] = opt.step_count
    return snap


def assert_same(before, after):
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, np.ndarray):
            # bitwise: compare the bytes, so that NaN payloads or -0.0 would count too
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert a.tobytes() == b.tobytes(), f"{key} changed"
        else:
            assert a == b, key


def check(exc, names, fn, model, opt=None):
    """fn() raises exc whose message contains every string in names; nothing changes."""
    before = snapshot(model, opt)
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert name in msg, f"{name!r} not in message {msg!r}"
    assert_same(before, snapshot(model, opt))
    return msg


def trained(model, steps=3):
    """Give the model non-trivial weights (the output layer starts at zero)."""
    flat = np.from_dlpack(model.params)
    flat[...] = np.random.default_rng(7).normal(0, 0.3, flat.shape).astype(flat.dtype)
    return model


@pytest.fixture
def model():
    return trained(rsm.MLP(DIM, 16, 2, seed=1))


@pytest.fixture
def cmodel():
    return trained(rsm.MLP(DIM, 16, 2, cond_dim=COND, seed=2))


@pytest.fixture
def path():
    return rsm.FlowPath()


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(64, DIM)).astype(F32)


X = np.zeros((4, DIM), F32) + 0.25


def _nan(shape=(4, DIM)):
    return np.full(shape, np.nan, F32)


def _inf(shape=(4, DIM)):
    a = np.zeros(shape, F32)
    a[-1, -1] = np.inf
    return a


# Wrong-x inputs shared by forward / vjp / log_prob / convert: (label, value, exception)
BAD_X = [
    ("width3", np.zeros((4, 3), F32), ValueError),
    ("1d", np.zeros(4, F32), ValueError),
    ("3d", np.zeros((4, DIM, 1), F32), ValueError),
    ("0d", np.float32(1.0), ValueError),
    ("float64", np.zeros((4, DIM), np.float64), TypeError),
    ("int64", np.zeros((4, DIM), np.int64), TypeError),
    ("list", [[0.0, 0.0]], TypeError),
    ("str", "abc", TypeError),
    ("None", None, TypeError),
    ("nan", _nan(), ValueError),
    ("inf", _inf(), ValueError),
]

BAD_T = [
    ("nan", np.nan, ValueError),
    ("inf", np.inf, ValueError),
    ("above1", 1.5, ValueError),
    ("negative", -0.1, ValueError),
    ("nan_row", np.array([0.1, 0.2, np.nan, 0.3]), ValueError),
    ("wrong_len", np.full(3, 0.5), ValueError),
    ("2d", np.full((4, 1), 0.5), ValueError),
    ("None", None, TypeError),
    ("str", "half", TypeError),
]


# ---- MLP construction -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=-2), ValueError, "dim"),
    (dict(dim=2.5), TypeError, "dim"),
    (dict(dim="2"), TypeError, "dim"),
    (dict(hidden=0), ValueError, "hidden"),
    (dict(depth=-1), ValueError, "depth"),
    (dict(cond_dim=-1), ValueError, "cond_dim"),
    (dict(temb_dim=3), ValueError, "temb_dim"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(dtype=np.float32), TypeError, "dtype must be 'float32' or 'float64', got type"),
    (dict(temb_dim=1), ValueError, "temb_dim=1 must be even and >= 2"),   # the core's message
    (dict(hidden=2**41), ValueError, "hidden"),
    (dict(depth=-2**50), ValueError, "depth"),
])
def test_mlp_constructor(kwargs, exc, name):
    args = dict(dim=DIM)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        rsm.MLP(**args)


# ---- MLP.forward / MLP.vjp --------------------------------------------------------------------

@pytest.mark.parametrize("label,x,exc", BAD_X, ids=[c[0] for c in BAD_X])
def test_forward_bad_x(model, label, x, exc):
    msg = check(exc, ["forward", "x"], lambda: model.forward(x, 0.5), model)
    if label == "float64":
        assert "float32" in msg and "expected" in msg


@pytest.mark.parametrize("label,x,exc", BAD_X, ids=[c[0] for c in BAD_X])
def test_vjp_bad_x(model, label, x, exc):
    check(exc, ["vjp", "x"], lambda: model.vjp(x, 0.5, np.ones((4, DIM), F32)), model)


def test_float64_model_rejects_float32(model):
    m64 = rsm.MLP(DIM, 16, 2, seed=1, dtype="float64")
    msg = check(TypeError, ["x", "float64"], lambda: m64.forward(X, 0.5), m64)
    assert "float32" in msg


@pytest.mark.parametrize("label,t,exc", BAD_T, ids=[c[0] for c in BAD_T])
def test_forward_bad_t(model, label, t, exc):
    check(exc, ["forward", "t"], lambda: model.forward(X, t), model)


@pytest.mark.parametrize("label,t,exc", BAD_T, ids=[c[0] for c in BAD_T])
def test_vjp_bad_t(model, label, t, exc):
    check(exc, ["vjp", "t"], lambda: model.vjp(X, t, np.ones((4, DIM), F32)), model)


def test_nan_t_message_is_readable(model):
    # not "np.float64(nan)": the value as a plain float
    msg = check(ValueError, ["t[2]=nan"], lambda: model.forward(X, np.array([0.1, 0.2, np.nan, 0.3])), model)
    assert "np.float64" not in msg


@pytest.mark.parametrize("cot,exc", [
    (np.ones((4, 3), F32), ValueError),
    (np.ones((3, DIM), F32), ValueError),
    (np.ones(4, F32), ValueError),
    (np.ones((4, DIM), np.float64), TypeError),
    (None, TypeError),
    ("abc", TypeError),
    (_nan(), ValueError),
    (_inf(), ValueError),
], ids=["width", "rows", "1d", "float64", "None", "str", "nan", "inf"])
def test_vjp_bad_cotangent(model, cot, exc):
    check(exc, ["vjp", "cotangent"], lambda: model.vjp(X, 0.5, cot), model)


def test_cond_to_unconditional(model):
    check(ValueError, ["cond", "unconditional"],
          lambda: model.forward(X, 0.5, np.zeros((4, COND), F32)), model)
    check(ValueError, ["cond", "unconditional"],
          lambda: model.vjp(X, 0.5, np.ones((4, DIM), F32), np.zeros((4, COND), F32)), model)


def test_missing_cond(cmodel):
    check(ValueError, ["cond", "conditional"], lambda: cmodel.forward(X, 0.5), cmodel)
    check(ValueError, ["cond", "conditional"], lambda: cmodel.vjp(X, 0.5, np.ones((4, DIM), F32)), cmodel)


@pytest.mark.parametrize("cond,exc", [
    (np.zeros((4, 2), F32), ValueError),
    (np.zeros((4, 4), F32), ValueError),
    (np.zeros((3, COND), F32), ValueError),
    (np.zeros(COND, F32), ValueError),
    (np.zeros((4, COND), np.float64), TypeError),
    (_nan((4, COND)), ValueError),
    ("abc", TypeError),
], ids=["narrow", "wide", "rows", "1d", "float64", "nan", "str"])
def test_bad_cond(cmodel, cond, exc):
    check(exc, ["forward", "cond"], lambda: cmodel.forward(X, 0.5, cond), cmodel)
    check(exc, ["vjp", "cond"], lambda: cmodel.vjp(X, 0.5, np.ones((4, DIM), F32), cond), cmodel)


def test_empty_batch_is_an_empty_result(model):
    # n = 0 rows is a valid (empty) batch for the pure functions, as in numpy / torch
    before = snapshot(model)
    out = np.from_dlpack(model.forward(np.zeros((0, DIM), F32), 0.5))
    assert out.shape == (0, DIM)
    dx, dp = model.vjp(np.zeros((0, DIM), F32), 0.5, np.zeros((0, DIM), F32))
    assert np.from_dlpack(dx).shape == (0, DIM)
    assert not np.from_dlpack(dp).any()
    assert_same(before, snapshot(model))


def test_non_contiguous_inputs_are_copied(cmodel):
    rng = np.random.default_rng(3)
    wide = rng.normal(size=(5, 2 * DIM)).astype(F32)
    x = wide[:, ::2]                       # strided columns
    assert not x.flags.c_contiguous
    xt = np.asfortranarray(rng.normal(size=(5, DIM)).astype(F32))
    cwide = rng.normal(size=(5, 2 * COND)).astype(F32)
    cond = cwide[:, 1::2]
    t = np.linspace(0.1, 0.9, 10)[::2]     # strided times
    cot = rng.normal(size=(DIM, 5)).astype(F32).T
    before = snapshot(cmodel)
    ref = np.from_dlpack(cmodel.forward(np.ascontiguousarray(x), np.ascontiguousarray(t), np.ascontiguousarray(cond)))
    got = np.from_dlpack(cmodel.forward(x, t, cond))
    assert got.tobytes() == ref.tobytes()
    got_f = np.from_dlpack(cmodel.forward(xt, t, cond))
    ref_f = np.from_dlpack(cmodel.forward(np.ascontiguousarray(xt), t, np.ascontiguousarray(cond)))
    assert got_f.tobytes() == ref_f.tobytes()
    dx, dp = cmodel.vjp(x, t, cot, cond)
    dx_r, dp_r = cmodel.vjp(np.ascontiguousarray(x), t, np.ascontiguousarray(cot), np.ascontiguousarray(cond))
    assert np.from_dlpack(dx).tobytes() == np.from_dlpack(dx_r).tobytes()
    assert np.from_dlpack(dp).tobytes() == np.from_dlpack(dp_r).tobytes()
    # the strided source arrays are untouched
    assert np.array_equal(x, wide[:, ::2])
    assert_same(before, snapshot(cmodel))


# ---- rsm.sample -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(n=0), ValueError, "n"),
    (dict(n=-3), ValueError, "n"),
    (dict(n=2.0), TypeError, "n"),
    (dict(n="4"), TypeError, "n"),
    (dict(n=None), TypeError, "n"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=None), TypeError, "steps"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),  # another kind: TypeError, as n=2.0 (rsm._args.seed_int)
    (dict(sampler="rk4"), ValueError, "sampler"),
    (dict(sampler=None), ValueError, "sampler"),
    (dict(grid="cosine"), ValueError, "grid"),
    (dict(sampler="sde", noise_level=np.nan), ValueError, "noise_level"),
    (dict(sampler="sde", noise_level=-1.0), ValueError, "noise_level"),
    (dict(sampler="sde", noise_level=None), TypeError, "noise_level"),
    (dict(sampler="ddim", eta=np.inf), ValueError, "eta"),
    (dict(sampler="ddim", eta=-0.5), ValueError, "eta"),
    (dict(ts=[1.0, np.nan, 0.0]), ValueError, "ts"),
    (dict(ts=[1.0, np.inf, 0.0]), ValueError, "ts"),
    (dict(ts=[1.5, 0.5, 0.0]), ValueError, "ts"),
    (dict(ts=[1.0, 0.5, -0.1]), ValueError, "ts"),
    (dict(ts=[1.0]), ValueError, "ts"),
    (dict(ts=[[1.0, 0.0]]), ValueError, "ts"),
    (dict(branch_factor=0), ValueError, "branch_factor"),
    (dict(x_init=np.zeros((4, 3), F32)), ValueError, "x_init"),
    (dict(x_init=np.zeros((3, DIM), F32)), ValueError, "x_init"),
    (dict(x_init=np.zeros((4, DIM), np.float64)), TypeError, "x_init"),
    (dict(x_init=_nan()), ValueError, "x_init"),
    (dict(x_init=_inf()), ValueError, "x_init"),
    (dict(x_init="abc"), TypeError, "x_init"),
    (dict(cond=np.zeros((4, COND), F32)), ValueError, "cond"),
])
def test_sample_bad_args(model, path, kwargs, exc, name):
    args = dict(n=4, path=path, steps=3)
    args.update(kwargs)
    func = "time_grid" if name == "grid" else "sample"  # the grid is built by rsm.time_grid
    check(exc, [func, name], lambda: rsm.sample(model, **args), model)


@pytest.mark.parametrize("bad_path", [None, "flow", rsm.FlowPath], ids=["None", "str", "class"])
def test_sample_bad_path(model, bad_path):
    check(TypeError, ["sample", "path"], lambda: rsm.sample(model, 4, bad_path), model)


def test_sample_bad_model(path):
    with pytest.raises(TypeError, match="model"):
        rsm.sample(None, 4, path)
    with pytest.raises(TypeError, match="model"):
        rsm.sample("mlp", 4, path)


def test_sample_conditional(cmodel, path):
    check(ValueError, ["sample", "cond"], lambda: rsm.sample(cmodel, 4, path, steps=3), cmodel)
    for cond, exc in [(np.zeros((4, 2), F32), ValueError), (np.zeros((5, COND), F32), ValueError),
                      (_nan((4, COND)), ValueError), (np.zeros((4, COND)), TypeError)]:
        check(exc, ["sample", "cond"], lambda: rsm.sample(cmodel, 4, path, steps=3, cond=cond), cmodel)


# ---- rsm.log_prob -----------------------------------------------------------------------------

TS = np.linspace(1.0, 0.0, 5)


@pytest.mark.parametrize("label,x,exc", BAD_X, ids=[c[0] for c in BAD_X])
def test_log_prob_bad_x(model, path, label, x, exc):
    check(exc, ["log_prob", "x"], lambda: rsm.log_prob(model, path, x, X, 1, TS), model)


@pytest.mark.parametrize("label,x,exc", [c for c in BAD_X if c[0] not in ("0d", "str", "None")],
                         ids=[c[0] for c in BAD_X if c[0] not in ("0d", "str", "None")])
def test_log_prob_bad_x_next(model, path, label, x, exc):
    check(exc, ["log_prob", "x_next"], lambda: rsm.log_prob(model, path, X, x, 1, TS), model)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(step=-1), ValueError, "step"),
    (dict(step=4), ValueError, "step"),
    (dict(step=1.5), TypeError, "step"),
    (dict(step=None), TypeError, "step"),
    (dict(sampler="rk4"), ValueError, "sampler"),
    (dict(ts=[1.0, np.nan, 0.0]), ValueError, "ts"),
    (dict(ts=[2.0, 1.0, 0.0]), ValueError, "ts"),
    (dict(ts=[1.0]), ValueError, "ts"),
    (dict(ts=0.5), ValueError, "ts"),
    (dict(noise_level=np.nan), ValueError, "noise_level"),
    (dict(noise_level=-1.0), ValueError, "noise_level"),
    (dict(sampler="ddim", eta=np.nan), ValueError, "eta"),
    (dict(cond=np.zeros((4, COND), F32)), ValueError, "cond"),
])
def test_log_prob_bad_args(model, path, kwargs, exc, name):
    args = dict(x=X, x_next=X, step=1, ts=TS)
    args.update(kwargs)
    check(exc, ["log_prob", name], lambda: rsm.log_prob(model, path, **args), model)


def test_log_prob_bad_path(model):
    check(TypeError, ["log_prob", "path"], lambda: rsm.log_prob(model, None, X, X, 1, TS), model)
    check(TypeError, ["log_prob", "path"], lambda: rsm.log_prob(model, "flow", X, X, 1, TS), model)


def test_log_prob_conditional(cmodel, path):
    check(ValueError, ["log_prob", "cond"], lambda: rsm.log_prob(cmodel, path, X, X, 1, TS), cmodel)
    for cond in (np.zeros((4, 2), F32), np.zeros((3, COND), F32), _nan((4, COND))):
        check(ValueError, ["log_prob", "cond"],
              lambda: rsm.log_prob(cmodel, path, X, X, 1, TS, cond=cond), cmodel)


# ---- path.convert and path construction -------------------------------------------------------

@pytest.mark.parametrize("label,x,exc", BAD_X, ids=[c[0] for c in BAD_X])
def test_convert_bad_x(path, label, x, exc):
    if label == "width3":
        pytest.skip("convert takes any width d (it has no model dimension)")
    u = np.zeros((4, DIM), np.float64 if label == "float64" else F32)
    if label in ("float64",):
        # float64 is a valid dtype for convert (x picks it): then u of float32 is the mismatch
        with pytest.raises(TypeError, match="u"):
            path.convert(x, np.zeros((4, DIM), F32), 0.5, "velocity", "eps")
        return
    with pytest.raises(exc) as info:
        path.convert(x, u, 0.5, "velocity", "eps")
    assert "convert" in str(info.value) and "x" in str(info.value)


@pytest.mark.parametrize("u,exc", [
    (np.zeros((4, 3), F32), ValueError),
    (np.zeros((3, DIM), F32), ValueError),
    (np.zeros((4, DIM), np.float64), TypeError),
    (_nan(), ValueError),
    (_inf(), ValueError),
    (None, TypeError),
], ids=["width", "rows", "float64", "nan", "inf", "None"])
def test_convert_bad_u(path, u, exc):
    with pytest.raises(exc, match=r"convert\(\): u"):
        path.convert(X, u, 0.5, "velocity", "eps")


@pytest.mark.parametrize("label,t,exc", BAD_T, ids=[c[0] for c in BAD_T])
def test_convert_bad_t(path, label, t, exc):
    with pytest.raises(exc, match=r"convert\(\): t"):
        path.convert(X, X, t, "velocity", "eps")


@pytest.mark.parametrize("src,dst,name", [("v0", "eps", "src"), ("eps", "noise", "dst"), (None, "eps", "src")])
def test_convert_bad_parameterization(path, src, dst, name):
    with pytest.raises(ValueError, match=name):
        path.convert(X, X, 0.5, src, dst)


def test_unknown_path_and_schedule():
    with pytest.raises(ValueError, match="schedule"):
        rsm.VPPath("exponential")
    with pytest.raises(ValueError, match="path"):
        rsm.paths.get("ve")
    with pytest.raises(ValueError, match="betas"):
        rsm.VPPath("discrete")


# ---- rsm.pretrain -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(steps=-1), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=-4), ValueError, "batch_size"),
    (dict(batch_size=None), TypeError, "batch_size"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(lr=np.nan), ValueError, "lr"),
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(log_every=0), ValueError, "log_every"),
    (dict(log_every=-1), ValueError, "log_every"),
    (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
    (dict(checkpoint_every=-5), ValueError, "checkpoint_every"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(t_min=0.5, t_max=0.2), ValueError, "t_min"),
    (dict(t_max=np.nan), ValueError, "t_max"),
    (dict(t_max=1.5), ValueError, "t_max"),
    (dict(t_min=-0.1), ValueError, "t_min"),
    (dict(max_grad_norm=np.nan), ValueError, "max_grad_norm"),
    (dict(ema_decay=1.0), ValueError, "ema_decay"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(optimizer="adam"), TypeError, "optimizer"),
    (dict(cond=np.zeros((64, COND), F32)), ValueError, "cond"),
])
def test_pretrain_bad_args(model, data, path, kwargs, exc, name):
    args = dict(steps=3, progress=False)
    args.update(kwargs)
    check(exc, ["pretrain" if name not in ("max_grad_norm", "ema_decay", "weight_decay") else "AdamW", name],
          lambda: rsm.pretrain(model, data, path, **args), model)


@pytest.mark.parametrize("bad,exc", [
    (np.zeros((64, 3), F32), ValueError),
    (np.zeros(64, F32), ValueError),
    (np.zeros((64, DIM, 1), F32), ValueError),
    (np.zeros((0, DIM), F32), ValueError),
    (np.zeros((64, DIM), np.float64), TypeError),
    (None, TypeError),
    ("abc", TypeError),
    ([[0.0, 0.0]], TypeError),
    (_nan((64, DIM)), ValueError),
    (_inf((64, DIM)), ValueError),
], ids=["width3", "1d", "3d", "empty", "float64", "None", "str", "list", "nan", "inf"])
def test_pretrain_bad_data(model, path, bad, exc):
    opt = rsm.AdamW(model, ema_decay=0.9)
    msg = check(exc, ["pretrain", "data"], lambda: rsm.pretrain(model, bad, path, steps=3, progress=False,
                                                                 optimizer=opt), model, opt)
    if isinstance(bad, np.ndarray) and bad.dtype == np.float64:
        assert "float32" in msg


@pytest.mark.parametrize("bad_path", [None, "flow"], ids=["None", "str"])
def test_pretrain_bad_path(model, data, bad_path):
    check(TypeError, ["pretrain", "path"], lambda: rsm.pretrain(model, data, bad_path, steps=3, progress=False), model)


def test_pretrain_bad_model(data, path):
    with pytest.raises(TypeError, match="model"):
        rsm.pretrain(None, data, path, steps=3, progress=False)
    gmm = rsm.GaussianMixtureModel([[0.0, 0.0]], 1.0, 1.0, path)
    with pytest.raises(TypeError, match="model"):
        rsm.pretrain(gmm, data, path, steps=3, progress=False)


def test_pretrain_conditional(cmodel, data, path):
    opt = rsm.AdamW(cmodel)
    check(ValueError, ["pretrain", "cond"],
          lambda: rsm.pretrain(cmodel, data, path, steps=3, progress=False, optimizer=opt), cmodel, opt)
    for cond, exc in [(np.zeros((64, 2), F32), ValueError), (np.zeros((63, COND), F32), ValueError),
                      (_nan((64, COND)), ValueError), (np.zeros((64, COND)), TypeError)]:
        check(exc, ["pretrain", "cond"], lambda: rsm.pretrain(cmodel, data, path, steps=3, progress=False,
                                                              optimizer=opt, cond=cond), cmodel, opt)


def test_pretrain_optimizer_of_another_model(model, data, path):
    other = rsm.MLP(DIM, 8, 1)
    opt = rsm.AdamW(other)
    check(ValueError, ["pretrain", "optimizer"],
          lambda: rsm.pretrain(model, data, path, steps=3, progress=False, optimizer=opt), model, opt)


def test_pretrain_zero_steps_changes_nothing(model, data, path):
    before = snapshot(model)
    hist = rsm.pretrain(model, data, path, steps=0, progress=False)
    assert len(hist) == 0
    assert_same(before, snapshot(model))


def test_pretrain_non_contiguous_data(data, path):
    a = rsm.MLP(DIM, 16, 2, seed=1)
    b = rsm.MLP(DIM, 16, 2, seed=1)
    wide = np.repeat(data, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous and np.array_equal(wide, data)
    rsm.pretrain(a, data, path, steps=5, batch_size=16, progress=False)
    rsm.pretrain(b, wide, path, steps=5, batch_size=16, progress=False)
    assert np.from_dlpack(a.params).tobytes() == np.from_dlpack(b.params).tobytes()


def test_pretrain_divergence_is_floating_point_error(data, path):
    m = rsm.MLP(DIM, 16, 2, seed=1)
    with pytest.raises(FloatingPointError, match="not finite"):
        rsm.pretrain(m, data * 1e30, path, steps=3, lr=1e30, progress=False)
    assert np.all(np.isfinite(np.from_dlpack(m.params)))


# ---- AdamW ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(lr=np.nan), ValueError, "lr"),
    (dict(lr="a"), TypeError, "lr"),
    (dict(betas=(1.0, 0.999)), ValueError, "beta1"),
    (dict(betas=(0.9, -0.1)), ValueError, "beta2"),
    (dict(betas=(0.9,)), ValueError, "betas"),
    (dict(betas=None), ValueError, "betas"),
    (dict(betas=(0.9, np.nan)), ValueError, "beta2=nan"),   # the core's check
    (dict(eps="small"), TypeError, "eps"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(max_grad_norm=np.nan), ValueError, "max_grad_norm"),
    (dict(ema_decay=1.0), ValueError, "ema_decay"),
])
def test_adamw_constructor(model, kwargs, exc, name):
    check(exc, ["AdamW", name], lambda: rsm.AdamW(model, **kwargs), model)


def test_adamw_bad_model():
    with pytest.raises(TypeError, match="model"):
        rsm.AdamW(None)


def _opt_with_state(model):
    opt = rsm.AdamW(model, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, ema_decay=0.9)
    rng = np.random.default_rng(5)
    for _ in range(3):
        opt.step(rng.normal(size=model.num_params).astype(F32))
    return opt


@pytest.mark.parametrize("where", [0, "middle", -1])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_adamw_non_finite_gradient(model, where, value):
    opt = _opt_with_state(model)
    g = np.random.default_rng(6).normal(size=model.num_params).astype(F32)
    g[model.num_params // 2 if where == "middle" else where] = value
    g_before = g.copy()
    check(FloatingPointError, ["step", "gradient", "not finite"], lambda: opt.step(g), model, opt)
    assert g.tobytes() == g_before.tobytes()  # not even clipped
    opt.step(np.zeros(model.num_params, F32))  # still usable
    assert opt.step_count == 4


def test_adamw_huge_finite_gradient_is_clipped(model):
    # finite entries whose float32 square would overflow: the norm is summed in double, so the
    # step is taken (clipped to max_grad_norm) and everything stays finite
    opt = _opt_with_state(model)
    g = np.full(model.num_params, 3e38, F32)
    norm = opt.step(g)
    assert np.isfinite(norm) and norm > 1e38
    assert np.all(np.isfinite(np.from_dlpack(model.params)))
    assert np.all(np.isfinite(np.from_dlpack(opt._core.v)))


@pytest.mark.parametrize("grads,exc", [
    (lambda P: np.zeros(P - 1, F32), ValueError),
    (lambda P: np.zeros(P + 1, F32), ValueError),
    (lambda P: np.zeros((1, P), F32), ValueError),
    (lambda P: np.zeros(P, np.float64), TypeError),
    (lambda P: [0.0] * P, TypeError),
    (lambda P: None, TypeError),
    (lambda P: "abc", TypeError),
], ids=["short", "long", "2d", "float64", "list", "None", "str"])
def test_adamw_bad_grads(model, grads, exc):
    opt = _opt_with_state(model)
    check(exc, ["step", "grads"], lambda: opt.step(grads(model.num_params)), model, opt)


def test_adamw_bad_lr(model):
    opt = _opt_with_state(model)
    g = np.ones(model.num_params, F32)
    for lr, exc in [(np.nan, ValueError), (-1.0, ValueError), (np.inf, ValueError), ("x", TypeError)]:
        check(exc, ["step", "lr"], lambda: opt.step(g, lr=lr), model, opt)


def test_adamw_read_only_grads(model):
    # grads are clipped in place, so they must be writable and contiguous
    opt = _opt_with_state(model)
    g = np.ones(model.num_params, F32)
    g.flags.writeable = False
    check(ValueError, ["step", "grads", "read-only"], lambda: opt.step(g), model, opt)
    g2 = np.ones(2 * model.num_params, F32)[::2]
    check(ValueError, ["step", "grads", "contiguous"], lambda: opt.step(g2), model, opt)


class _Holder:
    """A stand-in model whose flat parameters are a user buffer."""

    def __init__(self, params):
        self.params = params


def test_adamw_read_only_params():
    buf = np.linspace(-1, 1, 10).astype(F32)
    holder = _Holder(buf)
    opt = rsm.AdamW(holder, lr=0.1)
    opt.step(np.ones(10, F32))
    frozen = buf.copy()
    frozen.flags.writeable = False
    holder.params = frozen
    before = {"p": frozen.copy(), "m": np.array(np.from_dlpack(opt._core.m)),
              "v": np.array(np.from_dlpack(opt._core.v))}
    with pytest.raises(ValueError, match="params.*read-only"):
        opt.step(np.ones(10, F32))
    assert frozen.tobytes() == before["p"].tobytes()
    assert np.from_dlpack(opt._core.m).tobytes() == before["m"].tobytes()
    assert np.from_dlpack(opt._core.v).tobytes() == before["v"].tobytes()
    assert opt.step_count == 1


def test_adamw_load_state_dict_validates_first(model):
    opt = _opt_with_state(model)
    good = opt.state_dict()
    P = model.num_params
    bad_states = [
        ({**good, "v": np.zeros(P - 1, F32)}, ValueError, "v"),
        ({**good, "ema": np.zeros(P + 1, F32)}, ValueError, "ema"),
        ({**good, "v": np.full(P, np.nan, F32)}, ValueError, "v"),
        ({k: v for k, v in good.items() if k != "ema"}, KeyError, "ema"),
        ({**good, "step": -1}, ValueError, "step"),
        ({**good, "step": "3"}, ValueError, "step"),
    ]
    for state, exc, name in bad_states:
        # m is valid and comes first: it must not be written when a later entry is bad
        state = dict(state)
        state["m"] = np.ones(P, F32)
        check(exc, ["load_state_dict", name], lambda: opt.load_state_dict(state), model, opt)


# ---- checkpoint files (need rsm.io) ----------------------------------------------------------

@pytest.fixture
def io():
    return pytest.importorskip("rsm.io")


def _ckpt(tmp_path, model, data, path, opt=None):
    opt = opt or rsm.AdamW(model, ema_decay=0.9)
    rsm.pretrain(model, data, path, steps=4, batch_size=16, progress=False, optimizer=opt)
    file = tmp_path / "ckpt.safetensors"
    rsm.save_checkpoint(str(file), model, opt, step=4)
    return file, opt


def test_truncated_checkpoint(io, tmp_path, data, path):
    src = rsm.MLP(DIM, 16, 2, seed=1)
    file, _ = _ckpt(tmp_path, src, data, path)
    blob = file.read_bytes()
    target = trained(rsm.MLP(DIM, 16, 2, seed=1))
    opt = _opt_with_state(target)
    for cut in (0, 7, 8, 100, len(blob) // 2, len(blob) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(blob[:cut])
        check(io.CheckpointError, [str(bad)], lambda: rsm.load_checkpoint(str(bad), target, opt), target, opt)
        check(io.CheckpointError, [str(bad)], lambda: rsm.load(str(bad)), target)
        check(io.CheckpointError, [str(bad)],
              lambda: rsm.pretrain(target, data, path, steps=8, progress=False, optimizer=opt, resume=str(bad)),
              target, opt)


def test_foreign_checkpoint_files(io, tmp_path, data, path):
    target = trained(rsm.MLP(DIM, 16, 2, seed=1))
    opt = _opt_with_state(target)
    files = {}
    files["garbage"] = tmp_path / "garbage.safetensors"
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["json"] = tmp_path / "json.safetensors"
    files["json"].write_bytes(b'{"hello": "world"}')
    files["no_meta"] = tmp_path / "no_meta.safetensors"
    io.save_file({"a": np.zeros(3, F32)}, str(files["no_meta"]))
    files["model_file"] = tmp_path / "model.safetensors"
    target.save(str(files["model_file"]))  # a model, not a training checkpoint
    other = rsm.MLP(DIM, 8, 1, seed=1)      # a checkpoint of another architecture
    files["other_arch"] = tmp_path / "other.safetensors"
    rsm.save_checkpoint(str(files["other_arch"]), other, rsm.AdamW(other), step=2)
    no_ema = tmp_path / "no_ema.safetensors"  # optimizer state without the EMA this optimizer keeps
    rsm.save_checkpoint(str(no_ema), target, rsm.AdamW(target), step=2)
    files["no_ema"] = no_ema
    bad_step = tmp_path / "bad_step.safetensors"
    rsm.save_checkpoint(str(bad_step), target, opt, step=2, extra={"optimizer_step": "many"})
    files["bad_step"] = bad_step
    nan_file = tmp_path / "nan.safetensors"
    tensors, meta = io.load_file(str(files["no_ema"]))
    tensors = dict(tensors)
    tensors["model.output.bias"] = np.full_like(tensors["model.output.bias"], np.nan)
    io.save_file(tensors, str(nan_file), metadata=meta)
    files["nan"] = nan_file
    for label, f in files.items():
        check(io.CheckpointError, [str(f)], lambda: rsm.load_checkpoint(str(f), target, opt), target, opt)
        check(io.CheckpointError, [str(f)],
              lambda: rsm.pretrain(target, data, path, steps=8, progress=False, optimizer=opt, resume=str(f)),
              target, opt)
    for label in ("garbage", "json", "no_meta", "other_arch"):
        with pytest.raises(io.CheckpointError, match=str(files[label])):
            rsm.load(str(files[label]))


def test_checkpoint_error_is_value_error(io):
    assert issubclass(io.CheckpointError, ValueError)


def test_missing_checkpoint_file(io, tmp_path):
    target = trained(rsm.MLP(DIM, 16, 2, seed=1))
    missing = str(tmp_path / "nope.safetensors")
    before = snapshot(target)
    with pytest.raises((FileNotFoundError, io.CheckpointError), match="nope"):
        rsm.load_checkpoint(missing, target)
    assert_same(before, snapshot(target))
