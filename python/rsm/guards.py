"""Guards against silent misuse: the path a model was trained on, policy/reference aliasing,
the two meanings of "steps", and reward signatures.

A model remembers the probability path it was pretrained on (flow, or VP with its schedule) and
its output parameterization (velocity for flow, eps for VP), in memory and in its file
(metadata "rsm_path"). Files written before this existed load with the path unknown, and an
unknown path is never guessed: the checks below only refuse what a model is known not to be."""
from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

_ATTR = "_rsm_path_info"


def describe_path(path: Any) -> dict[str, Any]:
    """{"kind": "flow" | "vp", "schedule": ... (VP only), "parameterization": "velocity" | "eps"}."""
    info: dict[str, Any] = {"kind": path.kind}
    if path.kind == "vp":
        info["schedule"] = getattr(path, "schedule", "linear")
    info["parameterization"] = path.native
    return info


def _inner(model: Any) -> Any:
    """The model that owns the parameters (Guided wraps one, LoRADiT sits on its base)."""
    inner = getattr(model, "__dict__", {}).get("model")   # rsm.Guided
    if inner is not None:
        model = inner
    return model


def path_info(model: Any) -> dict[str, Any] | None:
    """What `model` is known to be trained for (describe_path), or None when unknown."""
    model = _inner(model)
    if type(model).__name__ == "GaussianMixtureModel":   # the exact model of its own path
        return describe_path(model.path)
    info = getattr(model, "__dict__", {}).get(_ATTR)
    if info is None and getattr(model, "base", None) is not None:   # LoRADiT: its base's
        info = getattr(model.base, "__dict__", {}).get(_ATTR)
    return None if info is None else dict(info)


def record_path(model: Any, path: Any) -> None:
    """Record that `model` is trained on `path` (rsm.pretrain does this; call it yourself for a
    model whose weights you loaded by hand)."""
    model = _inner(model)
    target = model.base if getattr(model, "base", None) is not None else model
    setattr(target, _ATTR, describe_path(path))


def copy_path(src: Any, dst: Any) -> None:
    """Carry the recorded path over to a copy."""
    info = path_info(src)
    if info is not None:
        setattr(_inner(dst), _ATTR, info)


def path_metadata(model: Any) -> dict[str, str]:
    """The file metadata of the recorded path ({} when unknown)."""
    info = path_info(model)
    return {} if info is None else {"rsm_path": json.dumps(info, sort_keys=True)}


def restore_path(model: Any, meta: dict[str, str]) -> None:
    """Set the recorded path from file metadata; absent or unreadable: stays unknown."""
    from .io import CheckpointError, parse_json

    raw = meta.get("rsm_path")
    if not raw:
        return
    try:  # hostile metadata (deep nesting, huge ints) stays "unknown" too, never raises
        info = parse_json(raw, "", "rsm_path", 65_536)
    except CheckpointError:
        return
    if isinstance(info, dict) and info.get("kind") in ("flow", "vp"):
        setattr(_inner(model), _ATTR, info)


def _path_name(info: dict[str, Any]) -> str:
    if info["kind"] == "flow":
        return "the flow path (velocity)"
    return f"the VP path (schedule {info.get('schedule', '?')!r}, eps)"


def path_from_info(info: dict[str, Any]) -> Any:
    from .paths import FlowPath, VPPath

    if info["kind"] == "flow":
        return FlowPath()
    schedule = info.get("schedule", "linear")
    if schedule not in ("linear", "cosine", "scaled_linear", "ddpm_linear"):
        raise ValueError(f"cannot rebuild a VP path with schedule {schedule!r}: pass path=")
    return VPPath(schedule)


