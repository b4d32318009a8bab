"""A numpy twin of rsm.MLP (csrc/nn/mlp_real.c): the same architecture and parameter layout,
written independently, with its backward by hand; through rsm.ExternalModel it exercises the
external-model protocol without torch (tests/test_external_model.py). tests/test_torch_model.py
has the torch twin.

    inp  = [x, temb(t), cond]     temb = [sin(1000 t f_k), cos(1000 t f_k)], f_k = 10000^(-k/half)
    h_0  = inp W_in^T + b_in
    h_b+1 = h_b + SiLU(h_b W1^T + b1) W2^T + b2      (depth residual blocks)
    out  = SiLU(h_L) W_out^T + b_out"""
from __future__ import annotations

import weakref

import numpy as np

import rsm
from rsm.external import numpy_views


def time_embedding(t: np.ndarray, temb_dim: int, xp=np) -> np.ndarray:
    half = temb_dim // 2
    freq = np.exp(-np.log(10000.0) * np.arange(half) / half)
    angle = 1000.0 * t[:, None] * freq[None]
    return xp.concatenate([xp.sin(angle), xp.cos(angle)], axis=1)


def silu(z, xp=np):
    return z / (1.0 + xp.exp(-z))


def dsilu(z):
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 + z * (1.0 - s))


class NumpyMLP:
    """The network over a flat parameter vector in rsm.MLP's layout (read at every call); xp=
    jax.numpy gives the JAX twin (forward(..., flat=) with traced parameters)."""

    def __init__(self, config: dict, flat: np.ndarray, xp=np):
        self.c, self.flat, self.xp = config, flat, xp

    def weights(self, flat=None):
        c, p = self.c, self.flat if flat is None else flat
        D, H, L = c["dim"], c["hidden"], c["depth"]
        I = D + c["temb_dim"] + c["cond_dim"]
        o = 0

        def take(*shape):
            nonlocal o
            n = int(np.prod(shape))
            v = p[o:o + n].reshape(shape)
            o += n
            return v

        w_in, b_in = take(H, I), take(H)
        blocks = [(take(H, H), take(H), take(H, H), take(H)) for _ in range(L)]
        return w_in, b_in, blocks, take(D, H), take(D)

    def forward(self, x, t, cond, keep=None, flat=None):
        xp = self.xp
        w_in, b_in, blocks, w_out, b_out = self.weights(flat)
        # the angles in float64 as rsm computes them, rounded to the working dtype after sin/cos
        parts = [x, time_embedding(np.asarray(t, np.float64) if xp is np else t, self.c["temb_dim"], xp).astype(x.dtype)]
        if cond is not None:
            parts.append(cond)
        inp = xp.concatenate(parts, axis=1)
        h = inp @ w_in.T + b_in
        hs, pres = [h], []
        for w1, b1, w2, b2 in blocks:
            pre = h @ w1.T + b1
            h = h + silu(pre, xp) @ w2.T + b2
            pres.append(pre)
            hs.append(h)
        out = silu(h, xp) @ w_out.T + b_out
        if keep is not None:
            keep.update(inp=inp, hs=hs, pres=pres)
        return out

    def backward(self, x, t, cond, g, dparams, dx):
        acts = {}
        self.forward(x, t, cond, acts)
        w_in, b_in, blocks, w_out, b_out = self.weights()
        grads = []   # in reverse layout order
        hL = acts["hs"][-1]
        grads += [g.sum(0), g.T @ silu(hL)]
        dh = (g @ w_out) * dsilu(hL)
        for b in range(len(blocks) - 1, -1, -1):
            w1, b1, w2, b2 = blocks[b]
            pre, h_in = acts["pres"][b], acts["hs"][b]
            grads += [dh.sum(0), dh.T @ silu(pre)]
            dpre = (dh @ w2) * dsilu(pre)
            grads += [dpre.sum(0), dpre.T @ h_in]
            dh = dh + dpre @ w1
        grads += [dh.sum(0), dh.T @ acts["inp"]]
        if dparams is not None:
            dparams += np.concatenate([a.reshape(-1) for a in reversed(grads)])
        if dx is not None:
            dx[...] = (dh @ w_in)[:, :x.shape[1]]


def numpy_twin(mlp: rsm.MLP) -> rsm.ExternalModel:
    """An rsm.ExternalModel computing `mlp` in numpy, with a copy of its parameters. The callbacks
    reach the network through a weak reference to the model: the network holds a DLPack view of
    the model's parameters, and a strong reference from the callbacks would close a cycle through
    that view's C-level owner, which Python's collector cannot see (a leak under LeakSanitizer)."""
    c = mlp.config
    owner = {}

    def state():
        return owner["model"]().faults

    def forward(x, t, cond):
        holder = state()
        x, t, cond = numpy_views(x, t, cond)
        out = holder["net"].forward(x, t, cond)
        fault = holder["fault"]
        if fault == "forward raises":
            raise ValueError("the network is broken")
        if fault == "shape":
            return np.zeros((x.shape[0], x.shape[1] + 1), x.dtype)
        if fault == "dtype":
            return out.astype(np.float32)
        return out

    def backward(x, t, cond, cot, dparams, dx):
        holder = state()
        if holder["fault"] == "backward raises":
            raise ValueError("the network is broken")
        x, t, cond, cot, dparams, dx = numpy_views(x, t, cond, cot, dparams, dx)
        holder["net"].backward(x, t, cond, cot, dparams, dx)

    model = rsm.ExternalModel(forward, backward, dim=c["dim"], cond_dim=c["cond_dim"],
                              num_params=mlp.num_params, dtype=c["dtype"], name="NumpyMLP")
    owner["model"] = weakref.ref(model)
    flat = np.from_dlpack(model.params)
    flat[...] = np.from_dlpack(mlp.params)
    # tests set a fault: "forward raises", "shape", "dtype", "backward raises"
    model.faults = {"net": NumpyMLP(c, flat), "fault": None}
    rsm.guards.copy_path(mlp, model)
    return model


def perturbed_mlp(dtype: str = "float64") -> rsm.MLP:
    """The MLP both twin test files fine-tune: small, recorded on the flow path, with every
    parameter random (rsm.MLP starts its output layer at 0) so that every parameter trains."""
    mlp = rsm.MLP(2, 16, 2, seed=3, dtype=dtype)
    flat = np.from_dlpack(mlp.params)
    flat[...] = np.random.default_rng(0).normal(0, 0.3, flat.shape)
    rsm.guards.record_path(mlp, rsm.FlowPath())
    return mlp


def assert_twin_matches(twin, mlp, rtol: float = 1e-10):
    """twin.forward and twin.vjp (input and parameter VJPs) equal mlp's at random points;
    returns the points (x, t, g) for further checks."""
    rng = np.random.default_rng(1)
    x, t, g = rng.normal(size=(5, mlp.dim)), rng.uniform(0, 1, 5), rng.normal(size=(5, mlp.dim))
    np.testing.assert_allclose(np.from_dlpack(twin.forward(x, t)), np.from_dlpack(mlp.forward(x, t)),
                               rtol=1e-12, atol=1e-13)
    for a, b in zip(twin.vjp(x, t, g), mlp.vjp(x, t, g)):
        np.testing.assert_allclose(np.from_dlpack(a), np.from_dlpack(b), rtol=rtol, atol=1e-12)
    return x, t, g
