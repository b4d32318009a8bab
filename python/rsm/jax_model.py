"""rsm.JaxModel: a JAX network `apply_fn(params, x, t, cond) -> out` fine-tuned by rsm's samplers,
estimators, RSM objective and AdamW, through the external-model protocol (rsm.external,
csrc/nn/external.h), as rsm.TorchModel does for torch.

    policy = rsm.JaxModel(apply_fn, params, rsm.FlowPath(), dim=2)
    ref = rsm.JaxModel(apply_fn, params, rsm.FlowPath(), dim=2, trainable=False)

The parameter pytree is flattened (jax.flatten_util.ravel_pytree) into rsm's flat buffer, which
rsm's AdamW updates in place; JAX arrays are immutable, so each call reads the buffer into a JAX
array (one copy of the parameters per batch, on the CPU) and `model.params_tree()` gives the
current pytree. forward is apply_fn (jit-compiled); backward is jax.vjp of the same function at
the last forward's inputs (parameter VJP added into rsm's gradient, input VJP written). float64
needs jax.config.update("jax_enable_x64", True) before the parameters are made. CPU only."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .external import ExternalModel, weak_callbacks


def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:  # pragma: no cover - exercised only without jax
        raise ImportError("rsm.JaxModel needs JAX (pip install jax)") from exc
    return jax


class JaxModel(ExternalModel):
    """apply_fn(params, x[n, dim], t[n], cond[n, cond_dim] or None) -> out[n, dim] in the path's
    native parameterization; params: its parameter pytree (one float dtype). trainable=False: a
    frozen model (a reference; it still gives input VJPs)."""

    def __init__(self, apply_fn: Callable, params: Any, path: Any = None,
                 parameterization: str | None = None, *, dim: int, cond_dim: int = 0,
                 trainable: bool = True, num_classes: int | None = None,
                 name: str | None = None) -> None:
        jax = _jax()
        from jax.flatten_util import ravel_pytree

        name = name or f"JaxModel({getattr(apply_fn, '__name__', type(apply_fn).__name__)})"
        if not callable(apply_fn):
            raise TypeError(f"JaxModel(): apply_fn must be callable, got {type(apply_fn).__name__}")
        if path is not None and parameterization not in (None, path.native):
            raise ValueError(f"{name}: parameterization={parameterization!r} is not the path's "
                             f"native one ({path.native!r}); convert inside apply_fn")
        flat, self._unravel = ravel_pytree(params)
        dtype = str(flat.dtype)
        if dtype not in ("float32", "float64"):
            raise TypeError(f"{name}: parameters of dtype {dtype} are not supported (float32 or "
                            "float64; float64 needs jax_enable_x64)")
        devices = {d.platform for leaf in jax.tree_util.tree_leaves(params)
                   for d in getattr(leaf, "devices", lambda: set())()}
        if devices - {"cpu"}:
            raise ValueError(f"{name}: the parameters are on {sorted(devices)}; rsm's sampler and "
                             "objective run on the CPU until the two-backend engine exists (no "
                             "silent host copies): jax.device_put(params, jax.devices('cpu')[0])")
        self.apply_fn = apply_fn
        self._jnp = jax.numpy
        self._frozen = None if trainable else flat
        fwd, bwd = weak_callbacks(self, "_forward", "_backward")
        super().__init__(fwd, bwd, dim=dim, cond_dim=cond_dim, num_params=flat.size if trainable else 0,
                         dtype=dtype, name=name, path=path, num_classes=num_classes)
        if trainable:
            np.from_dlpack(self._core.params)[...] = np.asarray(flat)

        def apply_flat(p, x, t, cond):
            return apply_fn(self._unravel(p), x, t, cond)

        self._apply = jax.jit(apply_flat)

        def vjp(p, x, t, cond, cot):
            _, pullback = jax.vjp(lambda p_, x_: apply_flat(p_, x_, t, cond), p, x)
            return pullback(cot)

        self._vjp = jax.jit(vjp)

    def params_tree(self) -> Any:
        """The current parameters as the pytree apply_fn takes."""
        return self._unravel(self._flat_params())

    def _flat_params(self) -> Any:
        if self._frozen is not None:
            return self._frozen
        return self._jnp.asarray(np.from_dlpack(self._core.params))

    def _arrays(self, *views: Any) -> list:
        return [None if v is None else self._jnp.asarray(np.from_dlpack(v)) for v in views]

    def _forward(self, x: Any, t: Any, cond: Any) -> np.ndarray:
        xj, tj, cj = self._arrays(x, t, cond)
        out = np.asarray(self._apply(self._flat_params(), xj, tj, cj))
        if out.shape != tuple(xj.shape):
            raise ValueError(f"{self.name}: apply_fn returned shape {out.shape}, expected {tuple(xj.shape)}")
        return out

    def _backward(self, x: Any, t: Any, cond: Any, cot: Any, dparams: Any, dx: Any) -> None:
        xj, tj, cj, gj = self._arrays(x, t, cond, cot)
        gp, gx = self._vjp(self._flat_params(), xj, tj, cj, gj)
        if dparams is not None and self.num_params > 0:
            np.from_dlpack(dparams)[...] += np.asarray(gp)
        if dx is not None:
            np.from_dlpack(dx)[...] = np.asarray(gx)
