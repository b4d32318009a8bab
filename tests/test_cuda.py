"""CPU/GPU parity of rsm.cuda's kernels (memory, DLPack exchange, Philox, SiLU, the MLP, AdamW)
against the CPU on the same inputs. The backend table and the C loops on the device:
tests/test_cuda_device.py.

Skipped (with the reason) without a CUDA device. Tolerances: float64 runs agree to rounding
(the order of the sums and the device's libm differ, the formulas do not); float32 within
float32 rounding of the CPU; the raw Philox words bitwise.
"""
from __future__ import annotations

import numpy as np
import pytest

import rsm
import rsm.cuda as rc
from rsm import _C

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not rsm.cuda_available(),
                                 reason=f"no CUDA device: {rsm.build_info()['cuda_reason']}")]

TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=2e-4, atol=2e-5)}
DTYPES = ["float32", "float64"]


def host(t):
    return rc.to_host(t)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def mlp(dtype, dim=3, hidden=32, depth=2, cond_dim=0, seed=0):
    m = rsm.MLP(dim, hidden, depth, cond_dim=cond_dim, temb_dim=16, seed=seed, dtype=dtype)
    # the output layer starts at zero: give every parameter a value so gradients are not trivial
    p = np.from_dlpack(m.params)
    p[...] = np.random.default_rng(seed + 100).normal(size=p.shape).astype(dtype) * 0.3
    return m


# ---- memory, streams, DLPack -------------------------------------------------------------------


def test_round_trip_and_device():
    a = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    t = rc.to_device(a)
    assert t.device == "cuda:0" and t.shape == (5, 7) and t.__dlpack_device__() == (2, 0)
    assert np.array_equal(host(t), a)
    assert "device memory" in repr(t)
    with pytest.raises((BufferError, ValueError, TypeError, RuntimeError)):
        np.asarray(t)  # no implicit device->host copy


def test_cpu_functions_refuse_device_tensors_naming_the_argument():
    m = rsm.MLP(2, 8, 1)
    x = rc.to_device(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="x is on cuda:0; this function runs on the CPU"):
        m(x, 0.5)


def test_caching_allocator_reuses_blocks():
    rc.synchronize()
    for _ in range(3):
        rc.empty((1000,))  # freed at once: back on the free list
    before = rc.memory_stats()
    for _ in range(50):
        rc.empty((1000,))
        rc.empty((300, 3), "float64")
    after = rc.memory_stats()
    assert after["num_device_mallocs"] <= before["num_device_mallocs"] + 1
    assert after["num_cache_hits"] >= before["num_cache_hits"] + 99
    rc.empty_cache()
    assert rc.memory_stats()["reserved_bytes"] <= after["reserved_bytes"]


def test_torch_exchange_zero_copy_with_streams():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        a = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4) * 2
        t = rsm.from_dlpack(a)  # the producer's stream is ordered before rsm's
    assert t.device == "cuda:0" and t.shape == (3, 4)
    assert np.array_equal(host(t), (np.arange(12, dtype=np.float32) * 2).reshape(3, 4))
    # rsm writes, torch reads the same memory (rsm's stream ordered before torch's)
    rc._mod().fill_normal(t, 3, 0)
    b = torch.from_dlpack(t)
    assert b.data_ptr() == a.data_ptr()
    ref = np.from_dlpack(_C.random("normal", 3, 0, 0, 12, "float32")).reshape(3, 4)
    np.testing.assert_allclose(b.cpu().numpy(), ref, rtol=1e-6, atol=1e-6)
    # an rsm-allocated tensor into torch and back
    u = rc.to_device(np.ones(5, np.float32))
    tu = torch.from_dlpack(u)
    tu += 1
    torch.cuda.synchronize()  # torch's write is on torch's stream: DLPack orders only the export
    assert np.array_equal(host(u), np.full(5, 2, np.float32))


def test_cupy_exchange():
    cp = pytest.importorskip("cupy")
    a = cp.arange(6, dtype=cp.float64)
    t = rsm.from_dlpack(a)
    assert t.device == "cuda:0" and np.array_equal(host(t), np.arange(6.0))
    back = cp.from_dlpack(t)
    assert back.data.ptr == a.data.ptr


def test_jax_exchange():
    jax = pytest.importorskip("jax")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("jax without a GPU")
    import jax.numpy as jnp
    a = jnp.arange(8, dtype=jnp.float32)
    t = rsm.from_dlpack(a)
    assert np.array_equal(host(t), np.arange(8, dtype=np.float32))
    back = jnp.from_dlpack(t)
    assert np.array_equal(np.asarray(back), np.arange(8, dtype=np.float32))


