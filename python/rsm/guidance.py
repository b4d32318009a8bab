"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper (THEORY.md §9, §12.1 B).

    guided = rsm.Guided(model, scale=w)        # model: conditional (cond_dim >= 1)
    x = rsm.sample(guided, n, path, cond=c)    # guided sampling: the ordinary C sampler
    rsm.finetune(rsm.Guided(policy, w), rsm.Guided(ref, w), reward, ...)   # guided losses

The guided output is u = u_uncond + w (u_cond - u_uncond), from one evaluation of the inner model
on 2n stacked rows [cond; null] (csrc/nn/guided.c). The backward sends w * cotangent to the
conditional pass and (1 - w) * cotangent to the unconditional one; the inner backward over the
stacked rows sums both into one parameter gradient, and dx = dx_cond + dx_uncond. The wrapper
shares the inner model's parameters (no copy): optimizers, checkpoints and LoRA see the inner
model. The null condition is what the model was pretrained with under condition dropout
(rsm.pretrain(..., cond_dropout=p)): the null class id for a class-conditional model
(model.num_classes), zeros for a condition-vector MLP, or an explicit `null_cond`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._args import as_cond, as_times, finite_float, num_classes_of, rows_of


def null_condition(model: Any) -> np.ndarray:
    """The null (unconditional) condition of a model, [cond_dim] in its dtype: model.null_cond if
    it defines one, the null class id model.num_classes for a class-conditional model, else 0."""
    cond_dim = int(getattr(model, "cond_dim", 0))
    if cond_dim < 1:
        raise ValueError(f"classifier-free guidance needs a conditional model, got cond_dim={cond_dim}")
    explicit = getattr(model, "null_cond", None)
    if explicit is not None:
        return np.ascontiguousarray(np.asarray(explicit, dtype=model.dtype).reshape(cond_dim))
    num_classes = num_classes_of(model)
    if num_classes is not None and cond_dim == 1:
        return np.full(1, float(num_classes), dtype=model.dtype)
    return np.zeros(cond_dim, dtype=model.dtype)


