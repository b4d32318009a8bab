"""rsm.cuda: the CUDA backend, a thin layer over rsm._cuda (kernels/*.cu).

Device arrays are rsm.Tensor objects on "cuda:N" (or any DLPack CUDA array: torch.cuda, CuPy,
JAX), exchanged zero-copy through DLPack with the stream protocol. Every kernel's per-element math
is the CPU's (the csrc/ headers shared through RSM_HOST_DEVICE), and the scalar coefficients
(sampler steps, path coefficients, AdamW bias corrections, learning rates) are computed on the
host by the same C functions the CPU path uses, so CPU and GPU differ only by the order of
floating-point sums and by the device's libm (log/sin/cos/exp of Box-Muller and the time
embedding), not by formulas.

    model = rsm.MLP(2, 256, 3)            # CPU model, parameters initialised on the CPU
    gpu = rsm.cuda.DeviceMLP(model)       # parameters copied to cuda:0
    opt = rsm.cuda.AdamW(gpu, lr=1e-3)
    hist = rsm.cuda.pretrain(gpu, data, rsm.FlowPath(), steps=1000, optimizer=opt)
    traj = rsm.cuda.sample(gpu, 1024, rsm.FlowPath(), sampler="sde", steps=20)
    gpu.to_cpu(model)                     # parameters back

Nothing here is imported by `import rsm`; rsm.cuda_available() is the switch. Functions raise
RuntimeError with the reason when CUDA cannot be used.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _C
from .objective import FORMS, ROW_FIELDS
from .sampling import _path_core, _sampler_kind, time_grid

__all__ = ["is_available", "device_count", "empty", "zeros", "to_device", "to_host", "synchronize",
           "memory_stats", "empty_cache", "set_tf32", "tf32_enabled", "normal", "philox_u32",
           "DeviceMLP", "AdamW", "sample", "transition_log_prob", "objective", "pretrain"]

_DTYPES = ("float32", "float64")
_PARAM_CODES = {"eps": 0, "velocity": 1, "x0": 2, "score": 3}


def _mod():
    """rsm._cuda, or RuntimeError with the reason CUDA is not usable."""
    from ._build import _cuda_status
    available, reason = _cuda_status()
    if not available:
        raise RuntimeError(f"rsm.cuda: CUDA is not available: {reason}")
    from . import _cuda
    return _cuda


def is_available() -> bool:
    from ._build import cuda_available
    return cuda_available()


def device_count() -> int:
    return _mod().device_count()[0]


def _device_index(device: Any) -> int:
    if isinstance(device, str):
        if device == "cuda":
            return 0
        if device.startswith("cuda:") and device[5:].isdigit():
            return int(device[5:])
        raise ValueError(f"device must be 'cuda', 'cuda:N' or an int, got {device!r}")
    if isinstance(device, bool) or not isinstance(device, (int, np.integer)) or device < 0:
        raise ValueError(f"device must be 'cuda', 'cuda:N' or an int >= 0, got {device!r}")
    return int(device)


def _device_of(array: Any, name: str) -> int:
    kind, index = array.__dlpack_device__()
    if kind != 2:
        raise ValueError(f"{name} must be on a CUDA device, got DLPack device {kind}")
    return int(index)


def _dtype_of(array: Any) -> str:
    dtype = getattr(array, "dtype", None)
    return str(dtype).replace("torch.", "")


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


# ---- memory ------------------------------------------------------------------------------------


def empty(shape: Any, dtype: str = "float32", device: Any = 0) -> _C.Tensor:
    """Uninitialised device tensor from rsm's caching allocator (no cudaMalloc once warm)."""
    return _C.from_dlpack(_mod().empty(_shape(shape), str(dtype), _device_index(device)))


def zeros(shape: Any, dtype: str = "float32", device: Any = 0) -> _C.Tensor:
    t = empty(shape, dtype, device)
    if np.prod(_shape(shape), dtype=np.int64) > 0:
        if str(dtype) in _DTYPES:
            _mod().zero(t)
        else:
            _mod().copy(t, np.zeros(_shape(shape), dtype=str(dtype)))
    return t


def to_device(array: Any, device: Any = 0, dtype: str | None = None) -> _C.Tensor:
    """A device copy of a host array (anything numpy accepts)."""
    host = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    t = empty(host.shape, host.dtype.name, device)
    if host.size:
        _mod().copy(t, host)
    return t


