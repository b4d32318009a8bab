"""Models on a device, host side (issue 13's wiring: csrc/python/device_py.c, mlp_py.c, optim_py.c,
rsm.MLP(..., device=...)): the CPU path is unchanged bitwise, the device argument is parsed and
refused with its reason where CUDA cannot be used, the backend argument of the cores is checked.
The device runs themselves are tests/test_cuda_device.py (skipped without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

import rsm
from rsm import _C


def test_cpu_device_is_the_default_model_bitwise():
    a = rsm.MLP(3, 16, 2, cond_dim=2, seed=4)
    for device in (None, "cpu"):
        b = rsm.MLP(3, 16, 2, cond_dim=2, seed=4, device=device)
        assert b.device == "cpu"
        np.testing.assert_array_equal(np.from_dlpack(b.params), np.from_dlpack(a.params))
    assert a.to("cpu") is a and a.to(None) is a
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    c = np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(np.from_dlpack(b(x, 0.4, c)), np.from_dlpack(a(x, 0.4, c)))


def test_copy_and_load_params_go_through_set_params():
    a = rsm.MLP(2, 8, 1, seed=1)
    p = np.random.default_rng(2).normal(size=a.num_params).astype(np.float32)
    a.load_params(p)
    np.testing.assert_array_equal(np.from_dlpack(a.params), p)
    b = a.copy()
    np.testing.assert_array_equal(np.from_dlpack(b.params), p)
    with pytest.raises(ValueError, match="params"):
        a._core.set_params(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="params has dtype float64"):
        a._core.set_params(np.zeros(a.num_params, np.float64))
    np.testing.assert_array_equal(np.from_dlpack(a.params), p)  # unchanged after the refusals


def test_backend_arguments_are_checked_naming_them():
    with pytest.raises(TypeError, match=r"MLP\(\): backend must be None"):
        _C.MLPCore(2, backend=3)
    m = rsm.MLP(2, 8, 1)
    with pytest.raises(TypeError, match=r"AdamW\(\): backend must be None"):
        _C.AdamWCore(m.params, backend="cuda")
    with pytest.raises(ValueError, match="device must be"):
        rsm.MLP(2, 8, 1, device="gpu")


@pytest.mark.skipif(rsm.cuda_available(), reason="CUDA is usable here: tests/test_cuda_device.py")
def test_a_device_model_without_cuda_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match="not available"):
        rsm.MLP(2, 8, 1, device="cuda")
    with pytest.raises(RuntimeError, match="not available"):
        rsm.MLP(2, 8, 1).to("cuda:0")


def test_dit_cpu_device_copy_and_backend_argument():
    d = rsm.DiT(4, 1, 2, 16, 1, 2, 3, seed=2)
    assert d.device == "cpu" and d.to("cpu") is d
    e = d.copy()
    np.testing.assert_array_equal(np.from_dlpack(e.params), np.from_dlpack(d.params))
    assert e.num_params == d.num_params == np.from_dlpack(d.params).shape[0]
    with pytest.raises(TypeError, match=r"DiT\(\): backend must be None"):
        _C.DiTCore(4, 1, 2, 16, 1, 2, 3, backend=1)
    if not rsm.cuda_available():
        with pytest.raises(RuntimeError, match="not available"):
            rsm.DiT(4, 1, 2, 16, 1, 2, 3, device="cuda")


def test_adamw_state_dict_is_host_numpy_on_the_cpu_unchanged():
    m = rsm.MLP(2, 8, 1, seed=3)
    opt = rsm.AdamW(m, lr=1e-2, ema_decay=0.5)
    opt.step(np.ones(m.num_params, np.float32))
    state = opt.state_dict()
    for key in ("m", "v", "ema"):
        assert isinstance(state[key], np.ndarray)
        np.testing.assert_array_equal(state[key], np.from_dlpack(getattr(opt._core, key)))
    other = rsm.AdamW(m, lr=1e-2, ema_decay=0.5)
    other.load_state_dict(state)
    np.testing.assert_array_equal(np.from_dlpack(other._core.v), state["v"])
