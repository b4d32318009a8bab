"""A network outside rsm as an rsm model: the protocol behind rsm.TorchModel (rsm.torch_model).

`ExternalModel(forward, backward, dim=...)` is an instance of the same C model vtable as rsm.MLP
and rsm.DiT (csrc/nn/model.h, csrc/nn/external.h): the samplers, rollouts, estimators, the C
update and AdamW run on it unchanged, calling back into Python once per batch (the interpreter
lock is taken only for that call; csrc/python/external_py.c). The callbacks receive zero-copy
rsm.Tensor views (DLPack producers), valid only during the call:

    forward(x[n, dim], t[n], cond[n, cond_dim] or None) -> out[n, dim]
        the network output in the path's native parameterization (velocity on the flow path,
        eps on VP), any DLPack array of the model's dtype on the CPU;
    backward(x, t, cond, cotangent[n, dim], dparams[num_params] or None, dx[n, dim] or None)
        the VJPs of the LAST forward (rsm passes that forward's inputs back): ADD
        d<cotangent, out>/d params into dparams and WRITE d<cotangent, out>/dx into dx.

The trainable parameters are the flat buffer `model.params`, owned by rsm (zero-initialised):
the network reads its weights from there (a torch module's parameters are re-pointed into it),
so rsm's optimizer updates them in place and a failed update restores them.

A callback that raises reaches the caller of rsm (sample, Trainer.step, ...) as raised; the
core's status carries the message "name: forward raised ...". On-policy exactness (importance
ratios exactly 1) needs a forward that is a deterministic function of (x, t, cond, params):
`rsm.check_on_policy` verifies it for any model."""
from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from . import _C, guards
from ._args import positive_int
from .models import MLP


class ExternalModel:
    """An rsm model whose network is a pair of Python callables (see the module docstring).

    dim: the data dimension D; cond_dim: the condition vector's size (0: unconditional);
    num_params: the trainable parameters rsm owns and optimizes (0: a frozen network, e.g. a
    reference; it needs no backward); path: the rsm path the network was trained on (recorded,
    so presets for another path are refused, rsm.guards); num_classes: for a class-conditional
    network (cond_dim 1, class ids)."""

    def __init__(self, forward: Callable, backward: Callable | None = None, *, dim: int,
                 cond_dim: int = 0, num_params: int = 0, dtype: str = "float32",
                 name: str = "ExternalModel", path: Any = None, num_classes: int | None = None,
                 cond_optional: bool = False) -> None:
        positive_int(dim, name, "dim")
        positive_int(cond_dim, name, "cond_dim", minimum=0)
        positive_int(num_params, name, "num_params", minimum=0)
        if dtype not in ("float32", "float64"):
            raise ValueError(f"{name}: dtype must be 'float32' or 'float64', got {dtype!r}")
        if num_classes is not None:
            positive_int(num_classes, name, "num_classes")
        self.name = str(name)
        self.num_classes = num_classes
        self._core = _C.ExternalCore(forward, backward, int(dim), int(cond_dim), int(num_params),
                                     dtype, self.name, bool(cond_optional))
        if path is not None:
            guards.record_path(self, path)

    # ---- description -------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        c = dict(self._core.config)
        if self.num_classes is not None:
            c["num_classes"] = self.num_classes
        return c

    dim = property(lambda self: self._core.config["dim"], doc="State dimension D (int).")
    cond_dim = property(lambda self: self._core.config["cond_dim"],
                        doc="Condition dimension (int; 0: unconditional).")
    dtype = property(lambda self: self._core.config["dtype"], doc="'float32' or 'float64'.")
    num_params = property(lambda self: self._core.config["num_params"],
                          doc="Trainable parameter count (int).")

    @property
    def params(self) -> _C.Tensor:
        """The flat trainable parameters, a writable zero-copy view of rsm's buffer."""
        return self._core.params

    def __repr__(self) -> str:
        return (f"{self.name}(dim={self.dim}, cond_dim={self.cond_dim}, dtype={self.dtype!r}, "
                f"params={self.num_params})")

    # ---- compute: the same entry points as rsm.MLP, through the same model core methods ---------
    forward = MLP.forward
    __call__ = MLP.forward
    vjp = MLP.vjp
    forward_keep = MLP.forward_keep
    backward = MLP.backward
    forward_and_vjp = MLP.forward_and_vjp
    load_params = MLP.load_params


def weak_callbacks(owner: Any, forward: str, backward: str | None) -> tuple[Callable, Callable | None]:
    """Callbacks that reach `owner`'s methods through a weak reference. The C core holds its
    callbacks; a torch module's parameters hold views of the core's buffer; so strong callbacks
    would tie owner -> core -> callback -> owner through memory the garbage collector cannot
    see. With these, the owner is freed as usual and a core outliving it (its parameters still
    viewed by the module) refuses to run."""
    ref = weakref.ref(owner)

    def resolve(what: str) -> Any:
        obj = ref()
        if obj is None:
            raise RuntimeError(f"the model behind this rsm core was deleted ({what} called)")
        return obj

    def fwd(x: Any, t: Any, cond: Any) -> Any:
        return getattr(resolve("forward"), forward)(x, t, cond)

    def bwd(x: Any, t: Any, cond: Any, cot: Any, dparams: Any, dx: Any) -> None:
        getattr(resolve("backward"), backward)(x, t, cond, cot, dparams, dx)

    return fwd, (bwd if backward is not None else None)


def numpy_views(*arrays: Any) -> list[np.ndarray | None]:
    """np.from_dlpack of each view (None stays None): what a numpy network's callbacks read."""
    return [None if a is None else np.from_dlpack(a) for a in arrays]
