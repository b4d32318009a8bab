"""The CUDA backend table (kernels/backend_cuda.cu) and the C loops on the device, against the CPU.

Skipped, with the reason, without a CUDA device; benchmarks/gpu_session.sh runs them on one.

Part 1, the table: every op of csrc/backend.h's list, called by name through the test hook
rsm._cuda.backend_call, forward and backward, float32 and float64, against a float64 numpy
reference written from the op's equations (backend.h, the CPU loops it cites). Tolerances: float64
to rounding (the device sums in another order, its libm differs in the last bit); float32 to
float32 rounding of the reduction lengths here. The random numbers: Philox words and uniforms
bitwise the CPU's, normals to the last bit of the device's log/sin/cos.

Part 2, the loops (the issue's parity list): every sampler's trajectories and log-probs, every
preset's one-iteration update, a whole Trainer iteration and pretraining, on the GPU within float32
tolerance of the CPU on the same seed, on models built on the device (rsm.MLP(...).to("cuda"): the
same core with its parameters and activations on the CUDA backend table), through rsm.cuda.sample
/ rsm.cuda.pretrain (= rsm.sample / rsm.pretrain). Where a loop is not reachable on the device
yet (the Trainer's iteration) they fail with the NotImplementedError that says so (deliberately
not skipped: the GPU session must show what is not ported).
"""
from __future__ import annotations

import ctypes
import itertools
import math

import numpy as np
import pytest

import rsm
import rsm.cuda as rc
from rsm import _C

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not rsm.cuda_available(),
                                 reason=f"no CUDA device: {rsm.build_info()['cuda_reason']}")]

DTYPES = ["float32", "float64"]
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


# ---- helpers ----------------------------------------------------------------------------------


def op(name, dtype, *args):
    """One op of the CUDA table on cuda:0 (waits for it); its double or status."""
    return rc._mod().backend_call(0, 0 if dtype == "float32" else 1, name, tuple(args))


def dev(a, dtype=None):
    return rc.to_device(np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype)))


def host(t):
    return rc.to_host(t)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def close(got, ref, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(ref, np.float64),
                               rtol=tol["rtol"] * scale, atol=tol["atol"] * scale)


def device_ptr(t):
    """The device address of an rsm device tensor (for the pointers inside an op's structs)."""
    capsule = t.__dlpack__(stream=-1, max_version=(1, 0))
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    managed = get(capsule, b"dltensor_versioned")
    # DLManagedTensorVersioned: version (2 x u32), manager_ctx, deleter, flags, then DLTensor.data
    return ctypes.c_void_p.from_address(managed + 32).value


# The host structs of the ops, laid out as the C headers declare them (sampler.h, objective.h,
# path.h, train/pretrain.h, optim.h).
class StepCoef(ctypes.Structure):
    _fields_ = [(n, ctypes.c_double) for n in ("t", "t_next", "dt", "A", "K", "std")] + \
               [("stochastic", ctypes.c_int), ("heun", ctypes.c_int)] + \
               [(n, ctypes.c_double) for n in ("v_x", "v_u", "v_x_next", "v_u_next")]


class ObjectiveConfig(ctypes.Structure):
    _fields_ = [("form", ctypes.c_int), ("anchor_old", ctypes.c_int), ("linear_only", ctypes.c_int),
                ("mean_over_dims", ctypes.c_int), ("normalizer", ctypes.c_double)]


class ObjectiveStats(ctypes.Structure):
    _fields_ = [("loss", ctypes.c_double), ("clip_fraction", ctypes.c_double),
                ("kl", ctypes.c_double)]


class Path(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("schedule", ctypes.c_int), ("beta_min", ctypes.c_double),
                ("beta_max", ctypes.c_double), ("cosine_s", ctypes.c_double),
                ("num_steps", ctypes.c_int64), ("log_alpha_bar", ctypes.c_void_p)]


class PretrainConfig(ctypes.Structure):
    _fields_ = [("batch_size", ctypes.c_int64), ("t_min", ctypes.c_double),
                ("t_max", ctypes.c_double), ("lr", ctypes.c_double),
                ("warmup_steps", ctypes.c_int64), ("decay_steps", ctypes.c_int64),
                ("min_lr_ratio", ctypes.c_double), ("seed", ctypes.c_uint64),
                ("cond_dropout", ctypes.c_double), ("null_cond", ctypes.c_void_p)]


class AdamWConfig(ctypes.Structure):
    _fields_ = [(n, ctypes.c_double) for n in ("lr", "beta1", "beta2", "eps", "weight_decay",
                                                "max_grad_norm", "ema_decay")]


class AdamW(ctypes.Structure):
    _fields_ = [("config", AdamWConfig), ("dtype", ctypes.c_int), ("num_params", ctypes.c_int64),
                ("step", ctypes.c_int64), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("ema", ctypes.c_void_p)]


def buf(struct):
    """A host buffer holding a copy of a ctypes struct (what the hook passes as a pointer)."""
    return bytearray(bytes(struct))


