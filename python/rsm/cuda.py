"""rsm.cuda: the CUDA backend, a thin layer over rsm._cuda (kernels/*.cu).

Device arrays are rsm.Tensor objects on "cuda:N" (or any DLPack CUDA array: torch.cuda, CuPy,
JAX), exchanged zero-copy through DLPack with the stream protocol, imported by rsm._C's one
importer. Every kernel's per-element math is the CPU's (the csrc/ops/*.h headers shared through
RSM_HOST_DEVICE; the random numbers are csrc/ops/philox.h on both devices).

The loops (sampling, pretraining, the objective, a fine-tuning iteration) are the C core's, run
on the CUDA backend table (csrc/backend.h, kernels/backend_cuda.cu); this module does not
re-implement them. Until a loop runs over the table, its entry here raises NotImplementedError
saying so, and never copies device data to the host behind the caller's back.

    model = rsm.MLP(2, 256, 3)            # CPU model, parameters initialised on the CPU
    gpu = rsm.cuda.DeviceMLP(model)       # parameters copied to cuda:0
    u = gpu(x, t)                         # forward on the device (cuBLAS + shared activations)
    gpu.to_cpu(model)                     # parameters back

Nothing here is imported by `import rsm`; rsm.cuda_available() is the switch. Functions raise
RuntimeError with the reason when CUDA cannot be used.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _C
from ._device import _device_index, _mod, _shape, backend_table, empty, require, \
    to_device, to_host

__all__ = ["is_available", "device_count", "empty", "zeros", "to_device", "to_host", "synchronize",
           "memory_stats", "empty_cache", "set_tf32", "tf32_enabled", "set_bf16", "bf16_enabled", "normal", "philox_u32",
           "DeviceMLP", "AdamW", "require", "backend_table", "sample", "transition_log_prob",
           "objective", "pretrain"]

_DTYPES = ("float32", "float64")


def is_available() -> bool:
    from ._build import cuda_available
    return cuda_available()


def device_count() -> int:
    return _mod().device_count()[0]


def _device_of(array: Any, name: str) -> int:
    kind, index = array.__dlpack_device__()
    if kind != 2:
        raise ValueError(f"{name} must be on a CUDA device, got DLPack device {kind}")
    return int(index)


# ---- memory ------------------------------------------------------------------------------------


def zeros(shape: Any, dtype: str = "float32", device: Any = 0) -> _C.Tensor:
    t = empty(shape, dtype, device)
    if np.prod(_shape(shape), dtype=np.int64) > 0:
        if str(dtype) in _DTYPES:
            _mod().zero(t)
        else:
            _mod().copy(t, np.zeros(_shape(shape), dtype=str(dtype)))
    return t


def synchronize(device: Any = 0) -> None:
    _mod().synchronize(_device_index(device))


def memory_stats(device: Any = 0) -> dict:
    """The caching allocator's counters: allocated / reserved bytes (and peaks), allocations,
    cache hits, cudaMalloc calls, frees."""
    return _mod().memory_stats(_device_index(device))


def empty_cache(device: Any = 0) -> None:
    _mod().empty_cache(_device_index(device))


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core math for float32 matrix products (float32 accumulation); off by default
    for exact parity with the CPU. Turning it off returns to IEEE float32."""
    _mod().set_matmul("tf32" if enabled else "ieee")


def tf32_enabled() -> bool:
    return _mod().matmul() == "tf32"


def set_bf16(enabled: bool) -> None:
    """BF16 tensor-core math for float32 matrix products (inputs rounded to bfloat16, float32
    accumulation); off by default. Turning it off returns to IEEE float32."""
    _mod().set_matmul("bf16" if enabled else "ieee")


def bf16_enabled() -> bool:
    return _mod().matmul() == "bf16"


# ---- random numbers ------------------------------------------------------------------------------


def normal(shape: Any, seed: int, stream: int = 0, offset: int = 0, dtype: str = "float32",
           device: Any = 0) -> _C.Tensor:
    """Standard normals `offset ..` of the Philox stream (seed, stream): the CPU's
    rsm.random / _C.random('normal', ...) stream, computed on the device."""
    out = empty(shape, dtype, device)
    if out.size:
        _mod().fill_normal(out, int(seed), int(stream), int(offset))
    return out


def philox_u32(n: int, seed: int, stream: int = 0, offset: int = 0, device: Any = 0) -> _C.Tensor:
    """The raw Philox4x32-10 words (bitwise the CPU's _C.random('u32', ...))."""
    out = empty((int(n),), "uint32", device)
    if n:
        _mod().fill_u32(out, int(seed), int(stream), int(offset))
    return out


# ---- the MLP on the device -----------------------------------------------------------------------