def resolve_path(method: str, needs: str, path: Any, policy: Any, ref: Any,
                 vp_schedule: str = "linear") -> Any:
    """The path a trainer runs on: `path` if given, else the models' recorded path, else the
    preset's default (flow for a flow preset, else VP with the preset's vp_schedule: "linear",
    or DDPO's / ReFL's SD1.x "scaled_linear"). Refuses, naming both sides, when the preset needs
    another path than the models were trained on, when the given path differs from theirs,
    or when policy and ref were trained on different paths."""
    from .paths import FlowPath, VPPath

    infos = {name: path_info(m) for name, m in (("policy", policy), ("ref", ref))}
    known = {name: i for name, i in infos.items() if i is not None}
    if len(known) == 2 and _key(known["policy"]) != _key(known["ref"]):
        raise ValueError(f"policy was trained on {_path_name(known['policy'])} but ref on "
                         f"{_path_name(known['ref'])}; fine-tune a copy of the reference")
    trained = next(iter(known.values()), None)
    if trained is not None and needs not in ("any", trained["kind"]):
        raise ValueError(
            f"method {method!r} runs on the {needs} path, but the models were trained on "
            f"{_path_name(trained)}: its samples would be meaningless. Pick a method for the "
            f"{trained['kind']} path (rsm.methods.table() lists them) or pretrain on the {needs} path")
    if path is not None:
        if trained is not None and _key(describe_path(path)) != _key(trained):
            raise ValueError(f"path={path!r} is not the path the models were trained on "
                             f"({_path_name(trained)}); leave path= out to use theirs")
        return path
    if trained is not None:
        return path_from_info(trained)
    return FlowPath() if needs == "flow" else VPPath(vp_schedule)   # "any": VP too


def _key(info: dict[str, Any]) -> tuple:
    return (info["kind"], info.get("schedule"))


# ---- policy vs reference ---------------------------------------------------------------------

def _buffer_span(model: Any) -> tuple[int, int] | None:
    params = getattr(model, "params", None)
    if params is None:
        return None
    try:
        arr = np.from_dlpack(params)
    except (TypeError, BufferError, RuntimeError):
        return None
    start = arr.__array_interface__["data"][0]
    return start, start + arr.nbytes


def check_distinct(policy: Any, ref: Any) -> None:
    """Refuse a reference that is the policy, or that shares its parameter buffer: the KL to it
    would read 0 while the reference drifts with every update."""
    if policy is ref or _inner(policy) is _inner(ref):
        raise ValueError("policy and ref are the same model: the reference would move with every "
                         "update and the KL would read 0. Pass a frozen copy: "
                         "rsm.finetune(ref.copy(), ref, ...)")
    a, b = _buffer_span(policy), _buffer_span(ref)
    if a is not None and b is not None and a[0] < b[1] and b[0] < a[1] and a[1] > a[0]:
        raise ValueError("policy and ref share their parameter buffer (policy.params and "
                         "ref.params overlap), so the reference would move with every update. "
                         "Pass a frozen copy: rsm.finetune(ref.copy(), ref, ...)")


# ---- "steps": iterations vs sampler steps ----------------------------------------------------

def sampler_steps_alias(overrides: dict[str, Any], func: str) -> dict[str, Any]:
    """Map sampler_steps= onto the preset key "steps" (the sampler's step count); the bare
    preset key still works but warns that it is ambiguous."""
    out = dict(overrides)
    if "sampler_steps" in out:
        if "steps" in out:
            raise ValueError(f"{func}(): give sampler_steps= only (steps= is its deprecated alias)")
        out["steps"] = out.pop("sampler_steps")
    elif "steps" in out:
        warnings.warn(f"{func}(steps=...) is ambiguous and deprecated: the sampler's step count "
                      "is sampler_steps=", DeprecationWarning, stacklevel=3)
    return out


def iterations_alias(iterations: Any, steps: Any) -> Any:
    """finetune(iterations=) with steps= its deprecated alias."""
    if steps is not None:
        if iterations is not None:
            raise ValueError("finetune(): give iterations= only (steps= is its deprecated alias; "
                             "the sampler's step count is sampler_steps=)")
        warnings.warn("finetune(steps=...) is deprecated: it counts iterations, use iterations= "
                      "(the sampler's step count is sampler_steps=)", DeprecationWarning, stacklevel=3)
        return steps
    return 100 if iterations is None else iterations


# ---- rewards ---------------------------------------------------------------------------------

from ._reward import check_signature as check_reward_signature  # noqa: E402,F401  (rsm._reward)
