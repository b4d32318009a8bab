"""The DiT image backbone (C core): a class-conditional Diffusion Transformer with adaLN-Zero,
LoRA adapters that share the frozen base weights, and optional gradient checkpointing.

    model = rsm.DiT(image_size=8, channels=1, patch=2, width=64, depth=4, heads=4, num_classes=10)
    u = model.forward(x, t, cond)          # x [n, C, S, S] or [n, C*S*S]; cond int ids [n] or None
    policy = rsm.lora(model, rank=4)       # trainable params: the adapters only
    merged = policy.merge()                # a plain DiT with W + (alpha/r) B A

Class id `num_classes` is the null class (classifier-free guidance); cond=None means every row is
null. Inside the C vtable (samplers, the Trainer) the id travels as a real in cond[n, 1]."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import _C, _device, guards
from ._args import positive_int, rows_of, seed_int, size_int
from ._device import _device_name, _host_only, _on_cuda, backend_of, times_for

_LINEARS = (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        return np.from_dlpack(x)
    return np.asarray(x)


class _DiTCompute:
    """forward / vjp / forward_keep / backward shared by DiT and LoRADiT (both hold `_core`)."""

    _core: Any

    # ---- description -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._core.layout["dim"]

    @property
    def cond_dim(self) -> int:
        return 1

    @property
    def dtype(self) -> str:
        return self._core.config["dtype"]

    @property
    def num_params(self) -> int:
        """Number of trainable parameters (the adapters of a LoRA model)."""
        return int(self._core.params.shape[0])

    @property
    def device(self) -> str:
        """'cpu' or 'cuda:N': where the parameters live and forward/backward run."""
        return self._core.device

    @property
    def params(self) -> _C.Tensor:
        """Trainable flat parameters, a writable zero-copy view."""
        return self._core.params

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self._core.config
        return (c["channels"], c["image_size"], c["image_size"])

    @property
    def checkpoint(self) -> bool:
        """Gradient checkpointing: recompute block activations in backward (same gradients)."""
        return self._core.checkpoint

    @checkpoint.setter
    def checkpoint(self, value: bool) -> None:
        self._core.checkpoint = bool(value)

    def activation_bytes(self, n: int) -> int:
        """Bytes of activations a forward of n rows keeps for its backward, in the current mode
        (checkpointing keeps each block's input instead of all its intermediate tensors)."""
        return self._core.activation_bytes(positive_int(n, "activation_bytes", "n", minimum=0))

    # ---- arguments ---------------------------------------------------------------------------
    def _rows(self, x: Any, func: str) -> tuple[Any, int, bool]:
        """x as [n, dim] (a zero-copy view where possible), n, and whether it came as images."""
        n = rows_of(x, func)
        shape = tuple(getattr(x, "shape", np.shape(x)))
        if len(shape) == 4 and self.device != "cpu":
            raise ValueError(f"{func}(): on {self.device} x must be a device array of shape "
                             f"[n, {self.dim}] (x.reshape(n, -1)), got {shape}")
        if len(shape) == 4:
            if shape[1:] != self.image_shape:
                raise ValueError(f"{func}(): x must have shape [n, {', '.join(map(str, self.image_shape))}] "
                                 f"or [n, {self.dim}], got {shape}")
            return np.ascontiguousarray(_as_array(x)).reshape(n, self.dim), n, True
        if len(shape) != 2 or shape[1] != self.dim:
            raise ValueError(f"{func}(): x must have shape [n, {', '.join(map(str, self.image_shape))}] "
                             f"or [n, {self.dim}], got {shape}")
        return x, n, False

    def _cond(self, cond: Any, n: int, func: str) -> np.ndarray | None:
        """Class ids (ints in 0..num_classes; num_classes = null) as the [n, 1] reals of the core."""
        if cond is None:
            return None
        if self.device != "cpu":
            # class ids are checked on the host (n small integers), then moved to the device
            host = cond
            if _on_cuda(cond):
                host = _device.to_host(cond)
            return _device.to_model_device(self, self._host_cond(host, n, func), func)
        return self._host_cond(cond, n, func)

    def _host_cond(self, cond: Any, n: int, func: str) -> np.ndarray:
        k = self._core.config["num_classes"]
        try:
            arr = np.asarray(_as_array(cond))
        except (TypeError, ValueError):
            raise TypeError(f"{func}(): cond must be an array of class ids, got {type(cond).__name__}") from None
        if arr.ndim == 0:
            arr = np.full(n, arr)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{func}(): cond must have shape [{n}] (class ids), got {tuple(arr.shape)}")
        if arr.dtype.kind not in "iuf" and arr.dtype != np.bool_:
            raise TypeError(f"{func}(): cond must hold integer class ids, got dtype {arr.dtype}")
        vals = arr.astype(np.float64)
        bad = ~np.isfinite(vals) | (vals != np.floor(vals)) | (vals < 0) | (vals > k)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{func}(): cond[{i}]={arr[i].item()!r} is not a class id: expected an integer "
                             f"in 0..{k} ({k} is the null class)")
        return np.ascontiguousarray(vals.reshape(n, 1), dtype=self.dtype)

    def _prepare_cond(self, cond: Any, n: int) -> np.ndarray | None:
        """The sampler's hook (rsm.sample, rsm.log_prob): class ids -> the core's [n, 1] reals."""
        return self._cond(cond, n, "sample")

    def _shaped(self, out: Any, images: bool, n: int) -> Any:
        return np.from_dlpack(out).reshape((n,) + self.image_shape) if images else out

    # ---- compute -----------------------------------------------------------------------------
    def forward(self, x: Any, t: Any, cond: Any = None) -> Any:
        """Network output (the path's native parameterization) with x's shape."""
        x2, n, images = self._rows(x, "forward")
        out = self._core.forward(x2, times_for(self, t, n, "forward"), self._cond(cond, n, "forward"))
        return self._shaped(out, images, n)

    __call__ = forward

    def vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None) -> tuple[Any, _C.Tensor]:
        """(dx, dparams): VJPs of the output with `cotangent` (x's shape) with respect to x and to
        the trainable flat parameters."""
        x2, n, images = self._rows(x, "vjp")
        cot = np.ascontiguousarray(_as_array(cotangent)).reshape(n, self.dim) if images else cotangent
        _, dx, dparams = self._core.vjp(x2, times_for(self, t, n, "vjp"), cot, self._cond(cond, n, "vjp"))
        return self._shaped(dx, images, n), dparams

    def forward_keep(self, x: Any, t: Any, cond: Any = None) -> tuple[Any, int]:
        """(output, token): a forward that keeps its activations for backward(cotangent, token)."""
        x2, n, images = self._rows(x, "forward")
        out, token = self._core.forward(x2, times_for(self, t, n, "forward"),
                                        self._cond(cond, n, "forward"), True)
        return self._shaped(out, images, n), token

    def backward(self, cotangent: Any, token: int) -> tuple[Any, _C.Tensor]:
        """(dx, dparams) of the forward that returned `token` (RuntimeError if another forward ran
        since). dx has the cotangent's shape."""
        shape = tuple(getattr(cotangent, "shape", np.shape(cotangent)))
        if len(shape) == 4:
            n = shape[0]
            dx, dp = self._core.backward(np.ascontiguousarray(_as_array(cotangent)).reshape(n, self.dim), int(token))
            return self._shaped(dx, True, n), dp
        return self._core.backward(cotangent, int(token))

    def forward_and_vjp(self, x: Any, t: Any, cotangent: Any, cond: Any = None):
        """(output, dx, dparams) from one forward and one backward ([n, dim] arrays)."""
        x2, n, _ = self._rows(x, "vjp")
        return self._core.vjp(x2, times_for(self, t, n, "vjp"), cotangent, self._cond(cond, n, "vjp"))

    def load_params(self, params: Any) -> None:
        """Copy a flat vector of the trainable parameters into the model; checked whole (shape,
        real dtype, finite in the model's dtype) before anything is written."""
        from ._validate import real_vector

        if self.device != "cpu" and _on_cuda(params):
            self._core.set_params(params)  # device to device; the binding checks shape and dtype
            return
        src = real_vector(params, self.num_params, self.dtype, "load_params", "params")
        self._core.set_params(src)