# ---- dense algebra ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product([0, 1], repeat=2)))
def test_gemm(dtype, ta, tb):
    rng = np.random.default_rng(1)
    m, n, k, pad = 37, 29, 53, 3
    a = rand(rng, (k, m) if ta else (m, k), dtype)
    b = rand(rng, (n, k) if tb else (k, n), dtype)
    c = rand(rng, (m, n + pad), dtype)  # ldc > n: the rows of a wider matrix
    ref = c.astype(np.float64).copy()
    opa = a.T if ta else a
    opb = b.T if tb else b
    ref[:, :n] = 0.7 * opa.astype(np.float64) @ opb.astype(np.float64) + 0.3 * ref[:, :n]
    dc = dev(c)
    op("gemm", dtype, ta, tb, m, n, k, 0.7, dev(a), a.shape[1], dev(b), b.shape[1], 0.3, dc, n + pad)
    close(host(dc), ref, dtype, scale=10)


def test_gemm_tf32_and_bf16_are_off_by_default_and_close_when_on():
    assert not rc.tf32_enabled() and not rc.bf16_enabled()
    rng = np.random.default_rng(2)
    a, b = rand(rng, (256, 256), "float32"), rand(rng, (256, 256), "float32")
    ref = a.astype(np.float64) @ b.astype(np.float64)

    def product():
        dc = dev(np.zeros((256, 256), np.float32))
        op("gemm", "float32", 0, 0, 256, 256, 256, 1.0, dev(a), 256, dev(b), 256, 0.0, dc, 256)
        return host(dc)

    exact = np.linalg.norm(product() - ref) / np.linalg.norm(ref)
    for setter, bound in ((rc.set_tf32, 5e-3), (rc.set_bf16, 3e-2)):
        setter(True)
        try:
            fast = np.linalg.norm(product() - ref) / np.linalg.norm(ref)
        finally:
            setter(False)
        assert exact < 1e-6 and fast < bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_rows_grad_add_row_gather_scatter(dtype):
    rng = np.random.default_rng(3)
    n, w = 41, 19
    x, bias, dy = rand(rng, (n, w), dtype), rand(rng, w, dtype), rand(rng, (n, w), dtype)
    y = dev(np.zeros((n, w), dtype))
    op("bias_rows", dtype, y, dev(x), dev(bias), n, w)
    close(host(y), x.astype(np.float64) + bias, dtype)
    op("bias_rows", dtype, y, None, dev(bias), n, w)
    close(host(y), np.broadcast_to(bias, (n, w)), dtype)
    op("bias_rows", dtype, y, dev(x), None, n, w)
    close(host(y), x, dtype)
    db0 = rand(rng, w, dtype)
    db = dev(db0)
    op("bias_grad", dtype, db, dev(dy), n, w)
    close(host(db), db0 + dy.astype(np.float64).sum(0), dtype, scale=10)
    yy = dev(x)
    op("add_row", dtype, yy, dev(bias), n, w)
    close(host(yy), x.astype(np.float64) + bias, dtype)
    table = rand(rng, (7, w), dtype)
    ids = rng.integers(0, 7, size=n).astype(dtype)  # repeats: scatter must add them all
    yy = dev(x)
    op("gather_add", dtype, yy, dev(table), dev(ids), n, w)
    close(host(yy), x + table[ids.astype(int)], dtype)
    tt = dev(table)
    op("scatter_add", dtype, tt, dev(dy), dev(ids), n, w)
    ref = table.astype(np.float64).copy()
    np.add.at(ref, ids.astype(int), dy.astype(np.float64))
    close(host(tt), ref, dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_copies_fill_repeat_expand(dtype):
    rng = np.random.default_rng(4)
    rows, cols, ld_src, ld_dst = 9, 5, 8, 11
    src = rand(rng, (rows, ld_src), dtype)
    dst0 = rand(rng, (rows, ld_dst), dtype)
    dd = dev(dst0)
    op("copy_cols", dtype, dd, ld_dst, dev(src), ld_src, rows, cols)
    ref = dst0.copy()
    ref[:, :cols] = src[:, :cols]
    assert np.array_equal(host(dd), ref)
    f = dev(np.zeros(100, dtype))
    op("fill", dtype, f, 100, 2.5)
    assert np.all(host(f) == 2.5)
    width, k = 6, 3
    src = rand(rng, (rows, width), dtype)
    out = dev(np.zeros((rows * k, width), dtype))
    op("repeat_rows", dtype, out, dev(src), rows, width, k)
    assert np.array_equal(host(out), np.repeat(src, k, axis=0))
    buf_rows = np.zeros((rows * k, width), dtype)
    buf_rows[:rows] = src
    b = dev(buf_rows)
    op("expand_rows", dtype, b, rows, width, k)
    assert np.array_equal(host(b), np.repeat(src, k, axis=0))


# ---- activations, embedding, norms --------------------------------------------------------------


def _gelu(x):
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    return 0.5 * x * (1 + np.tanh(u))


def _gelu_grad(x):
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    th = np.tanh(u)
    return 0.5 * (1 + th) + 0.5 * x * (1 - th ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_forward_backward(dtype):
    rng = np.random.default_rng(5)
    n = 4099
    x, dy = rand(rng, n, dtype, 3.0), rand(rng, n, dtype)
    xd = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-xd))
    cases = {"silu": (xd * sig, sig * (1 + xd * (1 - sig))), "gelu": (_gelu(xd), _gelu_grad(xd))}
    for name, (fwd, grad) in cases.items():
        y, dx = dev(np.zeros(n, dtype)), dev(np.zeros(n, dtype))
        op(f"{name}_forward", dtype, y, dev(x), n)
        op(f"{name}_backward", dtype, dx, dev(dy), dev(x), n)
        close(host(y), fwd, dtype, scale=5)
        close(host(dx), dy * grad, dtype, scale=5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_time_embedding(dtype):
    n, temb, ld = 13, 16, 20
    t = np.linspace(0, 1, n).astype(dtype)
    out = dev(np.zeros((n, ld), dtype))
    op("time_embedding", dtype, out, ld, dev(t), n, temb)
    half = temb // 2
    freq = np.exp(-np.log(10000.0) * np.arange(half) / half)
    ang = 1000.0 * t.astype(np.float64)[:, None] * freq
    got = host(out)
    close(got[:, :half], np.sin(ang), dtype, scale=50)
    close(got[:, half:temb], np.cos(ang), dtype, scale=50)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm_and_adaln(dtype):
    rng = np.random.default_rng(6)
    n, T, w, ld = 3, 5, 40, 2 * 40 + 7
    rows = n * T
    x = rand(rng, (rows, w), dtype, 2.0) + 1.0
    xhat, rstd = dev(np.zeros((rows, w), dtype)), dev(np.zeros(rows, dtype))
    op("layernorm_forward", dtype, xhat, rstd, dev(x), rows, w)
    xd = x.astype(np.float64)
    mu, var = xd.mean(1, keepdims=True), xd.var(1, keepdims=True)
    s = 1 / np.sqrt(var + 1e-6)
    ref_hat = (xd - mu) * s
    close(host(xhat), ref_hat, dtype, scale=10)
    close(host(rstd), s[:, 0], dtype, scale=10)
    g = rand(rng, (rows, w), dtype)
    dx0 = rand(rng, (rows, w), dtype)
    for accumulate in (0, 1):
        dx = dev(dx0)
        op("layernorm_backward", dtype, dx, dev(g), xhat, rstd, rows, w, accumulate)
        h = host(xhat).astype(np.float64)
        ref = s * (g - g.mean(1, keepdims=True) - h * (g * h).mean(1, keepdims=True))
        close(host(dx), ref + (dx0 if accumulate else 0), dtype, scale=20)
    # modulation: y = xhat (1 + scale[b]) + shift[b]; gated residual x += gate[b] a
    mod = rand(rng, (n, ld), dtype, 0.5)
    shift, scale = mod[:, :w], mod[:, w:2 * w]
    hat = host(xhat).reshape(n, T, w).astype(np.float64)
    y = dev(np.zeros((n, T, w), dtype))
    dmod = dev(np.zeros((n, ld), dtype))
    dm = dev(mod)
    op("modulate_forward", dtype, y, xhat, dm, (dm, w), ld, n, T, w)
    close(host(y), hat * (1 + scale[:, None]) + shift[:, None], dtype, scale=10)
    dyy = rand(rng, (n, T, w), dtype)
    dhat = dev(np.zeros((n, T, w), dtype))
    op("modulate_backward", dtype, dhat, dmod, (dmod, w), dev(dyy), xhat, (dm, w), ld, n, T, w)
    close(host(dhat), dyy * (1 + scale[:, None]), dtype, scale=10)
    gm = host(dmod)
    close(gm[:, :w], dyy.astype(np.float64).sum(1), dtype, scale=10)
    close(gm[:, w:2 * w], (dyy * hat).sum(1), dtype, scale=10)
    a = rand(rng, (n, T, w), dtype)
    xr0 = rand(rng, (n, T, w), dtype)
    xr = dev(xr0)
    op("gated_residual_forward", dtype, xr, dev(a), dm, ld, n, T, w)
    gate = mod[:, :w].astype(np.float64)
    close(host(xr), xr0 + gate[:, None] * a, dtype, scale=10)
    da, dgate = dev(np.zeros((n, T, w), dtype)), dev(np.zeros((n, ld), dtype))
    op("gated_residual_backward", dtype, da, dgate, dev(dyy), dev(a), dm, ld, n, T, w)
    close(host(da), gate[:, None] * dyy, dtype, scale=10)
    close(host(dgate)[:, :w], (dyy.astype(np.float64) * a).sum(1), dtype, scale=10)


# ---- attention, patches, guidance -----------------------------------------------------------------


def _attention_ref(qkv, n, T, w, heads):
    dh = w // heads
    q, k, v = (qkv.reshape(n, T, 3, heads, dh)[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(n * T, w)
    return o, p, (q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_forward_backward(dtype):
    rng = np.random.default_rng(7)
    n, T, w, heads = 3, 17, 24, 4
    dh = w // heads
    qkv = rand(rng, (n * T, 3 * w), dtype, 0.5)
    o, probs = dev(np.zeros((n * T, w), dtype)), dev(np.zeros((n, heads, T, T), dtype))
    op("attention_forward", dtype, o, probs, dev(qkv), n, T, w, heads)
    ro, rp, (q, k, v) = _attention_ref(qkv.astype(np.float64), n, T, w, heads)
    close(host(o), ro, dtype, scale=20)
    close(host(probs), rp, dtype, scale=20)
    g = rand(rng, (n * T, w), dtype)
    dqkv, dprobs = dev(np.zeros((n * T, 3 * w), dtype)), dev(np.zeros((n, heads, T, T), dtype))
    op("attention_backward", dtype, dqkv, dprobs, dev(g), dev(qkv), probs, n, T, w, heads)
    go = g.astype(np.float64).reshape(n, T, heads, dh).transpose(0, 2, 1, 3)
    dp = go @ v.transpose(0, 1, 3, 2)
    dv = rp.transpose(0, 1, 3, 2) @ go
    ds = rp * (dp - (dp * rp).sum(-1, keepdims=True))
    dq = ds @ k / math.sqrt(dh)
    dk = ds.transpose(0, 1, 3, 2) @ q / math.sqrt(dh)
    ref = np.stack([x.transpose(0, 2, 1, 3) for x in (dq, dk, dv)], axis=2).reshape(n * T, 3 * w)
    close(host(dqkv), ref, dtype, scale=50)


@pytest.mark.parametrize("dtype", DTYPES)
def test_patchify_round_trip(dtype):
    rng = np.random.default_rng(8)
    n, C, S, p = 2, 3, 8, 2
    G = S // p
    x = rand(rng, (n, C, S, S), dtype)
    tok = dev(np.zeros((n, G * G, C * p * p), dtype))
    op("patchify_forward", dtype, tok, dev(x), n, C, S, p)
    ref = x.reshape(n, C, G, p, G, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, G * G, C * p * p)
    assert np.array_equal(host(tok), ref)
    back = dev(np.zeros_like(x))
    op("patchify_backward", dtype, back, tok, n, C, S, p)
    assert np.array_equal(host(back), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_guidance_ops(dtype):
    rng = np.random.default_rng(9)
    n, dim, cd, scale = 5, 4, 3, 3.5
    m = n * dim
    u2 = rand(rng, 2 * m, dtype)
    out = dev(np.zeros(m, dtype))
    op("guided_combine", dtype, m, scale, dev(u2), out)
    close(host(out), u2[m:] + scale * (u2[:m].astype(np.float64) - u2[m:]), dtype)
    dout = rand(rng, m, dtype)
    du2 = dev(np.zeros(2 * m, dtype))
    op("guided_split", dtype, m, scale, dev(dout), du2)
    close(host(du2), np.concatenate([scale * dout, (1 - scale) * dout]), dtype)
    x, t, cond, null = (rand(rng, s, dtype) for s in ((n, dim), n, (n, cd), cd))
    x2, t2, c2 = dev(np.zeros((2 * n, dim), dtype)), dev(np.zeros(2 * n, dtype)), dev(np.zeros((2 * n, cd), dtype))
    op("guided_stack", dtype, n, dim, cd, dev(null), dev(x), dev(t), dev(cond), x2, t2, c2)
    assert np.array_equal(host(x2), np.concatenate([x, x]))
    assert np.array_equal(host(t2), np.concatenate([t, t]))
    assert np.array_equal(host(c2), np.concatenate([cond, np.broadcast_to(null, (n, cd))]))
    dx = dev(np.zeros(m, dtype))
    op("guided_sum_halves", dtype, m, dev(u2), dx)
    close(host(dx), u2[:m].astype(np.float64) + u2[m:], dtype)


# ---- random numbers: the CPU stream ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_fills_are_the_cpu_stream(dtype):
    seed, stream, offset, n = 123, int(_C.stream_id(3, 7, 0)), 5, 10007
    out = dev(np.zeros(n, dtype))
    op("fill_uniform", dtype, seed, stream, offset, n, out)
    ref = np.from_dlpack(_C.random("uniform", seed, stream, offset, n, dtype))
    assert np.array_equal(host(out).view(np.uint8), ref.view(np.uint8))  # bitwise
    op("fill_normal", dtype, seed, stream, offset, n, out)
    ref = np.from_dlpack(_C.random("normal", seed, stream, offset, n, dtype))
    got = host(out)
    # the words and the transform are the same; the device's log/sin/cos may differ in the last bit
    ulp = np.spacing(np.abs(ref).astype(dtype))
    assert np.all(np.abs(got - ref) <= 2 * ulp)
    idx = dev(np.zeros(n, np.int64))
    op("fill_index", dtype, seed, stream, offset, n, 1000, idx)
    words = np.from_dlpack(_C.random("u32", seed, stream, offset, n)).astype(np.uint64)
    assert np.array_equal(host(idx), ((words * np.uint64(1000)) >> np.uint64(32)).astype(np.int64))


# ---- the sampler step and its log-prob --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stochastic", [0, 1])
def test_sampler_step_heun_and_log_prob(dtype, stochastic):
    rng = np.random.default_rng(10)
    rows, dim, repeat = 33, 7, 3
    n = rows * dim
    x, u, z = (rand(rng, (rows, dim), dtype) for _ in range(3))
    c = StepCoef(t=0.6, t_next=0.5, dt=0.1, A=0.97, K=-0.08, std=0.3, stochastic=stochastic, heun=1,
                 v_x=0.2, v_u=1.1, v_x_next=0.3, v_u_next=0.9)
    zd, mean, xn = dev(z), dev(np.zeros_like(x)), dev(np.zeros_like(x))
    op("sampler_step", dtype, buf(c), n, dev(x), dev(u), zd, mean, xn)
    ref_mean = (np.asarray(c.A, dtype) * x + np.asarray(c.K, dtype) * u).astype(np.float64)
    close(host(mean), ref_mean, dtype)
    close(host(xn), ref_mean + (c.std * z if stochastic else 0), dtype)
    if not stochastic:
        assert np.all(host(zd) == 0)
    lp = dev(np.zeros(rows * repeat, dtype))
    op("step_log_prob", dtype, buf(c), rows, dim, xn, mean, lp, repeat)
    xnh, mh = host(xn).astype(np.float64), host(mean).astype(np.float64)
    ref = (-0.5 * (((xnh - mh) / c.std) ** 2).sum(1) - dim * (math.log(c.std) + 0.5 * math.log(2 * math.pi))
           if stochastic else np.zeros(rows))
    close(host(lp).reshape(rows, repeat), np.repeat(ref[:, None], repeat, 1), dtype, scale=10)
    xe = dev(np.zeros_like(x))
    op("heun_predict", dtype, buf(c), n, dev(x), dev(u), xe)
    ref_e = x - c.dt * (c.v_x * x.astype(np.float64) + c.v_u * u)
    close(host(xe), ref_e, dtype)
    u2 = rand(rng, (rows, dim), dtype)
    zz, mm, nn = dev(z), dev(np.zeros_like(x)), dev(np.zeros_like(x))
    op("heun_step", dtype, buf(c), n, dev(x), dev(u), xe, dev(u2), zz, mm, nn)
    v1 = c.v_x * x.astype(np.float64) + c.v_u * u
    v2 = c.v_x_next * host(xe).astype(np.float64) + c.v_u_next * u2
    close(host(nn), x - c.dt * 0.5 * (v1 + v2), dtype, scale=5)
    assert np.all(host(zz) == 0)


# ---- objective, reductions, pretraining batch, AdamW -----------------------------------------------


OBJECTIVE_CASES = [("score_matching", {}), ("score_matching", {"anchor_old": True}),
                   ("ppo", {}), ("ppo", {"linear_only": True}), ("log_ratio", {}),
                   ("matching", {}), ("ppo", {"mean_over_dims": True})]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form,kw", OBJECTIVE_CASES,
                         ids=[f"{f}-{'-'.join(k) or 'plain'}" for f, k in OBJECTIVE_CASES])
def test_objective_rows_and_cotangent(dtype, form, kw):
    from rsm.objective import FORMS, row_coefficients
    rng = np.random.default_rng(11)
    R, D = 23, 37
    u, uo, ur, psi, z = (rand(rng, (R, D), dtype, 0.1) for _ in range(5))
    weight = np.ones(R)
    weight[3] = 0.0
    coef = row_coefficients(R, conv=0.7, space=1.3, c1=0.5, gamma=0.2, c2=0.3,
                            adv=rng.normal(size=R), w=rng.uniform(0.5, 2, size=R), clip_eps=0.1,
                            kl=0.05, weight=weight)
    ref = rsm.objective.objective(form, u, coef, u_old=uo, u_ref=ur, psi=psi, noise=z,
                                  normalizer=7.0, **kw)
    cfg = ObjectiveConfig(form=FORMS.index(form), anchor_old=int(kw.get("anchor_old", False)),
                          linear_only=int(kw.get("linear_only", False)),
                          mean_over_dims=int(kw.get("mean_over_dims", False)), normalizer=7.0)
    cot = dev(np.zeros((R, D), dtype))
    log_ratio, active, stats = np.zeros(R), np.zeros(R, np.uint8), buf(ObjectiveStats())
    status = op("objective", dtype, buf(cfg), R, D, np.ascontiguousarray(coef), dev(u), dev(uo),
                dev(ur), dev(psi), dev(z), cot, log_ratio, active, stats)
    assert status == 0
    st = ObjectiveStats.from_buffer(stats)
    close(st.loss, ref["loss"], dtype, scale=10)
    close(host(cot), np.from_dlpack(ref["cotangent"]), dtype, scale=10)
    np.testing.assert_allclose(log_ratio, np.from_dlpack(ref["log_ratio"]), rtol=1e-6, atol=1e-9)
    assert np.array_equal(active.astype(bool), np.from_dlpack(ref["active"]).astype(bool))
    np.testing.assert_allclose(st.clip_fraction, ref["clip_fraction"], rtol=1e-12)
    close(st.kl, ref["kl"], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_sq_diff_and_mse_seed_are_deterministic(dtype):
    rng = np.random.default_rng(12)
    n = 300007
    a, b = rand(rng, n, dtype), rand(rng, n, dtype)
    da, db = dev(a), dev(b)
    ref = ((a.astype(np.float64) - b) ** 2).sum()
    s1 = op("sum_sq_diff", dtype, n, da, db)
    assert s1 == op("sum_sq_diff", dtype, n, da, db)  # the same bits run to run
    np.testing.assert_allclose(s1, ref, rtol=1e-12)
    np.testing.assert_allclose(op("sum_sq_diff", dtype, n, da, None), (a.astype(np.float64) ** 2).sum(),
                               rtol=1e-12)
    pred = dev(a)
    loss = op("mse_seed", dtype, n, pred, db, 0.5)
    diff = (a - b).astype(dtype)
    np.testing.assert_allclose(loss, (diff.astype(np.float64) ** 2).sum(), rtol=1e-12)
    assert np.array_equal(host(pred), (np.asarray(0.5, dtype) * diff).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pathname", ["flow", "vp"])
def test_pretrain_batch(dtype, pathname):
    path = rsm.FlowPath() if pathname == "flow" else rsm.VPPath()
    rng = np.random.default_rng(13)
    n, D, C, rows = 16, 3, 2, 40
    data, data_cond = rand(rng, (rows, D), dtype), rand(rng, (rows, C), dtype)
    null = rand(rng, C, dtype)
    index = rng.integers(0, rows, size=n).astype(np.int64)
    u_time, u_drop = rng.uniform(size=n), rng.uniform(size=n)
    eps = rand(rng, (n, D), dtype)
    d_null = dev(null)
    cfg = PretrainConfig(batch_size=n, t_min=1e-3, t_max=1.0, cond_dropout=0.3,
                         null_cond=device_ptr(d_null))
    core = path._core
    p = Path(kind=0 if pathname == "flow" else 1, schedule=0, beta_min=0.1, beta_max=20.0,
             cosine_s=0.008)
    t, xt, target, cond = (dev(np.zeros(s, dtype)) for s in (n, (n, D), (n, D), (n, C)))
    op("pretrain_batch", dtype, buf(p), buf(cfg), n, D, C, dev(data), dev(data_cond), dev(index),
       dev(u_time), dev(u_drop), dev(eps), t, xt, target, cond)
    tt = (1e-3 + (1.0 - 1e-3) * u_time).astype(dtype)
    assert np.array_equal(host(t), tt)
    c = np.from_dlpack(core.coefs(tt.astype(np.float64)))
    x0, e = data[index].astype(np.float64), eps.astype(np.float64)
    close(host(xt), c[:, :1] * x0 + c[:, 1:2] * e, dtype)
    tgt = c[:, 2:3] * x0 + c[:, 3:4] * e if core.native_param == 1 else e
    close(host(target), tgt, dtype)
    ref_cond = np.where((u_drop < 0.3)[:, None], null[None], data_cond[index])
    assert np.array_equal(host(cond), ref_cond)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_step_and_nonfinite_refusal(dtype):
    rng = np.random.default_rng(14)
    n = 5003
    p0, g0 = rand(rng, n, dtype), rand(rng, n, dtype)
    m, v = dev(np.zeros(n, dtype)), dev(np.zeros(n, dtype))
    params, grads = dev(p0), dev(g0)
    opt = AdamW(config=AdamWConfig(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                                   max_grad_norm=1.0, ema_decay=0.0),
                dtype=0 if dtype == "float32" else 1, num_params=n, step=0, m=device_ptr(m),
                v=device_ptr(v), ema=None)
    ob, norm = buf(opt), np.zeros(1)
    assert op("adamw_step", dtype, ob, params, grads, 1e-2, norm) == 0
    assert AdamW.from_buffer(ob).step == 1
    g = g0.astype(np.float64)
    gn = np.linalg.norm(g)
    np.testing.assert_allclose(norm[0], gn, rtol=1e-12)
    g = g * min(1.0, 1.0 / (gn + 1e-6))
    p = p0 * (1 - 1e-2 * 0.01)
    mm, vv = 0.1 * g, 0.001 * g * g
    p = p - (1e-2 / 0.1) * mm / (np.sqrt(vv) / math.sqrt(0.001) + 1e-8)
    close(host(params), p, dtype, scale=50)
    bad = g0.copy()
    bad[7] = np.nan
    before = host(params)
    RSM_ERR_NUMERIC = 8  # status.h: the loop raises FloatingPointError with the message
    assert op("adamw_step", dtype, ob, params, dev(bad), 1e-2, norm) == RSM_ERR_NUMERIC
    assert np.array_equal(host(params), before) and AdamW.from_buffer(ob).step == 1


def test_a_failed_op_reaches_the_caller_as_the_loops_status():
    with pytest.raises((RuntimeError, ValueError), match="backend op|has no op"):
        op("no_such_op", "float32")
    with pytest.raises((RuntimeError, ValueError), match="takes 3 arguments"):
        op("fill", "float32", 1, 2)


# ---- part 2: the C loops on the device (fail with NotImplementedError until ported) ---------------


SAMPLERS = [("flow", "ode", {}), ("flow", "sde", {}), ("flow", "heun", {}),
            ("vp", "ddim", {"eta": 0.5}), ("vp", "ddpm", {}), ("vp", "sde", {}),
            ("flow", "sde", {"sde_window": (1, 4)})]


def _host_array(x):
    """A reward's samples as numpy: on the GPU path they arrive as a device tensor (DLPack)."""
    on_device = hasattr(x, "__dlpack_device__") and x.__dlpack_device__()[0] == 2
    return rc.to_host(x) if on_device else np.from_dlpack(x)


def _mlp(dtype, dim=2, seed=0):
    m = rsm.MLP(dim, 32, 2, temb_dim=16, seed=seed, dtype=dtype)
    p = np.from_dlpack(m.params)
    p[...] = np.random.default_rng(seed + 100).normal(size=p.shape).astype(dtype) * 0.3
    return m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pathname,sampler,kw", SAMPLERS,
                         ids=[f"{p}-{s}{'-win' if k.get('sde_window') else ''}" for p, s, k in SAMPLERS])
def test_every_sampler_trajectory_and_log_probs_match_the_cpu(dtype, pathname, sampler, kw):
    path = rsm.FlowPath() if pathname == "flow" else rsm.VPPath()
    m = _mlp(dtype, dim=4)
    cpu = rsm.sample(m, 64, path, sampler=sampler, steps=6, seed=5, return_trajectory=True, **kw)
    gpu = rc.sample(m.to("cuda"), 64, path, sampler=sampler, steps=6, seed=5,
                    return_trajectory=True, **kw)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == "float64" else dict(rtol=5e-4, atol=5e-5)
    for field in ("xs", "outputs", "means", "noises", "log_probs", "stds"):
        assert getattr(gpu, field).__dlpack_device__() == (2, 0), field  # results stay on the device
        np.testing.assert_allclose(host(getattr(gpu, field)), getattr(cpu, field), **tol)
    np.testing.assert_array_equal(gpu.rows, cpu.rows)  # row counters: host on every device
    np.testing.assert_allclose(host(gpu.x), cpu.x, **tol)


@pytest.mark.parametrize("method", rsm.methods.names())
def test_every_preset_one_iteration_matches_the_cpu(method):
    """One Trainer iteration of every preset (its gradient through the update) on the GPU and on
    the CPU, float64, same seed: the same parameters to rounding."""
    preset = rsm.methods.get(method)
    path = rsm.VPPath("linear") if preset.get("path", "flow") == "vp" else rsm.FlowPath()
    ref = _mlp("float64", seed=3)
    diff = preset["family"] != "zeroth-order"

    def reward(x0, cond=None):
        d = _host_array(x0) - np.array([1.5, 0.0])
        return (-0.5 * (d ** 2).sum(1), -d) if diff else -0.5 * (d ** 2).sum(1)

    rw = rsm.Reward(reward, differentiable=True) if diff else reward
    kw = dict(batch_size=4, group_size=8 if method == "branch-grpo" else 4, seed=5, kl_every=0)
    cpu_policy, gpu_policy = ref.copy(), ref.copy()
    rsm.Trainer(gpu_policy, ref, rw, method, path=path, device="cuda", **kw).step()  # GPU first:
    rsm.Trainer(cpu_policy, ref, rw, method, path=path, **kw).step()  # an unported loop fails fast
    np.testing.assert_allclose(np.from_dlpack(gpu_policy.params), np.from_dlpack(cpu_policy.params),
                               rtol=1e-8, atol=1e-10)


def test_whole_trainer_iteration_float32_matches_the_cpu():
    ref = _mlp("float32", seed=4)
    reward = lambda x0, cond=None: -0.5 * (_host_array(x0) ** 2).sum(1)  # noqa: E731
    cpu_policy, gpu_policy = ref.copy(), ref.copy()
    kw = dict(batch_size=8, group_size=4, seed=2, kl_every=0)
    b = rsm.Trainer(gpu_policy, ref, reward, "flow-grpo", device="cuda", **kw).step()
    a = rsm.Trainer(cpu_policy, ref, reward, "flow-grpo", **kw).step()
    np.testing.assert_allclose(b["reward_mean"], a["reward_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.from_dlpack(gpu_policy.params), np.from_dlpack(cpu_policy.params),
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("pathname", ["flow", "vp"])
def test_pretraining_matches_the_cpu(pathname):
    path = rsm.FlowPath() if pathname == "flow" else rsm.VPPath()
    data = np.random.default_rng(3).normal(size=(256, 2))
    m = _mlp("float64", seed=1)
    cpu = rsm.pretrain(m.copy(), data, path, steps=10, batch_size=32, seed=7, progress=False)
    cpu_model, gpu_model = m.copy(), m.to("cuda")
    cpu = rsm.pretrain(cpu_model, data, path, steps=10, batch_size=32, seed=7, progress=False)
    gpu = rc.pretrain(gpu_model, rc.to_device(data), path, steps=10, batch_size=32, seed=7,
                      progress=False)
    np.testing.assert_allclose(gpu.column("loss"), cpu.column("loss"), rtol=1e-9)
    np.testing.assert_allclose(host(gpu_model.params), np.from_dlpack(cpu_model.params),
                               rtol=1e-8, atol=1e-10)


# ---- part 3: a model on the device (the binding: device_py.c, mlp_py.c, model_py.c) ---------


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_mlp_forward_vjp_backward_match_the_cpu(dtype):
    m = _mlp(dtype, dim=3, seed=2)
    g = m.to("cuda")
    assert g.device == "cuda:0" and g is not m and g.to("cuda:0") is g
    np.testing.assert_array_equal(host(g.params), np.from_dlpack(m.params))  # copied exactly
    rng = np.random.default_rng(0)
    x, t = rand(rng, (16, 3), dtype), rng.uniform(0, 1, 16).astype(dtype)
    cot = rand(rng, (16, 3), dtype)
    tol = TOL[dtype]
    out = g(dev(x), dev(t))
    assert out.__dlpack_device__() == (2, 0)
    np.testing.assert_allclose(host(out), np.from_dlpack(m(x, t)), **tol)
    dx, dp = g.vjp(dev(x), 0.3, dev(cot))  # a host scalar time goes to the device
    rdx, rdp = m.vjp(x, 0.3, cot)
    np.testing.assert_allclose(host(dx), np.from_dlpack(rdx), **tol)
    np.testing.assert_allclose(host(dp), np.from_dlpack(rdp), **tol)
    out, token = g.forward_keep(dev(x), dev(t))
    dx, dp = g.backward(dev(cot), token)
    rout, rtoken = m.forward_keep(x, t)
    rdx, rdp = m.backward(cot, rtoken)
    np.testing.assert_allclose(host(dp), np.from_dlpack(rdp), **tol)
    back = g.to("cpu")
    np.testing.assert_array_equal(np.from_dlpack(back.params), np.from_dlpack(m.params))


def test_device_mlp_refuses_host_and_mistyped_arrays_naming_them():
    g = _mlp("float32").to("cuda")
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="x is on .*runs on a CUDA device"):
        g(x, 0.5)
    with pytest.raises(TypeError, match="x has another dtype"):
        g(dev(x, "float64"), 0.5)
    with pytest.raises(ValueError, match=r"x\[0\] is nan"):
        g(dev(np.full((4, 2), np.nan, np.float32)), 0.5)
    with pytest.raises(ValueError, match="times must be finite and in"):
        g(dev(x), dev(np.full(4, 2.0, np.float32)))


def test_device_mlp_same_seed_same_parameters_and_reset():
    a = rsm.MLP(2, 16, 2, seed=9, device="cuda")
    b = rsm.MLP(2, 16, 2, seed=9)
    np.testing.assert_array_equal(host(a.params), np.from_dlpack(b.params))
    a._core.reset_parameters(4)
    b._core.reset_parameters(4)
    np.testing.assert_array_equal(host(a.params), np.from_dlpack(b.params))


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_adamw_step_matches_the_cpu(dtype):
    m = _mlp(dtype, seed=6)
    g = m.to("cuda")
    grads = np.random.default_rng(1).normal(size=m.num_params).astype(dtype)
    oc = rsm.AdamW(m, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, ema_decay=0.9)
    og = rsm.AdamW(g, lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, ema_decay=0.9)
    assert og._core.m.__dlpack_device__() == (2, 0)
    for _ in range(3):
        nc = oc.step(grads.copy())
        ng = og.step(dev(grads))
        np.testing.assert_allclose(ng, nc, rtol=1e-6 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(host(g.params), np.from_dlpack(m.params), **TOL[dtype])
    np.testing.assert_allclose(host(og._core.ema), np.from_dlpack(oc._core.ema), **TOL[dtype])


def test_reward_receives_device_samples_zero_copy():
    g = _mlp("float32").to("cuda")
    seen = {}

    def reward(x):
        seen["device"] = x.__dlpack_device__()
        return 1.0

    x, r = rsm.sample(g, 8, rsm.FlowPath(), "sde", steps=3, reward=reward)
    assert seen["device"] == (2, 0) and r == 1.0 and x.__dlpack_device__() == (2, 0)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        xt = torch.from_dlpack(x)
        assert xt.is_cuda and xt.data_ptr() == torch.from_dlpack(x).data_ptr()


@pytest.mark.parametrize("dtype", DTYPES)
def test_device_dit_forward_vjp_and_sampling_match_the_cpu(dtype):
    d = rsm.DiT(8, 2, 2, 32, 2, 4, 5, seed=3, dtype=dtype)
    p = np.from_dlpack(d.params)
    p[...] = np.random.default_rng(1).normal(size=p.shape).astype(dtype) * 0.05  # past adaLN-Zero
    g = d.to("cuda")
    assert g.device == "cuda:0"
    np.testing.assert_array_equal(host(g.params), p)
    rng = np.random.default_rng(2)
    x, t = rand(rng, (6, d.dim), dtype), rng.uniform(0, 1, 6).astype(dtype)
    cot, ids = rand(rng, (6, d.dim), dtype), np.array([0, 1, 2, 3, 4, 5])
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(host(g(dev(x), dev(t), ids)), np.from_dlpack(d(x, t, ids)), **tol)
    dx, dp = g.vjp(dev(x), dev(t), dev(cot), ids)
    rdx, rdp = d.vjp(x, t, cot, ids)
    np.testing.assert_allclose(host(dx), np.from_dlpack(rdx), **tol)
    np.testing.assert_allclose(host(dp), np.from_dlpack(rdp), **tol)
    cpu = rsm.sample(d, 6, rsm.FlowPath(), "sde", steps=4, seed=1, cond=ids, return_trajectory=True)
    gpu = rsm.sample(g, 6, rsm.FlowPath(), "sde", steps=4, seed=1, cond=ids, return_trajectory=True)
    np.testing.assert_allclose(host(gpu.xs), cpu.xs, **tol)
    np.testing.assert_allclose(host(gpu.log_probs), cpu.log_probs, **tol)
    with pytest.raises(NotImplementedError, match="LoRA adapters on a CUDA device"):
        rsm.lora(g, rank=2)


def test_device_pretrain_optimizer_state_comes_back_to_the_host():
    g = _mlp("float32", seed=8).to("cuda")
    opt = rsm.AdamW(g, lr=1e-3, ema_decay=0.9)
    rc.pretrain(g, np.random.default_rng(0).normal(size=(64, 2)), rsm.FlowPath(), steps=3,
                batch_size=16, optimizer=opt, progress=False)
    state = opt.state_dict()
    assert state["step"] == 3 and state["m"].shape == (g.num_params,) and np.all(state["v"] >= 0)
    with pytest.raises(RuntimeError, match="load_state_dict.*cuda:0"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="different devices"):
        _C.pretrain_steps(g._core, rsm.AdamW(_mlp("float32"))._core, rsm.FlowPath()._core,
                          rc.to_device(np.zeros((8, 2), np.float32)), None, 4, 0.0, 1.0, 1e-3,
                          0, 0, 0, 1)
