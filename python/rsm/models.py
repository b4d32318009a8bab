"""Backbones: the MLP for low-dimensional data and an analytic Gaussian-mixture model.

Both expose `forward(x, t, cond=None)` returning the network output in the path's native
parameterization (velocity for flow, eps for VP); samplers accept either."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import _C, _device, guards
from ._device import _device_name, _host_only, _on_cuda, backend_of, times_for
from ._args import as_times, rows_of, seed_int, size_int


class MLP:
    """MLP backbone (C core): sinusoidal time embedding, optional condition vector, `depth`
    residual blocks of Linear-SiLU-Linear of width `hidden`, zero-initialised output layer.

    All parameters live in one flat buffer, `model.params` (a writable zero-copy rsm.Tensor);
    `model.named_params()` gives named numpy views into it (torch.nn.Linear layout [out, in]).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, cond_dim: int = 0,
                 seed: int = 0, *, temb_dim: int = 64, dtype: str = "float32",
                 device: Any = None) -> None:
        # the types here; the values (ranges, dtype names) are the core's and the binding's checks
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth),
                            ("cond_dim", cond_dim), ("temb_dim", temb_dim)):
            size_int(value, "MLP", name)
        seed = seed_int(seed, "MLP")
        # device "cuda[:N]": the same core, its parameters and activations on the CUDA backend
        # table (csrc/backend.h); the parameters are drawn on the host first (same seed, same
        # parameters on every device). None / "cpu": the CPU, unchanged.
        self._core = _C.MLPCore(dim, hidden, depth, cond_dim, temb_dim, dtype, int(seed),
                                backend_of(device, "MLP"))
        self.seed = int(seed)

    @property
    def device(self) -> str:
        """'cpu' or 'cuda:N': where the parameters live and forward/backward run."""
        return self._core.device

    def to(self, device: Any) -> "MLP":
        """This model on `device` ('cpu', 'cuda', 'cuda:N'): itself when already there, else an
        independent copy with the same configuration and parameters."""
        if _device_name(device) == self.device:
            return self
        c = self.config
        other = MLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], self.seed,
                    temb_dim=c["temb_dim"], dtype=c["dtype"], device=device)
        _device.copy_params(self, other)
        guards.copy_path(self, other)
        return other

    @property
    def config(self) -> dict:
        return dict(self._core.config)

    dim = property(lambda self: self._core.config["dim"], doc="State dimension D (int).")
    cond_dim = property(lambda self: self._core.config["cond_dim"],
                        doc="Condition dimension (int; 0: unconditional).")
    dtype = property(lambda self: self._core.config["dtype"], doc="'float32' or 'float64'.")
    num_params = property(lambda self: self._core.layout["num_params"], doc="Parameter count (int).")

    @property
    def params(self) -> _C.Tensor:
        """Flat parameters, a writable zero-copy view (np.from_dlpack(model.params) writes through)."""
        return self._core.params

    def named_params(self) -> dict[str, np.ndarray]:
        """Named numpy views into the flat buffer, in torch.nn.Linear layout."""
        _host_only(self, "named_params")
        flat = np.from_dlpack(self._core.params)
        c, lay = self._core.config, self._core.layout
        h, d, i = c["hidden"], c["dim"], lay["in_dim"]
        out = {"input.weight": flat[lay["in_w"]:lay["in_b"]].reshape(h, i),
               "input.bias": flat[lay["in_b"]:lay["block0"]]}
        for b in range(c["depth"]):
            o = lay["block0"] + b * lay["block_size"]
            out[f"blocks.{b}.linear1.weight"] = flat[o:o + h * h].reshape(h, h)
            out[f"blocks.{b}.linear1.bias"] = flat[o + h * h:o + h * h + h]
            o2 = o + h * h + h
            out[f"blocks.{b}.linear2.weight"] = flat[o2:o2 + h * h].reshape(h, h)
            out[f"blocks.{b}.linear2.bias"] = flat[o2 + h * h:o2 + h * h + h]
        out["output.weight"] = flat[lay["out_w"]:lay["out_b"]].reshape(d, h)
        out["output.bias"] = flat[lay["out_b"]:lay["num_params"]]
        return out

    def __repr__(self) -> str:
        c = self.config
        return (f"MLP(dim={c['dim']}, hidden={c['hidden']}, depth={c['depth']}, "
                f"cond_dim={c['cond_dim']}, dtype={c['dtype']!r}, params={self.num_params})")

    # ---- compute -----------------------------------------------------------------------------
    def forward(self, x: Any, t: Any, cond: Any = None) -> _C.Tensor:
        """Network output [n, dim] for states x[n, dim] at times t (scalar or [n])."""
        n = rows_of(x, "forward")
        return self._core.forward(x, times_for(self, t, n, "forward"), cond)

    __call__ = forward

    def vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None) -> tuple[_C.Tensor, _C.Tensor]:
        """(dx, dparams): the vector-Jacobian products of the output with `cotangent` [n, dim],
        with respect to the input x and to the flat parameters."""
        n = rows_of(x, "vjp")
        _, dx, dparams = self._core.vjp(x, times_for(self, t, n, "vjp"), cotangent, cond)
        return dx, dparams

    def forward_keep(self, x: Any, t: Any, cond: Any = None) -> tuple[_C.Tensor, int]:
        """(output, token): a forward that keeps its activations for `backward(cotangent, token)`,
        so a loss whose cotangent depends on the output needs one forward, not two."""
        n = rows_of(x, "forward")
        return self._core.forward(x, times_for(self, t, n, "forward"), cond, True)

    def backward(self, cotangent: Any, token: int) -> tuple[_C.Tensor, _C.Tensor]:
        """(dx, dparams) of the forward that returned `token`; RuntimeError if this model has run
        any forward since (its activations are gone)."""
        return self._core.backward(cotangent, int(token))

    def forward_and_vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None):
        """(output, dx, dparams) from one forward and one backward."""
        n = rows_of(x, "vjp")
        return self._core.vjp(x, times_for(self, t, n, "vjp"), cotangent, cond)

    # ---- copies and files --------------------------------------------------------------------
    def copy(self) -> "MLP":
        """An independent model with the same configuration and parameters."""
        c = self.config
        other = MLP(c["dim"], c["hidden"], c["depth"], c["cond_dim"], self.seed,
                    temb_dim=c["temb_dim"], dtype=c["dtype"], device=self._device_arg())
        other._core.set_params(self.params)
        guards.copy_path(self, other)
        return other

    def _device_arg(self) -> Any:
        return None if self.device == "cpu" else self.device

    def load_params(self, params: Any) -> None:
        """Copy a flat parameter vector (any DLPack array or sequence of reals) into the model;
        checked whole (shape, real dtype, finite in the model's dtype) before anything is written."""
        from ._validate import real_vector

        if self.device != "cpu" and _on_cuda(params):
            self._core.set_params(params)  # device to device; the binding checks shape and dtype
            return
        src = real_vector(params, self.num_params, self.dtype, "load_params", "params")
        self._core.set_params(src)

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Write the model to a safetensors file (named tensors + config), atomically."""
        from . import io

        _host_only(self, "save")
        meta = {"rsm_class": "MLP", "rsm_version": _version(), "config": json.dumps(self.config),
                "seed": str(self.seed), **guards.path_metadata(self)}
        if metadata:
            meta.update({str(k): str(v) for k, v in metadata.items()})
        io.save_file(self.named_params(), path, metadata=meta)

    @classmethod
    def _from_file(cls, tensors: dict, meta: dict, path: str) -> "MLP":
        from . import _validate as v

        where = f"load(): {path}"
        # validate the whole file (config, seed, every tensor), then allocate and fill
        c = v.mlp_config(v.meta_json(meta, "config", where), where, len(tensors))
        seed = v.meta_int(meta, "seed", where, 2**64, default=0)
        shapes = v.mlp_shapes(c)
        v.check_tensors(tensors, shapes, where)
        v.check_no_extra(tensors, set(shapes), where)
        model = v.build(lambda: cls(c["dim"], c["hidden"], c["depth"], c["cond_dim"], seed,
                                    temb_dim=c["temb_dim"], dtype=c["dtype"]), where, "MLP")
        for name, view in model.named_params().items():
            view[...] = tensors[name]
        guards.restore_path(model, meta)
        return model


class GaussianMixtureModel:
    """The exact denoiser of an isotropic Gaussian mixture  p0 = sum_k w_k N(mu_k, s_k^2 I).

    forward(x, t) returns the path's native parameterization of E[. | x_t] (closed form), so
    samplers, estimators and tests can run on the true optimum with no network error."""

    def __init__(self, means: Any, stds: Any, weights: Any, path: Any, *, dtype: str = "float64") -> None:
        means = np.ascontiguousarray(np.atleast_2d(np.asarray(means, dtype=np.float64)))
        k = means.shape[0]
        stds = np.ascontiguousarray(np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,)))
        weights = np.ascontiguousarray(np.broadcast_to(np.asarray(weights, dtype=np.float64), (k,)))
        self._core = _C.GaussianMixtureCore(means, stds, weights, dtype)
        self.means, self.stds, self.weights = means, stds, weights / weights.sum()
        self.path = path
        self.dtype = dtype
        self.dim = means.shape[1]
        self.cond_dim = 0

    @classmethod
    def from_dataset(cls, dataset: Any, path: Any, *, dtype: str = "float64") -> "GaussianMixtureModel":
        return cls(dataset.means, dataset.stds, dataset.weights, path, dtype=dtype)

    def forward(self, x: Any, t: Any, cond: Any = None) -> _C.Tensor:
        if cond is not None:
            raise ValueError("forward(): cond was given but the mixture model is unconditional")
        n = rows_of(x, "forward")
        return self._core.forward(self.path._core, x, times_for(self, t, n, "forward"))

    __call__ = forward

    def vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None) -> tuple[np.ndarray, None]:
        """(dx, None): the input VJP of forward() in closed form (float64 numpy; there are no
        parameters). With u = a x0_hat + b eps_hat (the native output), x0_hat and eps_hat are
        mixtures over components k with responsibilities gamma_k(x):
            E[x0|x]  = sum_k gamma_k (mu_k + alpha s_k^2/v_k (x - alpha mu_k))
            E[eps|x] = sum_k gamma_k (sigma/v_k) (x - alpha mu_k),   v_k = alpha^2 s_k^2 + sigma^2
            d gamma_k/dx = gamma_k (m_bar - m_k),  m_k = (x - alpha mu_k)/v_k, m_bar = sum_j gamma_j m_j."""
        if cond is not None:
            raise ValueError("vjp(): cond was given but the mixture model is unconditional")
        x = np.asarray(x, dtype=np.float64)
        g = np.asarray(cotangent, dtype=np.float64)
        n = x.shape[0]
        tt = np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))
        out = np.empty_like(x)
        # vectorised over the rows that share a time (estimators call this with many rows at one t)
        for t_value in np.unique(tt):
            rows = np.nonzero(tt == t_value)[0]
            c = self.path.coef(float(t_value))
            a, s = c["alpha"], c["sigma"]
            var = a * a * self.stds**2 + s * s                                  # [K]
            resid = x[rows][:, None, :] - a * self.means[None]                  # [r, K, D]
            logit = np.log(self.weights) - 0.5 * (resid**2).sum(2) / var - 0.5 * self.dim * np.log(var)
            gamma = np.exp(logit - logit.max(1, keepdims=True))
            gamma /= gamma.sum(1, keepdims=True)                                # [r, K]
            m = resid / var[None, :, None]                                      # grad of -log N
            dgamma = gamma[:, :, None] * ((gamma[:, :, None] * m).sum(1, keepdims=True) - m)  # [r, K, D]
            x0_terms = self.means[None] + (a * self.stds**2 / var)[None, :, None] * resid
            eps_terms = (s / var)[None, :, None] * resid
            if self.path.native == "velocity":
                ca, cb = c["dalpha"], c["dsigma"]
            else:
                ca, cb = 0.0, 1.0
            per_k = ca * x0_terms + cb * eps_terms                              # u_k(x), [r, K, D]
            diag = (gamma * (ca * a * self.stds**2 / var + cb * s / var)).sum(1)  # [r]
            gr = g[rows]
            # J^T g = diag g + sum_k dgamma_k (u_k . g)
            out[rows] = diag[:, None] * gr + (dgamma * np.einsum("rkd,rd->rk", per_k, gr)[:, :, None]).sum(1)
        return out, None

    def posterior(self, x: Any, t: Any) -> tuple[_C.Tensor, _C.Tensor]:
        """(E[x0 | x_t], E[eps | x_t]) in closed form."""
        n = rows_of(x, "posterior")
        return self._core.posterior(self.path._core, x, as_times(t, n, self.dtype, "posterior"))

    def __repr__(self) -> str:
        return f"GaussianMixtureModel(K={len(self.weights)}, dim={self.dim}, path={self.path!r})"


def _version() -> str:
    from ._build import __version__

    return __version__


def load(path: str) -> Any:
    """Load a model written by `model.save(path)` (safetensors)."""
    from . import io

    tensors, meta = io.load_file(path)  # the header and every tensor's bytes checked
    kind = meta.get("rsm_class")
    if kind == "MLP":
        return MLP._from_file(tensors, meta, path)
    if kind == "DiT":
        from .dit import DiT

        return DiT._from_file(tensors, meta, path)
    if kind == "LoRADiT":
        from .dit import LoRADiT

        return LoRADiT._from_file(tensors, meta, path)
    raise io.CheckpointError(
        f"load(): {path} is a safetensors file but not an rsm model (metadata rsm_class={kind!r})")