class DeviceMLP:
    """An rsm.MLP's parameters on a CUDA device, with forward / backward kernels (cuBLAS
    products, the CPU layout and activations). Built from a CPU rsm.MLP; to_cpu copies back."""

    def __init__(self, model: Any, device: Any = 0) -> None:
        core = getattr(model, "_core", None)
        if not isinstance(core, _C.MLPCore):
            raise TypeError(f"DeviceMLP(): model must be an rsm.MLP, got {type(model).__name__}")
        cfg, lay = core.config, core.layout
        self.device = _device_index(device)
        self.dtype = cfg["dtype"]
        self.dim, self.cond_dim = int(cfg["dim"]), int(cfg["cond_dim"])
        self.num_params = int(lay["num_params"])
        self._cfg = (cfg["dim"], cfg["hidden"], cfg["depth"], cfg["cond_dim"], cfg["temb_dim"],
                     lay["in_dim"], lay["in_w"], lay["in_b"], lay["block0"], lay["block_size"],
                     lay["out_w"], lay["out_b"], lay["num_params"])
        self.params = to_device(np.from_dlpack(core.params), self.device)
        self._acts = self._scratch = None
        self._rows = 0   # capacity of the buffers
        self._saved = 0  # rows of the last forward (its activations are in _acts)

    def _reserve(self, rows: int) -> None:
        if rows <= self._rows:
            return
        acts, scratch = _mod().mlp_sizes(self._cfg, rows)
        self._acts = empty((acts,), self.dtype, self.device)
        self._scratch = empty((scratch,), self.dtype, self.device)
        self._rows = rows

    def to_cpu(self, model: Any) -> Any:
        """Copy the device parameters into a CPU rsm.MLP of the same configuration."""
        np.from_dlpack(model._core.params)[...] = to_host(self.params)
        return model

    def forward(self, x: Any, t: Any, cond: Any = None, out: Any = None,
                rows: int | None = None) -> _C.Tensor:
        """u[n, dim] = model(x[n, dim], t[n]); the activations are kept for backward. x may be
        an (array, offset) view of a larger buffer, with `rows` given."""
        if rows is None and isinstance(x, tuple):
            raise ValueError("forward(): rows is required when x is an (array, offset) view")
        n = int(rows) if rows is not None else int(x.shape[0])
        self._reserve(max(n, 1))
        if out is None:
            out = empty((n, self.dim), self.dtype, self.device)
        _mod().mlp_forward(self._cfg, self.params, n, x, t, cond, out, self._acts)
        self._saved = n
        return out

    def backward(self, cotangent: Any, dparams: Any = None, dx: Any = None) -> None:
        """dparams += J^T cotangent (the last forward's rows); dx = d/dx when given."""
        n = int(cotangent.shape[0])
        if n != self._saved:
            raise ValueError(f"backward(): cotangent has {n} rows, the last forward had "
                             f"{self._saved}")
        _mod().mlp_backward(self._cfg, self.params, n, self._acts, self._scratch, cotangent,
                            dparams, dx)

    __call__ = forward


# ---- AdamW on the device -------------------------------------------------------------------------


class AdamW:
    """torch.optim.AdamW semantics with clip_grad_norm_ and an optional EMA, as rsm.AdamW, on a
    DeviceMLP's parameters: the norm, the clip and the update stay on the device."""

    def __init__(self, model: DeviceMLP, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, max_grad_norm: float = 0.0,
                 ema_decay: float = 0.0) -> None:
        if not isinstance(model, DeviceMLP):
            raise TypeError(f"AdamW(): model must be an rsm.cuda.DeviceMLP, got {type(model).__name__}")
        for name, v, lo, hi in (("lr", lr, 0.0, np.inf), ("beta1", betas[0], 0.0, 1.0),
                                ("beta2", betas[1], 0.0, 1.0), ("eps", eps, 0.0, np.inf),
                                ("weight_decay", weight_decay, 0.0, np.inf),
                                ("ema_decay", ema_decay, 0.0, 1.0)):
            if not (np.isfinite(v) and lo <= v and (v < hi or (name == "ema_decay" and v <= hi))):
                raise ValueError(f"AdamW(): {name}={v!r} is out of range")
        self.model = model
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(betas[0]), float(betas[1]), float(eps)
        self.weight_decay, self.max_grad_norm = float(weight_decay), float(max_grad_norm)
        self.ema_decay = float(ema_decay)
        self.step_count = 0
        n, dt, dev = model.num_params, model.dtype, model.device
        self.m, self.v = zeros(n, dt, dev), zeros(n, dt, dev)
        self.ema = None
        if ema_decay > 0:
            self.ema = empty(n, dt, dev)
            _mod().copy(self.ema, model.params)
        self.grads = zeros(n, dt, dev)
        self._norm = zeros(1, "float64", dev)
        self._work = zeros(1024, "float64", dev)

    def zero_grad(self) -> None:
        _mod().zero(self.grads)

    def step(self, lr: float | None = None, sync: bool = True) -> float | None:
        """One update from self.grads (clipped in place). Returns the gradient norm before
        clipping (a device->host copy) unless sync=False. A non-finite norm leaves everything
        unchanged and raises FloatingPointError (when sync)."""
        lr = self.lr if lr is None else float(lr)
        if not (np.isfinite(lr) and lr >= 0):
            raise ValueError(f"step(): lr={lr!r} must be finite and >= 0")
        cuda = _mod()
        cuda.grad_norm(self.grads, self._norm, self._work)
        k = self.step_count + 1
        bc1 = 1.0 - self.beta1 ** float(k)
        bc2 = 1.0 - self.beta2 ** float(k)
        consts = (lr / bc1, 1.0 / np.sqrt(bc2), 1.0 - lr * self.weight_decay, self.beta1, self.beta2,
                  self.eps, 1.0 - self.beta1, 1.0 - self.beta2, self.ema_decay, 1.0 - self.ema_decay)
        cuda.adamw_update(tuple(float(c) for c in consts), self.max_grad_norm, self._norm,
                          self.model.params, self.grads, self.m, self.v, self.ema)
        if not sync:
            self.step_count = k  # an unchecked step: a non-finite norm is found on the next sync
            return None
        norm = float(to_host(self._norm)[0])
        if not np.isfinite(norm):
            raise FloatingPointError(f"step(): the gradient is not finite (norm={norm}); "
                                     "parameters and optimizer state unchanged")
        self.step_count = k
        return norm


