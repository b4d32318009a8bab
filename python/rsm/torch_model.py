"""rsm.TorchModel: a PyTorch nn.Module fine-tuned by rsm's samplers, estimators, RSM objective and
AdamW, through the external-model protocol (rsm.external, csrc/nn/external.h).

    policy = rsm.TorchModel(net, path=rsm.FlowPath(), dim=2)
    ref = rsm.TorchModel(copy.deepcopy(net), path=rsm.FlowPath(), dim=2, trainable=False)
    run = rsm.finetune(policy, ref, reward, "flow-grpo", iterations=50)

How the module is reached (once per batch, from inside the C loops):
  forward   module(x, t) or module(x, t, cond) (or call(module, x, t, cond)) under torch.no_grad:
            rollouts, reference outputs, the update's policy outputs;
  backward  the update's cotangent dL/du is computed in C (csrc/objective.h); the module's forward
            is run again at the same inputs with autograd on, and torch.autograd.grad gives the
            parameter VJP (added into rsm's flat gradient) and the input VJP (the first-order
            estimators, DRaFT, the lean adjoint). The recomputation costs one forward per update
            block and keeps rollouts free of autograd graphs; its output is checked against the
            forward it repeats, so a non-deterministic module (dropout in train mode) is an
            error, not a silently wrong gradient.
Parameters: the module's trainable parameters (requires_grad) are copied into rsm's flat buffer
(model.params) and re-pointed as zero-copy views of it, so rsm's AdamW updates the module in place
and a failed update restores it; frozen parameters (a LoRA base, PEFT) stay where they are and are
never written. The reference may be the same module with its adapters off:
`policy.reference()` (PEFT's disable_adapter, or disable_adapters= for a hand-made adapter): no
second copy of the weights.

Determinism (importance ratios exactly 1, rsm.check_on_policy): the module must be a
deterministic function of its inputs and parameters: eval mode (no dropout), and for CUDA later
torch.use_deterministic_algorithms(True); the rollouts and the update evaluate the same rows in the
same batch composition. The module must live on the CPU until rsm's engine runs on the device:
a CUDA module is refused, never copied silently. float32 and float64."""
from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Any, Callable

from .external import ExternalModel, weak_callbacks


class TorchModelError(RuntimeError):
    """A torch module that broke the protocol (raised in forward/backward, returned a wrong
    output, or is not deterministic); the message names the model."""


_DTYPES = ("float32", "float64")


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError("rsm.TorchModel needs PyTorch (pip install torch)") from exc
    return torch


_LIVE: "weakref.WeakSet[TorchModel]" = weakref.WeakSet()   # every TorchModel alive


def _check_not_shared(name: str, module: Any, trainable: bool, adapters_off: bool) -> None:
    """Refuse a second wrapper of a module's parameters that would break the first: a second
    trainable one (it re-points the parameters away from the first's buffer, which its optimizer
    would go on updating unseen), or a frozen one over a trained module without adapters to
    switch off (a "reference" that moves with every update, its KL reading 0)."""
    ptrs = {p.data_ptr() for p in module.parameters()}
    for other in list(_LIVE):
        shared = ptrs & {p.data_ptr() for p in other.module.parameters()}
        if not shared:
            continue
        other_trains = other.num_params > 0
        if trainable and other_trains:
            raise ValueError(f"{name}: the module's parameters are already trained through "
                             f"{other.name}; wrap a module once (a copy: copy.deepcopy(module))")
        if (trainable or other_trains) and not (adapters_off or other._context is not None):
            raise ValueError(f"{name}: the module shares its parameters with {other.name}, so a "
                             "frozen reference over it would move with every update; use "
                             "policy.reference() (adapters off) or a frozen copy: "
                             "TorchModel(copy.deepcopy(module), ..., trainable=False)")