def test_kernel_arguments_are_checked():
    cuda = rc._mod()
    x = rc.to_device(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="y"):
        cuda.silu_forward(x, rc.to_device(np.zeros(4, np.float64)))
    with pytest.raises(ValueError, match="y has 2 elements"):
        cuda.silu_forward(x, rc.to_device(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match="y is on cpu; this function runs on a CUDA device"):
        cuda.silu_forward(x, np.zeros(4, np.float32))


# ---- random numbers ------------------------------------------------------------------------------


def test_philox_words_bitwise():
    for seed, stream, offset, n in ((0, 0, 0, 1000), (2**40 + 3, int(_C.stream_id(3, 7, 0)), 5, 333)):
        got = host(rc.philox_u32(n, seed, stream, offset))
        ref = np.from_dlpack(_C.random("u32", seed, stream, offset, n))
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_philox_normals(dtype):
    seed, stream = 9, int(_C.stream_id(2, 0, 0))
    for offset, n in ((0, 4096), (3, 1001)):
        got = host(rc.normal(n, seed, stream, offset, dtype))
        ref = np.from_dlpack(_C.random("normal", seed, stream, offset, n, dtype))
        # the same words and formula; CUDA's log/cos/sin may differ from libm in the last bit
        np.testing.assert_allclose(got, ref, rtol=1e-13 if dtype == "float64" else 1e-6,
                                   atol=1e-13 if dtype == "float64" else 1e-6)
        if dtype == "float32":
            assert np.mean(got == ref) > 0.999  # float32 rounding hides the libm differences


# ---- elementwise and the MLP -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_forward_backward(dtype):
    x = np.random.default_rng(1).normal(size=5000).astype(dtype) * 6
    dy = np.random.default_rng(2).normal(size=5000).astype(dtype)
    y, dx = rc.empty(5000, dtype), rc.empty(5000, dtype)
    rc._mod().silu_forward(rc.to_device(x), y)
    rc._mod().silu_backward(rc.to_device(dy), rc.to_device(x), dx)
    xd = x.astype(np.float64)
    s = 1 / (1 + np.exp(-xd))
    np.testing.assert_allclose(host(y), xd * s, **TOL[dtype])
    np.testing.assert_allclose(host(dx), dy * s * (1 + xd * (1 - s)), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cond_dim", [0, 3])
def test_mlp_forward_backward_parity(dtype, cond_dim):
    m = mlp(dtype, cond_dim=cond_dim)
    rng = np.random.default_rng(4)
    n = 37
    x = rng.normal(size=(n, 3)).astype(dtype)
    t = rng.uniform(size=n).astype(dtype)
    cond = rng.normal(size=(n, cond_dim)).astype(dtype) if cond_dim else None
    cot = rng.normal(size=(n, 3)).astype(dtype)
    out_cpu, dx_cpu, dp_cpu = m.forward_and_vjp(x, t, cot, cond)
    g = rc.DeviceMLP(m)
    out = g.forward(rc.to_device(x), rc.to_device(t), rc.to_device(cond) if cond_dim else None)
    dparams, dx = rc.zeros(m.num_params, dtype), rc.empty((n, 3), dtype)
    g.backward(rc.to_device(cot), dparams, dx)
    tol = 1e-11 if dtype == "float64" else 2e-5
    assert rel_err(host(out), np.from_dlpack(out_cpu)) < tol
    assert rel_err(host(dx), np.from_dlpack(dx_cpu)) < tol
    assert rel_err(host(dparams), np.from_dlpack(dp_cpu)) < tol
    # dparams accumulates (+=): a second backward doubles it
    g.backward(rc.to_device(cot), dparams, None)
    assert rel_err(host(dparams), 2 * np.from_dlpack(dp_cpu)) < tol


def test_tf32_option_is_off_by_default_and_close():
    assert not rc.tf32_enabled()
    m = mlp("float32", hidden=256)
    x = rc.to_device(np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32))
    t = rc.to_device(np.full(512, 0.3, np.float32))
    g = rc.DeviceMLP(m)
    exact = host(g.forward(x, t))
    rc.set_tf32(True)
    try:
        fast = host(g.forward(x, t))
    finally:
        rc.set_tf32(False)
    assert rel_err(fast, exact) < 1e-2


# ---- AdamW ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_parity(dtype):
    m = mlp(dtype)
    cpu = m.copy()
    opt = rsm.AdamW(cpu, lr=3e-3, weight_decay=0.01, max_grad_norm=0.5, ema_decay=0.9)
    g = rc.DeviceMLP(m)
    gopt = rc.AdamW(g, lr=3e-3, weight_decay=0.01, max_grad_norm=0.5, ema_decay=0.9)
    rng = np.random.default_rng(0)
    for k in range(5):
        grads = rng.normal(size=m.num_params).astype(dtype) * (0.1 if k % 2 else 10)
        norm = opt.step(grads.copy())
        rc._mod().copy(gopt.grads, grads)
        gnorm = gopt.step()
        np.testing.assert_allclose(gnorm, norm, rtol=1e-12 if dtype == "float64" else 1e-6)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert rel_err(host(g.params), np.from_dlpack(cpu.params)) < tol
    assert rel_err(host(gopt.m), np.from_dlpack(opt._core.m)) < tol
    assert rel_err(host(gopt.v), np.from_dlpack(opt._core.v)) < tol
    assert rel_err(host(gopt.ema), np.from_dlpack(opt.ema)) < tol
    # a non-finite gradient changes nothing
    before = host(g.params)
    rc._mod().copy(gopt.grads, np.full(m.num_params, np.nan, dtype))
    with pytest.raises(FloatingPointError):
        gopt.step()
    assert np.array_equal(host(g.params), before)


# ---- training runs -------------------------------------------------------------------------------
