"""Each op of the DiT (csrc/ops/*): forward against an independent numpy formula, backward
against central finite differences in float64, through the test hook _C.dit_op.

L(inputs) = <cotangent, op(inputs)>, so the op's backward must return dL/d input for every
input. Tolerance |fd - g| <= atol + rtol |g| with rtol = 1e-6 and atol = 1e-8 * sum|cot * out|
(the rounding of L at eps = 1e-6; see tests/test_mlp_grad.py for the derivation).
"""
from __future__ import annotations

import numpy as np
import pytest

from rsm import _C

EPS = 1e-6
RTOL = 1e-6


def run(name, sizes, inputs, cot):
    out, grads = _C.dit_op(name, sizes, [np.ascontiguousarray(a, dtype=np.float64).ravel() for a in inputs],
                           np.ascontiguousarray(cot, dtype=np.float64).ravel())
    return np.from_dlpack(out).copy(), [np.from_dlpack(g).copy() for g in grads]


def check_fd(name, sizes, inputs, cot):
    """Every element of every input: central difference of <cot, op> against the backward."""
    inputs = [np.asarray(a, dtype=np.float64).ravel().copy() for a in inputs]
    out, grads = run(name, sizes, inputs, cot)
    scale = float(np.sum(np.abs(cot.ravel() * out)))
    atol = 1e-8 * max(scale, 1e-3)
    for k, arr in enumerate(inputs):
        fd = np.empty_like(arr)
        for i in range(arr.size):
            plus = [a.copy() for a in inputs]
            minus = [a.copy() for a in inputs]
            plus[k][i] += EPS
            minus[k][i] -= EPS
            lp = float(np.dot(cot.ravel(), run(name, sizes, plus, cot)[0]))
            lm = float(np.dot(cot.ravel(), run(name, sizes, minus, cot)[0]))
            fd[i] = (lp - lm) / (2 * EPS)
        bad = np.abs(fd - grads[k]) > atol + RTOL * np.abs(grads[k])
        assert not bad.any(), (name, k, np.flatnonzero(bad)[:5], fd[bad][:5], grads[k][bad][:5])
        assert np.abs(grads[k]).max() > 1e-3  # the check is not vacuous
    return out


def test_layernorm():
    rng = np.random.default_rng(0)
    rows, w = 3, 6
    x = rng.normal(size=(rows, w)) * 2 + 1
    cot = rng.normal(size=(rows, w))
    out = check_fd("layernorm", (rows, w), [x], cot)
    want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out.reshape(rows, w), want, rtol=1e-12, atol=1e-12)


def test_modulate():
    rng = np.random.default_rng(1)
    n, t, w = 2, 3, 4
    xhat, shift, scale = rng.normal(size=(n, t, w)), rng.normal(size=(n, w)), rng.normal(size=(n, w))
    cot = rng.normal(size=(n, t, w))
    out = check_fd("modulate", (n, t, w), [xhat, shift, scale], cot)
    want = xhat * (1 + scale[:, None, :]) + shift[:, None, :]
    np.testing.assert_allclose(out.reshape(n, t, w), want, rtol=1e-12, atol=1e-15)


def test_gated_residual():
    rng = np.random.default_rng(2)
    n, t, w = 2, 3, 4
    x, a, gate = rng.normal(size=(n, t, w)), rng.normal(size=(n, t, w)), rng.normal(size=(n, w))
    cot = rng.normal(size=(n, t, w))
    out = check_fd("gated_residual", (n, t, w), [x, a, gate], cot)
    np.testing.assert_allclose(out.reshape(n, t, w), x + gate[:, None, :] * a, rtol=1e-14)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_softmax(heads):
    rng = np.random.default_rng(3 + heads)
    n, t, w = 2, 3, 4
    qkv = rng.normal(size=(n, t, 3 * w))
    cot = rng.normal(size=(n, t, w))
    out = check_fd("attention", (n, t, w, heads), [qkv], cot)
    dh = w // heads
    want = np.empty((n, t, w))
    for b in range(n):
        for h in range(heads):
            q = qkv[b, :, h * dh:(h + 1) * dh]
            k = qkv[b, :, w + h * dh:w + (h + 1) * dh]
            v = qkv[b, :, 2 * w + h * dh:2 * w + (h + 1) * dh]
            s = q @ k.T / np.sqrt(dh)
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            want[b, :, h * dh:(h + 1) * dh] = p @ v
    np.testing.assert_allclose(out.reshape(n, t, w), want, rtol=1e-12, atol=1e-14)


def test_gelu():
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=10) * 2, [0.0, -6.0, 6.0]])
    cot = rng.normal(size=x.size)
    out = check_fd("gelu", (x.size,), [x], cot)
    want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-15)


def test_patchify():
    rng = np.random.default_rng(7)
    n, c, s, p = 2, 3, 4, 2
    x = rng.normal(size=(n, c, s, s))
    cot = rng.normal(size=(n, (s // p) ** 2, c * p * p))
    out = check_fd("patchify", (n, c, s, p), [x], cot)
    g = s // p
    want = x.reshape(n, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
    np.testing.assert_array_equal(out.reshape(want.shape), want)


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        _C.dit_op("nope", (1,), [np.zeros(1)], np.zeros(1))
