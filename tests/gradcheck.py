"""Central finite differences of L = <cotangent, model.forward(x, t, cond)> for the backward
tests of every model (tests/test_mlp_grad.py, tests/test_dit.py), and of per-row scalars
(fd_per_row: reward gradients in tests/test_methods.py, tests/test_estimators.py).

Tolerance, |fd - g| <= atol + rtol * |g|, with:
  * the central-difference truncation error ~ eps^2 |L'''| / 6 ~ 1e-12 relative at eps = 1e-6;
  * the rounding error of L(p + eps) - L(p - eps): a few ulps of |L| divided by 2 eps, i.e.
    ~ 1e-16 * sum|terms| / 1e-6 ~ 1e-10 * scale, where scale = sum_i |cot_i| |out_i| (the size
    of the terms summed into L) -- this is what atol covers (atol = 1e-8 * scale, 100x margin);
  * rtol = 1e-6 bounds the relative error where the derivative is not small.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-6
RTOL = 1e-6


def loss(model, x, t, cond, cot):
    """(L, scale): L = <cot, forward(x, t, cond)> and scale = sum |cot * out| (for atol)."""
    out = np.asarray(np.from_dlpack(model.forward(x, t, cond)))
    return float(np.sum(cot * out)), float(np.sum(np.abs(cot * out)))


def vjp_and_scale(model, x, t, cond, cot):
    """(dx, dparams, scale): the model's VJP of L as float arrays (dparams a copy) and the
    scale of L's terms for the tolerance."""
    dx, dp = model.vjp(x, t, cot, cond)
    return (np.array(np.from_dlpack(dx)), np.array(np.from_dlpack(dp)),
            loss(model, x, t, cond, cot)[1])


def fd_check(fd, g, scale, rtol=RTOL):
    """Indices violating |fd - g| <= atol + rtol |g| (empty: the gradient passes)."""
    atol = 1e-8 * max(scale, 1e-3)
    bad = np.abs(np.asarray(fd) - np.asarray(g)) > atol + rtol * np.abs(g)
    return np.flatnonzero(bad)


def central_differences(flat, f, index=None):
    """(f() at flat[i] + EPS - f() at flat[i] - EPS) / (2 EPS) for each i of `index` (all
    elements by default): `flat` is perturbed in place (a view of the parameters or of the
    inputs f reads) and restored."""
    idx = range(flat.size) if index is None else index
    out = []
    for i in idx:
        keep = flat[i]
        flat[i] = keep + EPS
        lp = f()
        flat[i] = keep - EPS
        lm = f()
        flat[i] = keep
        out.append((lp - lm) / (2 * EPS))
    return np.array(out)


def fd_params(model, x, t, cond, cot, index=None):
    """Central differences of L w.r.t. each flat parameter (or those in `index`)."""
    return central_differences(np.from_dlpack(model.params),
                               lambda: loss(model, x, t, cond, cot)[0], index)


def fd_direction(model, x, t, cond, cot, d):
    """The central difference of L along the unit parameter direction d."""
    flat = np.from_dlpack(model.params)
    p0 = flat.copy()
    flat[...] = p0 + EPS * d
    lp = loss(model, x, t, cond, cot)[0]
    flat[...] = p0 - EPS * d
    lm = loss(model, x, t, cond, cot)[0]
    flat[...] = p0
    return (lp - lm) / (2 * EPS)


def fd_x(model, x, t, cond, cot, index=None):
    """Central differences of L w.r.t. every element of x (shaped as x), or w.r.t. the flat
    elements in `index`."""
    xc = np.array(x)
    fd = central_differences(xc.reshape(-1), lambda: loss(model, xc, t, cond, cot)[0], index)
    return fd.reshape(x.shape) if index is None else fd


def fd_per_row(f, x, h=EPS):
    """Central differences of a per-row scalar f: [n, D] -> [n] w.r.t. each coordinate: [n, D]
    (the reward gradients and score differences of the estimator and method tests)."""
    return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.shape[1])], 1)