class TorchModel(ExternalModel):
    """An nn.Module as an rsm model (see the module docstring).

    module: the network; output = module(x[n, dim], t[n]) (or module(x, t, cond[n, cond_dim]))
    in `parameterization` ('velocity' on the flow path, 'eps' on VP: the path's native one);
    call(module, x, t, cond) replaces that calling convention. path: the rsm path the module was
    trained on. trainable=False: a frozen model (a reference): nothing is copied or re-pointed.
    disable_adapters: a zero-argument callable returning a context manager under which the
    module computes its base (reference) output; PEFT models have one (disable_adapter).
    optimizer: a torch.optim.Optimizer over the module's trainable parameters, used instead of
    rsm's AdamW: rsm computes the objective's gradient (the same C update, without its optimizer
    step), the module's .grad are set from it, clipped to the preset's max_grad_norm, and
    optimizer.step() runs, once per inner epoch (Trainer.update -> optimizer_update). Its state
    is the user's to save (rsm's trainer files hold rsm's AdamW only).
    tolerance: the largest difference allowed between a forward and its recomputation in the
    backward, relative to the output's largest magnitude (default 1e-4 in float32, 1e-9 in
    float64: torch may pick other kernels with autograd on, e.g. nn.MultiheadAttention's
    inference fast path, or a torch.compile'd graph; dropout differs by O(1)). The importance
    ratios do not depend on it: rollouts and the update's policy outputs are both no-grad
    forwards, and rsm.check_on_policy checks them bitwise."""

    def __init__(self, module: Any, path: Any = None, parameterization: str | None = None, *,
                 dim: int, cond_dim: int = 0, call: Callable | None = None,
                 trainable: bool = True, disable_adapters: Callable | None = None,
                 num_classes: int | None = None, name: str | None = None,
                 tolerance: float | None = None, optimizer: Any = None,
                 _context: Callable | None = None) -> None:
        torch = _torch()
        self.name = name or f"TorchModel({type(module).__name__})"
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"TorchModel(): module must be a torch.nn.Module, got {type(module).__name__}")
        if path is not None and parameterization is not None and parameterization != path.native:
            raise ValueError(f"{self.name}: parameterization={parameterization!r} is not the path's "
                             f"native one ({path.native!r}); rsm's samplers and objective read the "
                             f"native output: convert inside the module (or call=)")
        if parameterization not in (None, "velocity", "eps"):
            raise ValueError(f"{self.name}: parameterization must be 'velocity' or 'eps', got {parameterization!r}")
        named = list(module.named_parameters())
        for what, tensors in (("parameter", named), ("buffer", list(module.named_buffers()))):
            for key, value in tensors:
                if value.device.type != "cpu":
                    raise ValueError(
                        f"{self.name}: the module's {what} {key!r} is on {value.device}; rsm's "
                        "sampler and objective run on the CPU until the two-backend engine exists, "
                        "and rsm does not copy a device module to the host silently: move it with "
                        "module.cpu() (or wait for device support)")
        trained = [(k, p) for k, p in named if p.requires_grad] if trainable else []
        kinds = {str(p.dtype).replace("torch.", "") for _, p in (trained or named)}
        if len(kinds) > 1:
            raise TypeError(f"{self.name}: the trained parameters mix dtypes {sorted(kinds)}; "
                            "use one of float32 / float64 (module.double() or module.float())")
        dtype = kinds.pop() if kinds else str(torch.get_default_dtype()).replace("torch.", "")
        if dtype not in _DTYPES:
            raise TypeError(f"{self.name}: parameters of dtype {dtype} are not supported; rsm "
                            "computes in float32 or float64 (module.float() / module.double())")
        if not trainable and disable_adapters is not None:
            _context = disable_adapters
        if optimizer is not None and not (trainable and hasattr(optimizer, "step")
                                          and hasattr(optimizer, "param_groups")):
            raise TypeError(f"{self.name}: optimizer must be a torch.optim.Optimizer over the "
                            f"module's trainable parameters, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if tolerance is None:
            tolerance = 1e-4 if dtype == "float32" else 1e-9
        _check_not_shared(self.name, module, bool(trained), _context is not None)
        self.module, self.call, self.tolerance = module, call, float(tolerance)
        self.trained_names = [k for k, _ in trained]
        self._trained = [p for _, p in trained]
        self._disable_adapters = disable_adapters
        if disable_adapters is None and hasattr(module, "disable_adapter"):   # PEFT
            self._disable_adapters = module.disable_adapter
        self._context = _context
        self._path, self._num_classes, self._cond_dim = path, num_classes, cond_dim
        self._saved_out = None   # the last forward's output (checked by the backward)
        num = sum(p.numel() for p in self._trained)
        fwd, bwd = weak_callbacks(self, "_forward", "_backward")   # frozen: input VJPs only
        super().__init__(fwd, bwd, dim=dim, cond_dim=cond_dim, num_params=num, dtype=dtype,
                         name=self.name, path=path, num_classes=num_classes)
        self._torch_dtype = getattr(torch, dtype)
        self._flat, self._slices = None, []
        if num > 0:
            self._flat = torch.from_dlpack(self._core.params)
            offset = 0
            with torch.no_grad():
                for p in self._trained:
                    view = self._flat[offset:offset + p.numel()].view(p.shape)
                    view.copy_(p)
                    p.data = view   # the module now reads (and rsm's AdamW writes) rsm's buffer
                    self._slices.append((offset, p.numel()))
                    offset += p.numel()
        _LIVE.add(self)

    # ---- the reference ----------------------------------------------------------------------
    def reference(self) -> "TorchModel":
        """A frozen model computing the module with its adapters off (PEFT's disable_adapter or
        disable_adapters=): the reference of a LoRA fine-tune without a second copy of the base
        weights. Without adapters this would be the policy itself: refused."""
        if self._disable_adapters is None:
            raise ValueError(f"{self.name}: reference() needs adapters to switch off (a PEFT model, "
                             "or disable_adapters=); otherwise the reference would move with every "
                             "update. Use a frozen copy: TorchModel(copy.deepcopy(module), ..., "
                             "trainable=False)")
        return TorchModel(self.module, self._path, dim=self.dim, cond_dim=self._cond_dim,
                          call=self.call, trainable=False, num_classes=self._num_classes,
                          name=f"{self.name}.reference()", _context=self._disable_adapters)

    def named_params(self) -> dict[str, Any]:
        """The trained parameters by name, as numpy views of rsm's flat buffer."""
        import numpy as np

        flat = np.from_dlpack(self._core.params)
        return {k: flat[o:o + n].reshape(tuple(p.shape))
                for k, p, (o, n) in zip(self.trained_names, self._trained, self._slices)}

    def __repr__(self) -> str:
        return (f"{self.name}(dim={self.dim}, cond_dim={self.cond_dim}, dtype={self.dtype!r}, "
                f"trained={self.num_params})")

    # ---- the callbacks (rsm.external's protocol) ----------------------------------------------
    def _run(self, x: Any, t: Any, cond: Any) -> Any:
        ctx = self._context() if self._context is not None else contextlib.nullcontext()
        with ctx:
            if self.call is not None:
                return self.call(self.module, x, t, cond)
            return self.module(x, t) if cond is None else self.module(x, t, cond)

    def _inputs(self, x: Any, t: Any, cond: Any) -> tuple[Any, Any, Any]:
        torch = _torch()
        return (torch.from_dlpack(x), torch.from_dlpack(t),
                None if cond is None else torch.from_dlpack(cond))

    def _check(self, u: Any, x: Any) -> Any:
        torch = _torch()
        if not isinstance(u, torch.Tensor):
            raise TorchModelError(f"{self.name}: the module returned {type(u).__name__}, expected a "
                                  f"torch.Tensor of shape {tuple(x.shape)}")
        if u.device.type != "cpu":
            raise TorchModelError(f"{self.name}: the module returned a tensor on {u.device}; rsm "
                                  "runs on the CPU (no silent host copies)")
        if u.dtype != self._torch_dtype:
            raise TorchModelError(f"{self.name}: the module returned {u.dtype}, expected "
                                  f"{self._torch_dtype} (the model's dtype)")
        if tuple(u.shape) != tuple(x.shape):
            raise TorchModelError(f"{self.name}: the module returned shape {tuple(u.shape)}, "
                                  f"expected {tuple(x.shape)} (the shape of x)")
        return u

    def _forward(self, x: Any, t: Any, cond: Any) -> Any:
        torch = _torch()
        xt, tt, ct = self._inputs(x, t, cond)
        try:
            with torch.no_grad():
                u = self._check(self._run(xt, tt, ct), xt)
        except TorchModelError:
            raise
        except Exception as exc:
            raise TorchModelError(f"{self.name}: forward raised {type(exc).__name__}: {exc}") from exc
        self._saved_out = u
        return u.contiguous()

    def _backward(self, x: Any, t: Any, cond: Any, cot: Any, dparams: Any, dx: Any) -> None:
        torch = _torch()
        xt, tt, ct = self._inputs(x, t, cond)
        saved, self._saved_out = self._saved_out, None
        try:
            with torch.enable_grad():
                xin = xt.detach().clone().requires_grad_(dx is not None)
                u = self._check(self._run(xin, tt, ct), xin)
                params = list(self._trained) if dparams is not None else []
                wrt = params + ([xin] if dx is not None else [])
                grads = torch.autograd.grad(u, wrt, grad_outputs=torch.from_dlpack(cot),
                                            allow_unused=True) if wrt else []
        except TorchModelError:
            raise
        except Exception as exc:
            raise TorchModelError(f"{self.name}: backward raised {type(exc).__name__}: {exc}") from exc
        if saved is not None and not self._same(u.detach(), saved):
            diff = float((u.detach() - saved).abs().max())
            raise TorchModelError(
                f"{self.name}: the forward is not deterministic: recomputing it at the same inputs "
                f"gave outputs that differ by {diff:.3g} (dropout or another random layer in train "
                "mode? call module.eval()); the gradient would be taken at another point")
        if dparams is not None:
            flat = torch.from_dlpack(dparams)
            for (offset, n), g in zip(self._slices, grads):
                if g is not None:   # an unused parameter: no gradient
                    flat[offset:offset + n] += g.reshape(-1)
        if dx is not None:
            g = grads[-1]
            out = torch.from_dlpack(dx)
            out.copy_(g) if g is not None else out.zero_()

    def _same(self, a: Any, b: Any) -> bool:
        if a.numel() == 0:
            return True
        return float((a - b).abs().max()) <= self.tolerance * max(float(b.abs().max()), 1e-30)

    # ---- the user's torch optimizer (optimizer=) ----------------------------------------------
    def optimizer_update(self, trainer: Any, batches: list, normalizer: float) -> dict:
        """Trainer.update with the user's torch optimizer: per inner epoch, rsm's gradient of the
        objective at the current parameters (the C update without its AdamW step, or DRaFT's
        pathwise gradient), then clip + optimizer.step(). All or nothing: a failure in any epoch
        restores the parameters and the optimizer's state. Returns the step statistics."""
        import numpy as np
        from .methods import pathwise, update as blocks

        torch = _torch()
        cfg, s = trainer.cfg, trainer.setting
        epochs = int(cfg["inner_epochs"])
        stats: dict[str, Any] = {"train_nfe": 0, "rows": int(sum(len(r["traj"]) for b in batches for r in b["rows"]))}
        saved = (self._flat.clone(), copy.deepcopy(self.optimizer.state_dict()))
        try:
            for epoch in range(epochs):
                if cfg.through_sampler:
                    parts = [pathwise.draft_grad(self, s, b) for b in batches]
                    grads = sum(g for g, _ in parts) / len(batches)
                    st = {"loss": sum(p["loss"] for _, p in parts) / len(batches), "kl": 0.0,
                          "kl_anchor": 0.0, "clip_fraction_per_step": {}}
                    stats["train_nfe"] += sum(p["train_nfe"] for _, p in parts)
                else:
                    per_batch, out = blocks.run(self, trainer.ref, trainer.optimizer, s, batches,
                                                normalizer, epochs=0)
                    grads = np.from_dlpack(out["grads"])
                    st = blocks.block_stats(cfg, batches, per_batch, *(np.from_dlpack(out[k]) for k in
                                                                       ("loss", "kl", "clip_fraction")))
                    stats["train_nfe"] += int(out["nfe"])
                if not np.all(np.isfinite(grads)):
                    raise FloatingPointError(f"{self.name}: the gradient is not finite (epoch {epoch})")
                flat = torch.from_numpy(np.ascontiguousarray(grads))
                for p, (o, n) in zip(self._trained, self._slices):
                    p.grad = flat[o:o + n].view(p.shape).clone()
                norm = float(torch.linalg.vector_norm(flat))
                if cfg["max_grad_norm"]:
                    torch.nn.utils.clip_grad_norm_(self._trained, cfg["max_grad_norm"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if epoch == 0:
                    stats["loss"], stats["kl"], stats["kl_anchor"] = st["loss"], st["kl"], st["kl_anchor"]
                per_step = st["clip_fraction_per_step"]
                stats["grad_norm"] = norm
        except BaseException:
            with torch.no_grad():
                self._flat.copy_(saved[0])
            self.optimizer.load_state_dict(saved[1])
            raise
        stats["clip_fraction"] = float(np.mean(list(per_step.values()))) if per_step else 0.0
        stats["clip_fraction_per_step"] = [per_step[k] for k in sorted(per_step)]
        return stats