def to_host(array: Any) -> np.ndarray:
    """A numpy copy of a device array (waits for the work that writes it)."""
    shape = tuple(int(s) for s in array.shape)
    out = np.empty(shape, dtype=_dtype_of(array))
    if out.size:
        _mod().copy(out, array)
    return out


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
    for exact parity with the CPU."""
    _mod().set_tf32(bool(enabled))


def tf32_enabled() -> bool:
    return bool(_mod().tf32())


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


# ---- sampling ------------------------------------------------------------------------------------


def _time_column(n: int, t: float, dtype: str, device: int) -> _C.Tensor:
    return to_device(np.full(n, t, dtype=dtype), device)


def sample(model: DeviceMLP, n: int, path: Any, sampler: str = "ode", steps: int = 20, *,
           noise_level: float = 0.7, eta: float | None = None, cond: Any = None, seed: int = 0,
           ts: Any = None, sde_window: tuple[int, int] | None = None, x_init: Any = None,
           return_trajectory: bool = False) -> Any:
    """rsm.sample on the device (no branching): the same Philox streams (the prior from
    (seed, PRIOR), step i's noise from (seed, STEP i)), the same step coefficients (computed by
    the CPU's rsm_sampler_step_coef) and the fused step + log-prob kernel. Returns x [n, dim], or
    with return_trajectory a dict of device tensors xs [S+1, n, D], means, noises, outputs
    [S, n, D], log_probs [S, n] and the host arrays ts, stds."""
    if not isinstance(model, DeviceMLP):
        raise TypeError(f"sample(): model must be an rsm.cuda.DeviceMLP, got {type(model).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"sample(): n={n} must be >= 1")
    kind, eta_value = _sampler_kind(sampler, eta)
    if ts is None:
        ts = time_grid(int(steps), path, "leading" if getattr(path, "discrete", False) else "uniform")
    ts = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    S = ts.shape[0] - 1
    wb, we = (0, S) if sde_window is None else (int(sde_window[0]), int(sde_window[1]))
    coefs = _C.step_coefficients(_path_core(path, "sample"), kind, ts, float(noise_level),
                                 eta_value, wb, we)
    cuda, dev, dt, D = _mod(), model.device, model.dtype, model.dim
    if model.cond_dim and cond is None:
        raise ValueError(f"sample(): the model is conditional (cond_dim={model.cond_dim}): cond is required")
    prior = int(_C.stream_id(2, 0, 0))
    xs = empty((S + 1, n, D), dt, dev)
    if x_init is None:
        cuda.fill_normal((xs, 0), int(seed), prior, 0)
    else:
        on_device = hasattr(x_init, "__dlpack_device__") and x_init.__dlpack_device__()[0] == 2
        start = x_init if on_device else to_device(np.asarray(x_init, dtype=dt).reshape(n, D), dev)
        if tuple(start.shape) != (n, D):
            raise ValueError(f"sample(): x_init must be [{n}, {D}], got {tuple(start.shape)}")
        cuda.copy(xs, start)  # the first n * D elements
    if return_trajectory:
        means, outputs = empty((S, n, D), dt, dev), empty((S, n, D), dt, dev)
        noises = zeros((S, n, D), dt, dev)  # Heun steps write none: z = 0 as on the CPU
        log_probs = zeros((S, n), dt, dev)
    u = empty((n, D), dt, dev)
    nd = n * D
    for i, c in enumerate(coefs):
        x_i, x_next = (xs, i * nd), (xs, (i + 1) * nd)
        out_u = (outputs, i * nd) if return_trajectory else u
        model.forward(x_i, _time_column(n, c["t"], dt, dev), cond, out=out_u, rows=n)
        if c["heun"]:
            x_e, u2 = empty((n, D), dt, dev), empty((n, D), dt, dev)
            cuda.heun_predict(x_i, out_u, x_e, c["dt"], c["v_x"], c["v_u"])
            model.forward(x_e, _time_column(n, c["t_next"], dt, dev), cond, out=u2)
            for target in (x_next, (means, i * nd)) if return_trajectory else (x_next,):
                cuda.heun_mean(x_i, out_u, x_e, u2, target, c["dt"], c["v_x"], c["v_u"],
                               c["v_x_next"], c["v_u_next"])
            continue
        stochastic = bool(c["stochastic"])
        cuda.sampler_step(x_i, out_u, x_next,
                          (means, i * nd) if return_trajectory else None,
                          (noises, i * nd) if return_trajectory else None,
                          (log_probs, i * n) if return_trajectory else None,
                          c["A"], c["K"], c["std"], stochastic, int(seed),
                          int(_C.stream_id(3, i, 0)), n, D)
    if not return_trajectory:
        x = empty((n, D), dt, dev)
        cuda.copy(x, (xs, S * nd))
        return x
    return {"xs": xs, "means": means, "noises": noises, "outputs": outputs,
            "log_probs": log_probs, "ts": ts, "stds": np.array([c["std"] for c in coefs])}


def transition_log_prob(model: DeviceMLP, path: Any, x: Any, x_next: Any, step: int, ts: Any,
                        sampler: str = "sde", *, noise_level: float = 0.7, eta: float | None = None,
                        cond: Any = None, sde_window: tuple[int, int] | None = None) -> _C.Tensor:
    """log pi_model(x_next | x) of step `step` (the policy-ratio primitive) on the device."""
    kind, eta_value = _sampler_kind(sampler, eta, "transition_log_prob")
    ts = np.ascontiguousarray(np.asarray(ts, dtype=np.float64))
    S = ts.shape[0] - 1
    wb, we = (0, S) if sde_window is None else (int(sde_window[0]), int(sde_window[1]))
    coefs = _C.step_coefficients(_path_core(path, "transition_log_prob"), kind, ts,
                                 float(noise_level), eta_value, wb, we)
    if not 0 <= int(step) < S:
        raise ValueError(f"transition_log_prob(): step={step} is outside [0, {S})")
    c = coefs[int(step)]
    if not c["stochastic"]:
        raise ValueError(f"transition_log_prob(): step {step} of this sampler is deterministic "
                         "(std = 0): no transition density")
    n, D, dt, dev = int(x.shape[0]), model.dim, model.dtype, model.device
    u = model.forward(x, _time_column(n, c["t"], dt, dev), cond)
    lp = empty((n,), dt, dev)
    _mod().transition_log_prob(x, u, x_next, lp, None, c["A"], c["K"], c["std"], n, D)
    return lp


# ---- the RSM objective ---------------------------------------------------------------------------


def objective(form: str, u: Any, coef: Any, *, u_old: Any = None, u_ref: Any = None,
              psi: Any = None, noise: Any = None, anchor_old: bool = False,
              linear_only: bool = False, mean_over_dims: bool = False,
              normalizer: float = 1.0) -> dict:
    """rsm.objective on the device: the fused loss + cotangent kernel. coef is the host [R, 14]
    matrix of rsm.objective.row_coefficients. Returns dict(loss, cotangent (device),
    log_ratio, active, clip_fraction, kl); the per-row values come back to the host and are
    summed in row order, as on the CPU."""
    if form not in FORMS:
        raise ValueError(f"objective(): form must be one of {FORMS}, got {form!r}")
    coef = np.ascontiguousarray(coef, dtype=np.float64)
    R, D = int(u.shape[0]), int(np.prod(u.shape[1:], dtype=np.int64)) if len(u.shape) > 1 else 1
    if coef.shape != (R, len(ROW_FIELDS)):
        raise ValueError(f"objective(): coef must be [{R}, {len(ROW_FIELDS)}], got {coef.shape}")
    if not normalizer > 0:
        raise ValueError(f"objective(): normalizer={normalizer!r} must be positive")
    dev, dt = _device_of(u, "u"), _dtype_of(u)
    if coef[:, ROW_FIELDS.index("kl")].any() and u_ref is None:
        raise ValueError("objective(): a KL anchor needs u_ref")
    cot = empty((R, D), dt, dev)
    row_loss, kl_row, log_ratio = (empty((R,), "float64", dev) for _ in range(3))
    active = empty((R,), "uint8", dev)
    _mod().objective(FORMS.index(form), bool(anchor_old), bool(linear_only), bool(mean_over_dims),
                     float(normalizer), R, D, to_device(coef, dev), u, u_old, u_ref, psi, noise,
                     cot, row_loss, kl_row, log_ratio, active)
    rl, kl, act = to_host(row_loss), to_host(kl_row), to_host(active).astype(bool)
    weight = coef[:, ROW_FIELDS.index("weight")]
    total = 0.0
    for v in rl:  # row order, as the CPU loop
        total += float(v)
    wsum = float(weight.sum())
    live = weight != 0
    clipped = float(weight[live & ~act].sum())
    if not np.isfinite(total):
        raise FloatingPointError(f"objective(): the objective is not finite ({total})")
    return {"loss": total, "cotangent": cot, "log_ratio": to_host(log_ratio), "active": act,
            "clip_fraction": clipped / wsum if wsum > 0 else 0.0,
            "kl": float(kl.sum()) / wsum if wsum > 0 else 0.0}


# ---- pretraining ---------------------------------------------------------------------------------


def _schedule_lr(lr: float, step: int, warmup: int, decay: int, min_ratio: float) -> float:
    """csrc/train/pretrain.c's rsm_pretrain_lr."""
    scale = 1.0
    if warmup > 0 and step < warmup:
        scale = (step + 1) / warmup
    elif decay > warmup:
        progress = min((step - warmup) / (decay - warmup), 1.0)
        scale = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + np.cos(np.pi * progress))
    return lr * scale