class Guided:
    """A conditional model evaluated with classifier-free guidance at scale w; used like a model
    (forward, vjp, forward_keep/backward, forward_and_vjp, params) by rsm.sample, rsm.log_prob
    and the Trainer. w = 0: the unconditional model; w = 1: the conditional model (bitwise)."""

    def __init__(self, model: Any, scale: float = 1.0, *, null_cond: Any = None) -> None:
        # checked here as well as in GuidedCore (csrc/python/guided_py.c): these messages name the
        # Python classes and the shape null_cond was given in, which the binding never sees
        if isinstance(model, Guided):
            raise TypeError("Guided(): model is already guided (wrap the inner model instead)")
        if getattr(model, "_core", None) is None:
            raise TypeError(f"Guided(): model must be an rsm model (rsm.MLP, rsm.DiT), got {type(model).__name__}")
        self.scale = finite_float(scale, "Guided", "scale")
        self.model = model
        if null_cond is None:
            null = null_condition(model)
        else:
            null = np.asarray(null_cond, dtype=np.float64).reshape(-1)
            if null.shape != (model.cond_dim,):
                raise ValueError(f"Guided(): null_cond must have shape [{model.cond_dim}], got {np.shape(null_cond)}")
            null = np.ascontiguousarray(null, dtype=model.dtype)
        self.null_cond = null
        self._core = _C.GuidedCore(model._core, self.scale, null)

    # ---- what the inner model is ---------------------------------------------------------------
    dim = property(lambda self: self.model.dim)
    cond_dim = property(lambda self: self.model.cond_dim)
    dtype = property(lambda self: self.model.dtype)
    params = property(lambda self: self.model.params)
    num_params = property(lambda self: self.model.num_params)

    def __getattr__(self, name: str) -> Any:  # named_params, load_params, config, num_classes, ...
        if name == "model":  # not set yet (a failed __init__): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"Guided({self.model!r}, scale={self.scale})"

    def copy(self) -> "Guided":
        return Guided(self.model.copy(), self.scale, null_cond=self.null_cond)

    def with_scale(self, scale: float) -> "Guided":
        """The same inner model (shared parameters) at another guidance scale."""
        return Guided(self.model, scale, null_cond=self.null_cond)

    # ---- compute ---------------------------------------------------------------------------------
    def _inputs(self, x: Any, t: Any, cond: Any, func: str) -> tuple[Any, np.ndarray, np.ndarray]:
        n = rows_of(x, func)
        if cond is None:
            raise ValueError(f"{func}(): a guided model needs cond (the null condition is its "
                             "unconditional pass); use the inner model for unconditional outputs")
        c = as_cond(cond, n, self.cond_dim, self.dtype, func, num_classes=num_classes_of(self.model))
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) > 2:   # images [n, C, H, W] -> rows [n, C*H*W]
            x = np.from_dlpack(x) if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray) else np.asarray(x)
            x = np.ascontiguousarray(x.reshape(n, -1))
        return x, as_times(t, n, self.dtype, func), c

    def _prepare_cond(self, cond: Any, n: int) -> np.ndarray | None:
        """The samplers' hook: class ids [n] or vectors -> the core's [n, cond_dim] layout."""
        return as_cond(cond, n, self.cond_dim, self.dtype, "sample", num_classes=num_classes_of(self.model))

    def _stacked(self, x: Any, t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(np.from_dlpack(x) if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray) else x)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        null = np.broadcast_to(self.null_cond, c.shape)
        return (np.ascontiguousarray(np.concatenate([x, x])), np.concatenate([t, t]),
                np.ascontiguousarray(np.concatenate([c, null])))

    def forward(self, x: Any, t: Any, cond: Any = None) -> _C.Tensor:
        """Guided output [n, dim] (the same C code as the sampler's)."""
        x, t, c = self._inputs(x, t, cond, "forward")
        return self._core.forward(x, t, c)

    __call__ = forward

    def forward_keep(self, x: Any, t: Any, cond: Any = None) -> tuple[_C.Tensor, Any]:
        """(guided output, token) for backward(cotangent, token): one stacked inner forward."""
        x, t, c = self._inputs(x, t, cond, "forward")
        u2, token = self.model.forward_keep(*self._stacked(x, t, c))
        return _C.guidance_combine(u2, self.scale), token

    def backward(self, cotangent: Any, token: Any) -> tuple[np.ndarray, _C.Tensor]:
        """(dx, dparams) of the forward_keep that returned `token`."""
        dx2, dparams = self.model.backward(self._split(cotangent), token)
        return self._sum_halves(dx2), dparams

    def vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None) -> tuple[np.ndarray, _C.Tensor]:
        _, dx, dparams = self.forward_and_vjp(x, t, cotangent, cond)
        return dx, dparams

    def forward_and_vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None):
        """(guided output, dx, dparams) from one stacked forward and backward of the inner model."""
        x, t, c = self._inputs(x, t, cond, "vjp")
        x2, t2, c2 = self._stacked(x, t, c)
        u2, dx2, dparams = self.model.forward_and_vjp(x2, t2, self._split(cotangent), c2)
        return _C.guidance_combine(u2, self.scale), self._sum_halves(dx2), dparams

    def _split(self, cotangent: Any) -> _C.Tensor:
        cot = np.from_dlpack(cotangent) if hasattr(cotangent, "__dlpack__") else np.asarray(cotangent)
        return _C.guidance_split(np.ascontiguousarray(cot, dtype=self.dtype), self.scale)

    @staticmethod
    def _sum_halves(dx2: Any) -> np.ndarray:
        d = np.from_dlpack(dx2)
        n = d.shape[0] // 2
        return d[:n] + d[n:]