# ---- the loops: the C core's, on the CUDA backend ---------------------------------------------------
#
# The sampler, rollout, update and pretraining loops are written once in the C core over the
# backend table (csrc/backend.h); the CUDA backend (kernels/backend_cuda.cu) runs them on the
# device. This module does not re-implement a loop: where a loop is not yet reachable on the
# device it says so, and it never copies device data to the host to run it there.

_NOT_PORTED = ("the C {what} loop does not run on the CUDA backend yet (issue 13: the loops are "
               "ported onto csrc/backend.h; kernels/backend_cuda.cu implements the table). Run it "
               "on the CPU (rsm.{cpu} with a CPU model) or on a build that has the port")


def _not_ported(func: str, what: str, cpu: str, model: Any = None) -> None:
    if model is not None:
        require(getattr(model, "device", 0), func)
    raise NotImplementedError(f"rsm.cuda.{func}(): " + _NOT_PORTED.format(what=what, cpu=cpu))


def _device_model(model: Any, func: str) -> Any:
    """`model` when it is an rsm model on a CUDA device (rsm.MLP(..., device='cuda')), after
    require() says CUDA is usable; a TypeError naming what to build otherwise."""
    device = getattr(model, "device", None)
    if not isinstance(device, str) or not device.startswith("cuda") or \
            getattr(model, "_core", None) is None:
        raise TypeError(f"rsm.cuda.{func}(): model must be an rsm model on a CUDA device "
                        f"(rsm.MLP(..., device='cuda') or model.to('cuda')), got "
                        f"{type(model).__name__} on {device!r}")
    require(device, func)
    return model


def sample(model: Any, n: int, path: Any, sampler: str = "ode", steps: int = 20,
           **kwargs: Any) -> Any:
    """rsm.sample on the device: the C sampler loop (csrc/sampler_real.c) over the model's CUDA
    backend table; x_init / cond are device arrays, the samples (and trajectory arrays) come back
    as device rsm.Tensors (zero-copy into torch / CuPy / JAX), the reward callable receives them
    as a device tensor."""
    from .sampling import sample as _sample

    return _sample(_device_model(model, "sample"), n, path, sampler, steps, **kwargs)


def transition_log_prob(model: Any, path: Any, x: Any, x_next: Any, step: int, ts: Any,
                        sampler: str = "sde", **kwargs: Any) -> Any:
    """log pi(x_next | x) on the device: the C sampler's log-prob (rsm.sampling.log_prob) over
    the model's CUDA backend table; x, x_next device arrays; (log_prob, mean) device tensors."""
    from .sampling import log_prob

    return log_prob(_device_model(model, "transition_log_prob"), path, x, x_next, step, ts,
                    sampler, **kwargs)


def objective(form: str, u: Any, coef: Any, **kwargs: Any) -> dict:
    """rsm.objective on the device: the C objective rows (the backend's `objective` op) run
    inside the C update loop of a device model (rsm.Trainer with such a model); the standalone
    entry on device arrays is not bound yet. Raises NotImplementedError."""
    _not_ported("objective", "standalone objective", "objective.objective")


def pretrain(model: Any, data: Any, path: Any, steps: int = 2000, **kwargs: Any) -> Any:
    """rsm.pretrain on the device: the C pretraining loop (csrc/train/pretrain_real.c) over the
    model's CUDA backend table, the AdamW state on the device; data / cond device arrays (host
    arrays are copied there once)."""
    from .training import pretrain as _pretrain

    return _pretrain(_device_model(model, "pretrain"), data, path, steps, **kwargs)