def _base_views(flat: np.ndarray, config: dict, lay: dict) -> dict[str, np.ndarray]:
    w, pd, f, k = config["width"], lay["patch_dim"], config["temb_dim"], config["num_classes"]

    def view(off: int, *shape: int) -> np.ndarray:
        size = int(np.prod(shape))
        return flat[off:off + size].reshape(shape)

    out = {"patch.weight": view(lay["patch_w"], w, pd), "patch.bias": view(lay["patch_b"], w),
           "time.linear1.weight": view(lay["temb_w1"], w, f), "time.linear1.bias": view(lay["temb_b1"], w),
           "time.linear2.weight": view(lay["temb_w2"], w, w), "time.linear2.bias": view(lay["temb_b2"], w),
           "class_embedding": view(lay["class_emb"], k + 1, w)}
    shapes = {"adaLN": (6 * w, w), "attn.qkv": (3 * w, w), "attn.proj": (w, w), "mlp.fc1": (4 * w, w),
              "mlp.fc2": (w, 4 * w)}
    keys = {"adaLN": ("ada_w", "ada_b"), "attn.qkv": ("qkv_w", "qkv_b"), "attn.proj": ("proj_w", "proj_b"),
            "mlp.fc1": ("fc1_w", "fc1_b"), "mlp.fc2": ("fc2_w", "fc2_b")}
    for b in range(config["depth"]):
        o = lay["block0"] + b * lay["block_size"]
        for name, (kw, kb) in keys.items():
            out[f"blocks.{b}.{name}.weight"] = view(o + lay[kw], *shapes[name])
            out[f"blocks.{b}.{name}.bias"] = view(o + lay[kb], shapes[name][0])
    out["final.adaLN.weight"] = view(lay["final_ada_w"], 2 * w, w)
    out["final.adaLN.bias"] = view(lay["final_ada_b"], 2 * w)
    out["final.linear.weight"] = view(lay["out_w"], pd, w)
    out["final.linear.bias"] = view(lay["out_b"], pd)
    return out


