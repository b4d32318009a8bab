"""Validate, then commit: the checks everything that writes model or optimizer state from outside
data makes BEFORE it allocates a model or touches any state.

A model file or a training checkpoint is hostile input (they travel between people). So rsm.load,
rsm.load_checkpoint, AdamW.load_state_dict and load_params first check the whole file or dict here:
the config values (types and bounds), the number of tensors the config implies against the file,
then every tensor's name, shape, dtype and finiteness; only then do they build a model (whose
size is now bounded by the file's own data) and copy values in. Every malformation in a file
raises `CheckpointError` naming the file and the field; in a dict or an array argument, a
ValueError/TypeError naming the argument.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._args import MAX_SIZE, SEED_LIMIT
from .io import CheckpointError, parse_json

#: Config strings in a file's metadata are a few hundred bytes; a larger one is not rsm's.
MAX_CONFIG_BYTES = 65_536
#: Steps are int64 counters in the C core (AdamW's bias correction, the Philox stream of a step).
STEP_LIMIT = 2**63
#: A file's parameters are bounded by its own bytes (their shapes are checked against its tensors),
#: but a DiT also allocates what its config alone implies: the fixed positional table [T, W] and
#: images of C*S*S values. Loading a file may allocate at most this many elements for data the
#: file does not hold: 2**28 (1 GiB of float32), over 50x the table of DiT-XL/2 at 512px (T = 4096,
#: W = 1152), so no real model is refused and a 1 KB file cannot run up gigabytes.
MAX_DERIVED_ELEMS = 2**28


# ---- scalars from a file's metadata ---------------------------------------------------------


def meta_int(meta: Mapping[str, str], key: str, where: str, limit: int, default: int | None = None) -> int:
    """An integer field of the metadata (a string of decimal digits) in [0, limit)."""
    if key not in meta:
        if default is None:
            raise CheckpointError(f"{where}: the metadata has no {key!r}")
        return default
    text = meta[key]
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 20:
        raise CheckpointError(f"{where}: metadata {key}={text!r} is not a non-negative integer")
    value = int(text)
    if value >= limit:
        raise CheckpointError(f"{where}: metadata {key}={value} is out of range [0, {limit})")
    return value


def meta_json(meta: Mapping[str, str], key: str, where: str) -> dict:
    """A JSON object stored as a string in the metadata (a config), bounded in size and depth."""
    if key not in meta:
        raise CheckpointError(f"{where}: the metadata has no {key!r}")
    value = parse_json(meta[key], where, f"metadata {key!r}", MAX_CONFIG_BYTES)
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: metadata {key!r} must be a JSON object, got {type(value).__name__}")
    return value


def _int(c: Mapping, key: str, where: str, field: str, minimum: int) -> int:
    if key not in c:
        raise CheckpointError(f"{where}: {field} has no {key!r}")
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= MAX_SIZE:
        raise CheckpointError(f"{where}: {field} {key}={v!r} must be an int in [{minimum}, 2**40]")
    return v


def _dtype(c: Mapping, where: str, field: str) -> str:
    v = c.get("dtype")
    if v not in ("float32", "float64"):
        raise CheckpointError(f"{where}: {field} dtype={v!r} must be 'float32' or 'float64'")
    return v


# ---- configs and the tensors they imply -------------------------------------------------------


def mlp_config(c: Mapping, where: str, num_tensors: int) -> dict:
    """The MLP config of a file, checked; `num_tensors` (the file's count) bounds the depth."""
    out = {k: _int(c, k, where, "config", m) for k, m in
           (("dim", 1), ("hidden", 1), ("depth", 0), ("cond_dim", 0), ("temb_dim", 2))}
    out["dtype"] = _dtype(c, where, "config")
    if 4 * out["depth"] + 4 > num_tensors:
        raise CheckpointError(f"{where}: config depth={out['depth']} needs {4 * out['depth'] + 4} tensors, "
                              f"the file has {num_tensors}")
    return out


def mlp_shapes(c: Mapping) -> dict[str, tuple[int, ...]]:
    h, d = c["hidden"], c["dim"]
    out = {"input.weight": (h, d + c["temb_dim"] + c["cond_dim"]), "input.bias": (h,)}
    for b in range(c["depth"]):
        out.update({f"blocks.{b}.linear1.weight": (h, h), f"blocks.{b}.linear1.bias": (h,),
                    f"blocks.{b}.linear2.weight": (h, h), f"blocks.{b}.linear2.bias": (h,)})
    out.update({"output.weight": (d, h), "output.bias": (d,)})
    return out


_DIT_BLOCK = (("adaLN", 6, 1), ("attn.qkv", 3, 1), ("attn.proj", 1, 1), ("mlp.fc1", 4, 1), ("mlp.fc2", 1, 4))


def dit_config(c: Mapping, where: str, num_tensors: int) -> dict:
    out = {k: _int(c, k, where, "config", m) for k, m in
           (("image_size", 1), ("channels", 1), ("patch", 1), ("width", 2), ("depth", 0),
            ("heads", 1), ("num_classes", 0), ("temb_dim", 2))}
    out["dtype"] = _dtype(c, where, "config")
    checkpoint = c.get("checkpoint", False)
    if not isinstance(checkpoint, bool):
        raise CheckpointError(f"{where}: config checkpoint={checkpoint!r} must be true or false")
    out["checkpoint"] = checkpoint
    if out["image_size"] % out["patch"] or out["width"] % out["heads"] or out["temb_dim"] % 2:
        raise CheckpointError(f"{where}: config needs patch | image_size, heads | width and an even "
                              f"temb_dim, got {out}")
    tokens = (out["image_size"] // out["patch"]) ** 2
    for what, elems in (("image_size (the positional table tokens x width)", tokens * out["width"]),
                        ("image_size (channels x image_size^2 values per image)",
                         out["channels"] * out["image_size"] ** 2)):
        if elems > MAX_DERIVED_ELEMS:
            raise CheckpointError(f"{where}: config image_size={out['image_size']}, patch={out['patch']}, "
                                  f"channels={out['channels']}, width={out['width']}: {what} needs {elems} "
                                  f"elements, more than a file may imply (2**28)")
    need = 10 * out["depth"] + 11
    if need > num_tensors:
        raise CheckpointError(f"{where}: config depth={out['depth']} needs {need} tensors, the file has {num_tensors}")
    return out


def dit_shapes(c: Mapping) -> dict[str, tuple[int, ...]]:
    w, f, k = c["width"], c["temb_dim"], c["num_classes"]
    pd = c["channels"] * c["patch"] ** 2
    out = {"patch.weight": (w, pd), "patch.bias": (w,), "time.linear1.weight": (w, f),
           "time.linear1.bias": (w,), "time.linear2.weight": (w, w), "time.linear2.bias": (w,),
           "class_embedding": (k + 1, w)}
    for b in range(c["depth"]):
        for name, rows, cols in _DIT_BLOCK:
            out[f"blocks.{b}.{name}.weight"] = (rows * w, cols * w)
            out[f"blocks.{b}.{name}.bias"] = (rows * w,)
    out.update({"final.adaLN.weight": (2 * w, w), "final.adaLN.bias": (2 * w,),
                "final.linear.weight": (pd, w), "final.linear.bias": (pd,)})
    return out


def lora_config(lo: Mapping, where: str) -> dict:
    rank = _int(lo, "rank", where, "lora config", 1)
    alpha = lo.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise CheckpointError(f"{where}: lora config alpha={alpha!r} must be a finite number")
    targets = lo.get("targets")
    if (not isinstance(targets, list) or not targets or len(targets) > 2
            or any(t not in ("attn", "mlp") for t in targets)):
        raise CheckpointError(f"{where}: lora config targets={targets!r} must name 'attn' and/or 'mlp'")
    seed = lo.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise CheckpointError(f"{where}: lora config seed={seed!r} must be an int in [0, 2**64)")
    return {"rank": rank, "alpha": float(alpha), "targets": tuple(targets), "seed": seed}


def lora_shapes(c: Mapping, lo: Mapping) -> dict[str, tuple[int, ...]]:
    w, r = c["width"], lo["rank"]
    dims = (("attn", "qkv", w, 3 * w), ("attn", "proj", w, w), ("mlp", "fc1", w, 4 * w), ("mlp", "fc2", 4 * w, w))
    out = {}
    for b in range(c["depth"]):
        for group, name, fan_in, fan_out in dims:
            if group in lo["targets"]:
                out[f"blocks.{b}.{group}.{name}.lora_A"] = (r, fan_in)
                out[f"blocks.{b}.{group}.{name}.lora_B"] = (fan_out, r)
    return out


def check_tensors(tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], where: str,
                  prefix: str = "") -> None:
    """Every expected tensor present with its shape, a real floating dtype and finite values."""
    missing = sorted(prefix + k for k in shapes if prefix + k not in tensors)
    if missing:
        raise CheckpointError(f"{where}: lacks tensors {missing[:4]}")
    for name, shape in shapes.items():
        src = tensors[prefix + name]
        if tuple(src.shape) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {prefix + name!r} has shape {tuple(src.shape)}, "
                                  f"expected {tuple(shape)}")
        if src.dtype.kind != "f":
            raise CheckpointError(f"{where}: tensor {prefix + name!r} has dtype {src.dtype}, expected floats")
        if not np.all(np.isfinite(src)):
            raise CheckpointError(f"{where}: tensor {prefix + name!r} contains NaN or inf")


