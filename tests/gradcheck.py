"""Central finite differences of L = <cotangent, model.forward(x, t, cond)> for the backward
tests of every model (tests/test_mlp_grad.py, tests/test_dit.py).

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


def fd_check(fd, g, scale, rtol=RTOL):
    """Indices violating |fd - g| <= atol + rtol |g| (empty: the gradient passes)."""
    atol = 1e-8 * max(scale, 1e-3)
    bad = np.abs(np.asarray(fd) - np.asarray(g)) > atol + rtol * np.abs(g)
    return np.flatnonzero(bad)


def fd_params(model, x, t, cond, cot, index=None):
    """Central differences of L w.r.t. each flat parameter (or those in `index`)."""
    flat = np.from_dlpack(model.params)
    idx = range(flat.size) if index is None else index
    out = []
    for i in idx:
        keep = flat[i]
        flat[i] = keep + EPS
        lp, _ = loss(model, x, t, cond, cot)
        flat[i] = keep - EPS
        lm, _ = loss(model, x, t, cond, cot)
        flat[i] = keep
        out.append((lp - lm) / (2 * EPS))
    return np.array(out)


def fd_x(model, x, t, cond, cot):
    """Central differences of L w.r.t. every element of x."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += EPS
        xm[idx] -= EPS
        g[idx] = (loss(model, xp, t, cond, cot)[0] - loss(model, xm, t, cond, cot)[0]) / (2 * EPS)
    return g