def pretrain(model: DeviceMLP, data: Any, path: Any, steps: int = 2000, batch_size: int = 256,
             lr: float = 1e-3, seed: int = 0, *, cond: Any = None, t_min: float | None = None,
             t_max: float = 1.0, warmup_steps: int = 0, lr_schedule: str = "constant",
             min_lr_ratio: float = 0.05, optimizer: AdamW | None = None,
             first_step: int = 0) -> dict:
    """rsm.pretrain's loop on the device: the same batches (data indices, times and noises from
    the same Philox streams; times and path coefficients drawn on the host with the CPU's
    functions), MSE to the native target, backward, AdamW. Returns dict(loss, grad_norm) arrays
    (one device->host copy per step for the norm)."""
    if not isinstance(model, DeviceMLP):
        raise TypeError(f"pretrain(): model must be an rsm.cuda.DeviceMLP, got {type(model).__name__}")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"pretrain(): lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    core = _path_core(path, "pretrain")
    if t_min is None:
        t_min = 0.0 if core.kind == "flow" else 1e-3
    cuda, dev, dt, D, C = _mod(), model.device, model.dtype, model.dim, model.cond_dim
    if hasattr(data, "__dlpack_device__") and data.__dlpack_device__()[0] == 2:
        data_dev = data  # already on the device: [n_data, D] of the model's dtype
        if _dtype_of(data) != dt or tuple(data.shape)[1:] != (D,):
            raise ValueError(f"pretrain(): device data must be [n, {D}] {dt}")
    else:
        data_dev = to_device(np.ascontiguousarray(np.asarray(data, dtype=dt)).reshape(-1, D), dev)
    n_data, B = int(data_dev.shape[0]), int(batch_size)
    if C and cond is None:
        raise ValueError(f"pretrain(): the model is conditional (cond_dim={C}): cond is required")
    cond_dev = to_device(np.asarray(cond, dtype=dt).reshape(n_data, C), dev) if C else None
    opt = optimizer if optimizer is not None else AdamW(model, lr=lr, max_grad_norm=1.0)
    xt, target = empty((B, D), dt, dev), empty((B, D), dt, dev)
    tcol = empty((B,), dt, dev)
    cond_b = empty((B, C), dt, dev) if C else None
    work = zeros(257, "float64", dev)
    pred = empty((B, D), dt, dev)
    losses, norms = np.empty(steps), np.empty(steps)
    decay = steps if lr_schedule == "cosine" else 0
    for s in range(steps):
        k = first_step + s
        words = np.from_dlpack(_C.random("u32", int(seed), int(_C.stream_id(4, k, 0)), 0, B))
        index = ((words.astype(np.uint64) * np.uint64(n_data)) >> np.uint64(32)).astype(np.int64)
        u_time = np.from_dlpack(_C.random("uniform", int(seed), int(_C.stream_id(5, k, 0)), 0, B,
                                          "float64"))
        t = (t_min + (t_max - t_min) * u_time).astype(dt)
        coefs = np.from_dlpack(core.coefs(t.astype(np.float64)))
        cuda.copy(tcol, t)
        cuda.pretrain_batch(data_dev, cond_dev, to_device(index, dev), to_device(coefs, dev),
                            int(core.native_param), int(seed), int(_C.stream_id(6, k, 0)), xt,
                            target, cond_b, B, D, C)
        model.forward(xt, tcol, cond_b, out=pred)
        cuda.mse_cotangent(pred, target, work)
        opt.zero_grad()
        model.backward(pred, opt.grads)
        norms[s] = opt.step(_schedule_lr(lr, k, warmup_steps, decay, min_lr_ratio))
        losses[s] = float(to_host(work)[0]) / (B * D)
    return {"loss": losses, "grad_norm": norms}