def check_no_extra(tensors: Mapping[str, Any], expected: set[str], where: str) -> None:
    extra = sorted(set(tensors) - expected)
    if extra:
        raise CheckpointError(f"{where}: has tensors its config does not describe: {extra[:4]}")


def build(factory: Any, where: str, what: str) -> Any:
    """Construct the model a checked config describes (its size is bounded by the file's data);
    a refusal from the constructor is the file's fault, so it is a CheckpointError too."""
    try:
        return factory()
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{where}: its {what} config is refused: {exc}") from None


# ---- arrays handed to load_params / load_state_dict --------------------------------------------


def real_vector(value: Any, n: int, dtype: str, func: str, name: str) -> np.ndarray:
    """`value` (any DLPack array or sequence) as a finite vector [n] of `dtype`: complex, object,
    string or bool arrays are refused (TypeError), and so are values that are finite in their
    own dtype but not in `dtype` (1e300 into float32 would become inf), naming the argument."""
    try:
        src = np.from_dlpack(value) if hasattr(value, "__dlpack__") and not isinstance(value, np.ndarray) \
            else np.asarray(value)
    except (TypeError, ValueError, BufferError, RuntimeError) as exc:
        raise TypeError(f"{func}(): {name} must be an array of real numbers ({exc})") from None
    if src.dtype.kind not in "fiu":
        raise TypeError(f"{func}(): {name} must hold real numbers, got dtype {src.dtype}")
    if src.shape != (n,):
        raise ValueError(f"{func}(): {name} must have shape [{n}], got {src.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = src.astype(dtype)
    if not np.all(np.isfinite(out)):
        i = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"{func}(): {name}[{i}]={src[i].item()!r} is NaN, inf or too large for {dtype}")
    return out