class DiT(_DiTCompute):
    """Class-conditional DiT backbone in C (see csrc/nn/dit.h for the architecture).

    DiT(image_size, channels, patch, width, depth, heads, num_classes, seed=0, dtype="float32",
    checkpoint=False, temb_dim=64). All parameters live in one flat buffer (`model.params`);
    `named_params()` gives named numpy views (torch.nn.Linear layout [out, in]). An untrained model
    outputs 0 (adaLN-Zero)."""

    def __init__(self, image_size: int, channels: int, patch: int, width: int, depth: int,
                 heads: int, num_classes: int, seed: int = 0, dtype: str = "float32", *,
                 checkpoint: bool = False, temb_dim: int = 64, device: Any = None) -> None:
        # the types here; the values (ranges, divisibility, dtype names) are the core's and the
        # binding's checks
        for name, value in (("image_size", image_size), ("channels", channels), ("patch", patch),
                            ("width", width), ("depth", depth), ("heads", heads),
                            ("num_classes", num_classes), ("temb_dim", temb_dim)):
            size_int(value, "DiT", name)
        seed = seed_int(seed, "DiT")
        # device "cuda[:N]": parameters, positions and activations on the CUDA backend table
        # (drawn on the host first: same seed, same parameters); LoRA stays on the CPU for now
        self._core = _C.DiTCore(image_size, channels, patch, width, depth, heads, num_classes,
                                temb_dim, dtype, int(seed), bool(checkpoint),
                                backend=backend_of(device, "DiT"))
        self.seed = int(seed)

    def to(self, device: Any) -> "DiT":
        """This model on `device` ('cpu', 'cuda', 'cuda:N'): itself when already there, else an
        independent copy with the same configuration and parameters."""
        if _device_name(device) == self.device:
            return self
        other = self._like(device)
        _device.copy_params(self, other)
        guards.copy_path(self, other)
        return other

    def _like(self, device: Any) -> "DiT":
        c = self.config
        return DiT(c["image_size"], c["channels"], c["patch"], c["width"], c["depth"], c["heads"],
                   c["num_classes"], self.seed, c["dtype"], checkpoint=c["checkpoint"],
                   temb_dim=c["temb_dim"], device=device)

    @property
    def config(self) -> dict:
        return dict(self._core.config)

    def named_params(self) -> dict[str, np.ndarray]:
        _host_only(self, "named_params")
        return _base_views(np.from_dlpack(self._core.params), self._core.config, self._core.layout)

    def __repr__(self) -> str:
        c = self.config
        return (f"DiT(image_size={c['image_size']}, channels={c['channels']}, patch={c['patch']}, "
                f"width={c['width']}, depth={c['depth']}, heads={c['heads']}, "
                f"num_classes={c['num_classes']}, dtype={c['dtype']!r}, params={self.num_params})")

    def copy(self) -> "DiT":
        other = self._like(None if self.device == "cpu" else self.device)
        other._core.set_params(self.params)
        guards.copy_path(self, other)
        return other

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Write the model to a safetensors file (named tensors + config), atomically."""
        from . import io
        from ._build import __version__

        _host_only(self, "save")
        meta = {"rsm_class": "DiT", "rsm_version": __version__, "config": json.dumps(self.config),
                "seed": str(self.seed), **guards.path_metadata(self)}
        if metadata:
            meta.update({str(k): str(v) for k, v in metadata.items()})
        io.save_file(self.named_params(), path, metadata=meta)

    @classmethod
    def _from_config(cls, c: dict, seed: int) -> "DiT":
        return cls(c["image_size"], c["channels"], c["patch"], c["width"], c["depth"], c["heads"],
                   c["num_classes"], seed, c["dtype"], checkpoint=bool(c.get("checkpoint", False)),
                   temb_dim=c["temb_dim"])

    @classmethod
    def _checked_config(cls, tensors: dict, meta: dict, path: str, prefix: str) -> tuple[dict, int, dict]:
        """(config, seed, tensor shapes) of a DiT file, every tensor checked; nothing allocated."""
        from . import _validate as v

        where = f"load(): {path}"
        c = v.dit_config(v.meta_json(meta, "config", where), where, len(tensors))
        seed = v.meta_int(meta, "seed", where, 2**64, default=0)
        shapes = v.dit_shapes(c)
        v.check_tensors(tensors, shapes, where, prefix)
        return c, seed, shapes

    @classmethod
    def _build(cls, c: dict, seed: int, tensors: dict, path: str, prefix: str, meta: dict) -> "DiT":
        from . import _validate as v

        model = v.build(lambda: cls._from_config(c, seed), f"load(): {path}", "DiT")
        for name, view in model.named_params().items():
            view[...] = tensors[prefix + name]
        guards.restore_path(model, meta)
        return model

    @classmethod
    def _from_file(cls, tensors: dict, meta: dict, path: str) -> "DiT":
        from . import _validate as v

        c, seed, shapes = cls._checked_config(tensors, meta, path, "")
        v.check_no_extra(tensors, set(shapes), f"load(): {path}")
        return cls._build(c, seed, tensors, path, "", meta)


class LoRADiT(_DiTCompute):
    """A DiT policy whose trainable parameters are LoRA adapters on the frozen weights of `base`
    (shared, not copied): y = x W^T + b + (alpha / rank) (x A^T) B^T on the targeted linears.
    Made by rsm.lora(ref, ...)."""

    def __init__(self, base: DiT, rank: int = 4, alpha: float | None = None,
                 targets: tuple[str, ...] | list[str] = ("attn", "mlp"), seed: int = 0) -> None:
        if not isinstance(base, DiT):
            raise TypeError(f"lora(): ref must be an rsm.DiT, got {type(base).__name__}")
        rank = positive_int(rank, "lora", "rank")
        alpha = float(rank if alpha is None else alpha)
        if not np.isfinite(alpha):
            raise ValueError(f"lora(): alpha={alpha} must be finite")
        if isinstance(targets, str):
            targets = (targets,)
        targets = tuple(targets)
        if not targets or any(t not in ("attn", "mlp") for t in targets):
            raise ValueError(f"lora(): targets must name 'attn' and/or 'mlp', got {targets!r}")
        seed = seed_int(seed, "lora")
        self.base = base
        self.rank, self.alpha, self.targets, self.seed = rank, alpha, targets, int(seed)
        self._core = _C.DiTCore(base=base._core, rank=rank, alpha=alpha, targets=list(targets), seed=int(seed))

    @property
    def config(self) -> dict:
        c = dict(self._core.config)
        c.update(lora_rank=self.rank, lora_alpha=self.alpha, lora_targets=list(self.targets))
        return c

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def named_params(self) -> dict[str, np.ndarray]:
        """Named views of the adapters: blocks.{l}.{attn.qkv,...}.lora_A [r, in] / lora_B [out, r]."""
        flat = np.from_dlpack(self._core.params)
        lo = self._core.lora
        w, r = self._core.config["width"], self.rank
        dims = {"qkv": (w, 3 * w), "proj": (w, w), "fc1": (w, 4 * w), "fc2": (4 * w, w)}
        out = {}
        for b in range(self._core.config["depth"]):
            for k, (group, name) in enumerate(_LINEARS):
                if lo["a"][k] < 0:
                    continue
                fan_in, fan_out = dims[name]
                oa = b * lo["block_size"] + lo["a"][k]
                ob = b * lo["block_size"] + lo["b"][k]
                out[f"blocks.{b}.{group}.{name}.lora_A"] = flat[oa:oa + r * fan_in].reshape(r, fan_in)
                out[f"blocks.{b}.{group}.{name}.lora_B"] = flat[ob:ob + fan_out * r].reshape(fan_out, r)
        return out

    def merge(self) -> DiT:
        """A plain DiT with the adapters folded in: W + (alpha / rank) B A (the base is untouched)."""
        merged = self.base.copy()
        views = merged.named_params()
        for name, a in self.named_params().items():
            if name.endswith(".lora_A"):
                stem = name[: -len(".lora_A")]
                b = self.named_params()[stem + ".lora_B"]
                w = views[stem + ".weight"]
                w += (self.scale * (b.astype(np.float64) @ a.astype(np.float64))).astype(w.dtype)
        return merged

    def copy(self) -> "LoRADiT":
        """Another policy on the same (shared) base with a copy of these adapters."""
        other = LoRADiT(self.base, self.rank, self.alpha, self.targets, self.seed)
        other.checkpoint = self.checkpoint
        np.from_dlpack(other.params)[...] = np.from_dlpack(self.params)
        return other

    def __repr__(self) -> str:
        return (f"LoRADiT(rank={self.rank}, alpha={self.alpha}, targets={self.targets}, "
                f"params={self.num_params}, base={self.base!r})")

    def save(self, path: str, metadata: dict[str, str] | None = None) -> None:
        """Write base weights ("base.*") and adapters to one safetensors file."""
        from . import io
        from ._build import __version__

        tensors = {f"base.{k}": v for k, v in self.base.named_params().items()}
        tensors.update(self.named_params())
        meta = {"rsm_class": "LoRADiT", "rsm_version": __version__,
                "config": json.dumps(self.base.config), "seed": str(self.base.seed),
                "lora": json.dumps({"rank": self.rank, "alpha": self.alpha,
                                    "targets": list(self.targets), "seed": self.seed}),
                **guards.path_metadata(self)}
        if metadata:
            meta.update({str(k): str(v) for k, v in metadata.items()})
        io.save_file(tensors, path, metadata=meta)

    @classmethod
    def _from_file(cls, tensors: dict, meta: dict, path: str) -> "LoRADiT":
        from . import _validate as v

        where = f"load(): {path}"
        # the base and the adapters checked whole before either is allocated
        c, seed, shapes = DiT._checked_config(tensors, meta, path, "base.")
        lo = v.lora_config(v.meta_json(meta, "lora", where), where)
        adapters = v.lora_shapes(c, lo)
        v.check_tensors(tensors, adapters, where)
        v.check_no_extra(tensors, {"base." + k for k in shapes} | set(adapters), where)
        base = DiT._build(c, seed, tensors, path, "base.", meta)
        policy = v.build(lambda: cls(base, lo["rank"], lo["alpha"], lo["targets"], lo["seed"]), where, "LoRA")
        for name, view in policy.named_params().items():
            view[...] = tensors[name]
        return policy


def lora(ref: DiT, rank: int = 4, alpha: float | None = None,
         targets: tuple[str, ...] | list[str] = ("attn", "mlp"), seed: int = 0) -> LoRADiT:
    """A LoRA policy over `ref`: adapters (A random small, B zero, scale alpha/rank) on the
    targeted linears ("attn": qkv and proj, "mlp": fc1 and fc2), sharing ref's frozen weights.
    policy.params are the adapters only; policy.merge() gives a plain DiT; policy.base is ref."""
    return LoRADiT(ref, rank, alpha, targets, seed)
