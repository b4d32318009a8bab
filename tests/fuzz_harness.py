"""Fuzzing harness for rsm's hostile-input entry points: the safetensors model loader (rsm.load),
the training-checkpoint loader (rsm.load_checkpoint, with the model and optimizer state it must
leave bitwise unchanged when it refuses) and the DLPack importer (rsm.from_dlpack on hand-built
capsules).

Every case runs in its own forked child, so a crash (a signal, a sanitizer abort) is counted as a
failure of that case, not the death of the runner. A child ends with one of these exit codes:

    LOADED (10)         the input was accepted (and the loaded model ran a forward / the imported
                        tensor was read where its claimed extent lies inside its real buffer)
    REFUSED (11)        the input was refused with the documented exception (CheckpointError for
                        files; BufferError, TypeError or ValueError for capsules)
    UNEXPECTED (12)     another exception escaped (its traceback is printed)
    STATE_CHANGED (13)  a refused checkpoint changed the model or optimizer, or an imported tensor
                        reports another shape than the capsule's
    anything else       a crash: a signal, an ASan/UBSan abort, a hang (SIGALRM after TIMEOUT_S)

Cases come from two sources: the regression corpus in tests/fuzz_corpus/ (crafted files
*.safetensors, *.ckpt and capsule descriptions *.json; `--write-corpus` regenerates the crafted
part) and Hypothesis, which draws structure-aware mutations of valid files (a hostile value put in
a header field, a config field or a metadata value; the header length; raw byte flips, inserts and
truncations; NaN/inf/huge bytes in a tensor) and random capsule descriptions (NULL pointers,
hostile dimensions, strides, offsets, dtypes, versions, devices).

    python tests/fuzz_harness.py --cases 300 [--targets safetensors,checkpoint,dlpack] [--seed N]
    python tests/fuzz_harness.py --corpus-only
    python tests/fuzz_harness.py --seconds 600          # `make fuzz`

It prints one JSON summary line (cases run per target and outcome, crashes, failures); failing
inputs are saved under --save DIR (default build/fuzz-failures) for the corpus. Exit status 1 if
any case failed. Run with OMP_NUM_THREADS=1 (children fork from a process that imported rsm).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import struct
import sys
import tempfile
import time
import traceback

import numpy as np

LOADED, REFUSED, UNEXPECTED, STATE_CHANGED = 10, 11, 12, 13
OUTCOMES = {LOADED: "loaded", REFUSED: "refused", UNEXPECTED: "unexpected", STATE_CHANGED: "state_changed"}
TIMEOUT_S = 60
HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "fuzz_corpus")
TARGETS = ("safetensors", "checkpoint", "dlpack")
PLACEHOLDER = "@@RSM_FUZZ@@"

# ---- the models every case uses (small, so a case costs milliseconds) -----------------------


def _mlp():
    import rsm

    return rsm.MLP(2, hidden=8, depth=1, seed=3)


def _dit():
    import rsm

    return rsm.DiT(4, 1, 2, 8, 1, 2, 3, seed=4)


def _trained(model):
    """An AdamW (with an EMA) that has taken one step, so its moments are not zero."""
    import rsm

    opt = rsm.AdamW(model, lr=1e-2, ema_decay=0.9)
    grads = np.linspace(-1, 1, model.num_params).astype(model.dtype)
    opt.step(grads)
    return opt


def seed_files(directory: str) -> dict[str, list[bytes]]:
    """Valid inputs to mutate: model files of each class and a training checkpoint."""
    import rsm

    def saved(write) -> bytes:
        path = os.path.join(directory, "seed.safetensors")
        write(path)
        with open(path, "rb") as f:
            return f.read()

    mlp, dit = _mlp(), _dit()
    lora = rsm.lora(dit, rank=2, seed=5)
    files = [saved(mlp.save), saved(dit.save), saved(lora.save),
             saved(rsm.MLP(3, hidden=4, depth=0, cond_dim=2, seed=1, dtype="float64").save)]
    model = _mlp()
    ckpt = saved(lambda p: rsm.save_checkpoint(p, model, _trained(model), step=7))
    return {"safetensors": files, "checkpoint": [ckpt]}


# ---- the file format, for structure-aware mutations ------------------------------------------


def split_file(data: bytes) -> tuple[dict, bytes] | None:
    """(header dict, data section) of a well-formed file, or None."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    try:
        header = json.loads(data[8:8 + n])
        json.dumps(header)  # a mutation may have nested it too deep to write back
    except (ValueError, RecursionError):
        return None
    return header, data[8 + n:]


def join_file(header_text: str, body: bytes, length: int | None = None) -> bytes:
    raw = header_text.encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON value, containers included."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _put(obj, path, value):
    if not path:
        return value
    obj[path[0]] = _put(obj[path[0]], path[1:], value)
    return obj


# ---- DLPack capsules from descriptions --------------------------------------------------------


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]


_capi = ctypes.pythonapi
_capi.PyCapsule_New.restype = ctypes.py_object
_capi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_NAMES = {True: ctypes.create_string_buffer(b"dltensor_versioned"), False: ctypes.create_string_buffer(b"dltensor")}
BUFFER_BYTES = 4096  # the real memory behind a capsule; data points at its middle


def _i64(v: int) -> int:
    return (int(v) + 2**63) % 2**64 - 2**63


class Capsule:
    """A capsule built from a description dict (kept alive with everything it points at)."""

    def __init__(self, d: dict) -> None:
        self.buffer = (ctypes.c_uint8 * BUFFER_BYTES)()
        ndim = _i64(d.get("ndim", 0)) % 2**32
        ndim = ndim - 2**32 if ndim >= 2**31 else ndim
        # the arrays are as long as ndim says (a producer's arrays are), up to a sane cap
        length = max(1, min(max(ndim, 0), 4096))
        shape = [_i64(s) for s in d.get("shape", [])][:length]
        shape += [1] * (length - len(shape))
        self.shape = (ctypes.c_int64 * length)(*shape)
        strides = d.get("strides")
        if strides is not None:
            strides = [_i64(s) for s in strides][:length]
            strides += [1] * (length - len(strides))
            self.strides = (ctypes.c_int64 * length)(*strides)
        self.deleter = DELETER(lambda ptr: None)
        data = None if d.get("data_null") else ctypes.addressof(self.buffer) + BUFFER_BYTES // 2
        dev = d.get("device", [1, 0])
        dl = DLTensor(data=data, device=DLDevice(int(dev[0]) % 2**31, int(dev[1]) % 2**31), ndim=ndim,
                      dtype=DLDataType(d.get("code", 2) % 256, d.get("bits", 32) % 256, d.get("lanes", 1) % 2**16),
                      shape=None if d.get("shape_null") else self.shape,
                      strides=None if strides is None else self.strides,
                      byte_offset=int(d.get("byte_offset", 0)) % 2**64)
        deleter = DELETER() if d.get("deleter_null") else self.deleter
        self.versioned = bool(d.get("versioned", True))
        if self.versioned:
            self.managed = DLManagedTensorVersioned(
                version=DLPackVersion(d.get("major", 1) % 2**32, d.get("minor", 1) % 2**32), manager_ctx=None,
                deleter=deleter, flags=d.get("flags", 0) % 2**64, dl_tensor=dl)
        else:
            self.managed = DLManagedTensor(dl_tensor=dl, manager_ctx=None, deleter=deleter)
        self.description = d

    def capsule(self):
        return _capi.PyCapsule_New(ctypes.addressof(self.managed), _NAMES[self.versioned], None)

    def readable(self, t) -> bool:
        """Whether the region the tensor claims lies inside the real buffer (then reading it is
        legitimate; outside it, the producer lied and no consumer can tell)."""
        d = self.description
        if d.get("data_null") or t.size == 0:
            return False
        item = max(1, (d.get("bits", 32) % 256) * (d.get("lanes", 1) % 2**16) // 8)
        lo = hi = 0
        for n, s in zip(t.shape, t.strides):
            if n > 1:
                lo, hi = (lo + (n - 1) * s, hi) if s < 0 else (lo, hi + (n - 1) * s)
        off = int(d.get("byte_offset", 0)) % 2**64
        return -BUFFER_BYTES // 2 <= off + lo * item and off + (hi + 1) * item <= BUFFER_BYTES // 2


# ---- one case, in the child -------------------------------------------------------------------


def _snapshot(model, opt) -> list[bytes]:
    state = opt.state_dict()
    return [np.from_dlpack(model.params).tobytes(), state["m"].tobytes(), state["v"].tobytes(),
            state["ema"].tobytes(), str(state["step"]).encode()]


def _run_model(model) -> None:
    x = np.zeros((2, model.dim), dtype=model.dtype)
    # a DiT takes class ids (None: the null class), an MLP its condition vectors
    conditional = model.cond_dim > 0 and not hasattr(model, "image_shape")
    cond = np.zeros((2, model.cond_dim), dtype=model.dtype) if conditional else None
    np.from_dlpack(model.forward(x, 0.5, cond)).sum()


def case_safetensors(payload: bytes, workdir: str) -> int:
    import rsm

    path = os.path.join(workdir, "case.safetensors")
    with open(path, "wb") as f:
        f.write(payload)
    try:
        model = rsm.load(path)
    except rsm.io.CheckpointError:
        return REFUSED
    _run_model(model)
    return LOADED


def case_checkpoint(payload: bytes, workdir: str) -> int:
    import rsm

    path = os.path.join(workdir, "case.ckpt")
    with open(path, "wb") as f:
        f.write(payload)
    model = _mlp()
    opt = _trained(model)
    before = _snapshot(model, opt)
    try:
        rsm.load_checkpoint(path, model, opt)
    except rsm.io.CheckpointError:
        return REFUSED if _snapshot(model, opt) == before else STATE_CHANGED
    _run_model(model)
    return LOADED


def case_dlpack(payload: bytes, workdir: str) -> int:
    import rsm

    cap = Capsule(json.loads(payload))
    try:
        t = rsm.from_dlpack(cap.capsule())
    except (BufferError, TypeError, ValueError):
        return REFUSED
    d = cap.description
    if t.shape != tuple(_i64(s) for s in (d.get("shape", []) + [1] * t.ndim)[:t.ndim]):
        print(f"imported shape {t.shape} differs from the capsule's {d.get('shape')}")
        return STATE_CHANGED
    _ = (t.size, t.nbytes, t.strides, t.dtype, t.is_contiguous)
    if cap.readable(t):
        c = t.copy()
        np.from_dlpack(c).tobytes()
    del t
    return LOADED


CASES = {"safetensors": case_safetensors, "checkpoint": case_checkpoint, "dlpack": case_dlpack}


def run_forked(target: str, payload: bytes, workdir: str) -> tuple[int, str]:
    """Run one case in a forked child: (exit code or -signal, its captured output)."""
    out_path = os.path.join(workdir, "child.out")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = UNEXPECTED
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # Python-level streams too (pytest replaces sys.stdout/stderr with capture objects)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, errors="replace", closefd=False)
            signal.alarm(TIMEOUT_S)
            code = CASES[target](payload, workdir)
        except BaseException:  # noqa: BLE001 - everything not documented is the finding
            traceback.print_exc()
            code = UNEXPECTED
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        with open(out_path, errors="replace") as f:
            output = f.read()[-4000:]
    except OSError:
        output = ""
    return code, output


def describe(code: int) -> str:
    if code in OUTCOMES:
        return OUTCOMES[code]
    return f"crash (signal {-code})" if code < 0 else f"crash (exit {code})"


# ---- the regression corpus --------------------------------------------------------------------


def corpus_cases() -> list[tuple[str, str, bytes]]:
    """(target, name, payload) of every file in tests/fuzz_corpus/."""
    kinds = {".safetensors": "safetensors", ".ckpt": "checkpoint", ".json": "dlpack"}
    out = []
    for name in sorted(os.listdir(CORPUS)) if os.path.isdir(CORPUS) else []:
        kind = kinds.get(os.path.splitext(name)[1])
        if kind:
            with open(os.path.join(CORPUS, name), "rb") as f:
                out.append((kind, name, f.read()))
    return out


def crafted_corpus(seeds: dict[str, list[bytes]]) -> dict[str, bytes]:
    """The defects of issue 16 (and their neighbours) as small crafted inputs."""
    mlp_file, dit_file, lora_file = seeds["safetensors"][:3]
    ckpt = seeds["checkpoint"][0]
    out: dict[str, bytes] = {}

    def with_meta(data: bytes, key: str, value: str) -> bytes:
        header, body = split_file(data)
        header["__metadata__"][key] = value
        return join_file(json.dumps(header), body)

    def with_config(data: bytes, key: str, raw: str, meta_key: str = "config") -> bytes:
        header, body = split_file(data)
        config = json.loads(header["__metadata__"][meta_key])
        config[key] = PLACEHOLDER
        header["__metadata__"][meta_key] = json.dumps(config).replace(f'"{PLACEHOLDER}"', raw)
        return join_file(json.dumps(header), body)

    for key, value in (("hidden", 2**62), ("depth", 2**62), ("dim", 2**63 - 1), ("temb_dim", 2**62),
                       ("hidden", 2**30), ("cond_dim", -1), ("depth", 10**6)):
        out[f"mlp_{key}_{value}.safetensors"] = with_config(mlp_file, key, str(value))
    for key, value in (("depth", 2**62), ("image_size", 2**31), ("temb_dim", 2**62),
                       ("num_classes", 2**62), ("width", 2**40 + 2), ("patch", 0)):
        out[f"dit_{key}_{value}.safetensors"] = with_config(dit_file, key, str(value))
    out["lora_rank_2p62.safetensors"] = with_config(lora_file, "rank", str(2**62), "lora")
    out["config_deep_nesting.safetensors"] = with_config(mlp_file, "hidden", "[" * 100000 + "]" * 100000)
    out["config_huge_int.safetensors"] = with_config(mlp_file, "hidden", "9" * 5000)
    out["config_nan.safetensors"] = with_config(mlp_file, "hidden", "NaN")
    out["config_float.safetensors"] = with_config(mlp_file, "hidden", "8.0")
    out["seed_2p64.safetensors"] = with_meta(mlp_file, "seed", str(2**64))
    out["seed_negative.safetensors"] = with_meta(mlp_file, "seed", "-1")
    out["config_not_json.safetensors"] = with_meta(mlp_file, "config", "{")
    header, body = split_file(mlp_file)
    out["header_deep_nesting.safetensors"] = join_file("[" * 100000 + "]" * 100000, b"")
    out["header_len_beyond_file.safetensors"] = struct.pack("<Q", 2**40) + mlp_file[8:]
    out["header_len_2p64m1.safetensors"] = struct.pack("<Q", 2**64 - 1) + mlp_file[8:]
    for name, shape in (("shape_65_dims", [1] * 65), ("shape_0_2p70", [0, 2**70]),
                        ("shape_negative", [-1, 8]), ("shape_2p62_0", [2**62, 0])):
        h = json.loads(json.dumps(header))
        h["input.bias"]["shape"] = shape
        out[f"{name}.safetensors"] = join_file(json.dumps(h), body)
    nan_body = bytearray(body)
    nan_body[:4] = struct.pack("<f", float("nan"))
    out["mlp_nan_weights.safetensors"] = join_file(json.dumps(header), bytes(nan_body))
    h = json.loads(json.dumps(header))
    h["input.bias"]["dtype"] = "C64"
    out["complex_tensor.safetensors"] = join_file(json.dumps(h), body)
    h = json.loads(json.dumps(header))
    h["blocks.1.linear1.bias"] = h["input.bias"]
    out["extra_tensor_overlap.safetensors"] = join_file(json.dumps(h), body)
    out["empty.safetensors"] = b""
    out["truncated.safetensors"] = mlp_file[: len(mlp_file) // 2]
    for value in (2**63, 2**64, 2**70, -1):
        out[f"ckpt_optimizer_step_{value}.ckpt"] = with_meta(ckpt, "optimizer_step", str(value))
    out["ckpt_step_2p64.ckpt"] = with_meta(ckpt, "step", str(2**64))
    ch, cb = split_file(ckpt)
    for key, value in (("optimizer.m", float("nan")), ("optimizer.v", -1.0), ("model.output.bias", float("inf")),
                       ("optimizer.ema", 1e30)):
        b = bytearray(cb)
        begin = ch[key]["data_offsets"][0]
        b[begin:begin + 4] = struct.pack("<f", value)
        out[f"ckpt_{key.replace('.', '_')}_{value}.ckpt"] = join_file(json.dumps(ch), bytes(b))
    h = json.loads(json.dumps(ch))
    del h["optimizer.ema"]
    out["ckpt_no_ema.ckpt"] = join_file(json.dumps(h), cb)  # the tensors then leave a gap: refused
    out["ckpt_ok.ckpt"] = ckpt
    out["mlp_ok.safetensors"] = mlp_file
    out["lora_ok.safetensors"] = lora_file
    capsules = {
        "null_shape": {"ndim": 2, "shape": [2, 2], "shape_null": True},
        "null_data": {"ndim": 2, "shape": [2, 2], "data_null": True},
        "null_data_empty": {"ndim": 2, "shape": [0, 2], "data_null": True},
        "negative_dim": {"ndim": 2, "shape": [-2, 3]},
        "overflowing_dims": {"ndim": 3, "shape": [2**31, 2**31, 2**31]},
        "dims_2p63m1": {"ndim": 2, "shape": [2**63 - 1, 2]},
        "ndim_65": {"ndim": 65, "shape": [1] * 65},
        "ndim_negative": {"ndim": -1, "shape": [1]},
        "huge_stride": {"ndim": 2, "shape": [2, 2], "strides": [2**62, 1]},
        "min_stride": {"ndim": 2, "shape": [2, 2], "strides": [-2**63, 1]},
        "byte_offset_2p64m1": {"ndim": 1, "shape": [4], "byte_offset": 2**64 - 1},
        "lanes_0": {"ndim": 1, "shape": [4], "lanes": 0},
        "bits_0": {"ndim": 1, "shape": [4], "bits": 0},
        "version_2": {"ndim": 1, "shape": [4], "major": 2},
        "legacy_null_shape": {"versioned": False, "ndim": 1, "shape": [4], "shape_null": True},
        "ok_strided": {"ndim": 2, "shape": [3, 4], "strides": [8, 2]},
        "ok_negative_stride": {"ndim": 1, "shape": [4], "strides": [-1]},
        "null_deleter": {"ndim": 1, "shape": [4], "deleter_null": True},
    }
    for name, d in capsules.items():
        out[f"capsule_{name}.json"] = json.dumps(d).encode()
    return out


# ---- Hypothesis strategies ----------------------------------------------------------------------


def strategies(seeds: dict[str, list[bytes]]):
    from hypothesis import strategies as st

    hostile_int = st.one_of(
        st.integers(-3, 16),
        st.sampled_from([2**31 - 1, 2**31, 2**32, 2**40, 2**40 + 1, 2**53, 2**62, 2**63 - 1, 2**63,
                         2**64 - 1, 2**64, 2**70, -2**63, -2**31]),
        st.integers(-2**64, 2**64))
    raw_json = st.one_of(
        hostile_int.map(str),
        st.sampled_from(['"x"', "null", "true", "false", "[]", "{}", "1.5", "1e999", "-1e999", "NaN",
                         "Infinity", '"F8_E4M3"', '"C64"', '"BF16"', '"I64"', '"F64"', "[1, 2]", '"float64"',
                         '"Checkpoint"', '"LoRADiT"', '"DiT"', '"MLP"', "-0", "1" + "0" * 5000]),
        st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
        st.integers(1, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
        st.lists(hostile_int, max_size=70).map(json.dumps),
        st.text(max_size=12).map(json.dumps))

    @st.composite
    def file_case(draw, kind: str) -> bytes:
        data = draw(st.sampled_from(seeds[kind]))
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["header", "header", "config", "config", "meta", "drop", "length",
                                       "flip", "insert", "truncate", "tensor_bytes"]))
            parsed = split_file(data)
            if op in ("header", "config", "meta", "drop") and parsed is not None and isinstance(parsed[0], dict):
                header, body = parsed
                meta = header.get("__metadata__")
                if op == "config" and isinstance(meta, dict):
                    key = draw(st.sampled_from(sorted(k for k in meta if k in ("config", "lora")) or ["config"]))
                    try:
                        config = json.loads(meta.get(key, "{}"))
                        json.dumps(config)
                    except (ValueError, RecursionError, TypeError):
                        config = {}
                    if isinstance(config, dict):
                        name = draw(st.sampled_from(sorted(config) + ["extra"]))
                        config[name] = PLACEHOLDER
                        meta[key] = json.dumps(config).replace(f'"{PLACEHOLDER}"', draw(raw_json))
                    data = join_file(json.dumps(header), body)
                elif op == "meta" and isinstance(meta, dict):
                    key = draw(st.sampled_from(sorted(meta) + ["seed", "step", "optimizer_step"]))
                    meta[key] = draw(st.one_of(hostile_int.map(str), raw_json, st.text(max_size=6)))
                    data = join_file(json.dumps(header), body)
                elif op == "drop":
                    paths = [p for p, _ in _paths(header) if p]
                    if paths:
                        path = draw(st.sampled_from(paths))
                        parent = header
                        for k in path[:-1]:
                            parent = parent[k]
                        del parent[path[-1]]
                    data = join_file(json.dumps(header), body)
                else:
                    paths = [p for p, _ in _paths(header) if p and p[0] != "__metadata__"]
                    if paths:
                        header = _put(header, draw(st.sampled_from(paths)), PLACEHOLDER)
                    text = json.dumps(header).replace(f'"{PLACEHOLDER}"', draw(raw_json))
                    data = join_file(text, body)
            elif op == "length":
                data = struct.pack("<Q", draw(st.one_of(st.integers(0, len(data) + 16),
                                                        st.integers(0, 2**64 - 1)))) + data[8:]
            elif op == "flip" and data:
                i = draw(st.integers(0, len(data) - 1))
                b = bytearray(data)
                b[i] = draw(st.integers(0, 255))
                data = bytes(b)
            elif op == "insert":
                i = draw(st.integers(0, len(data)))
                data = data[:i] + draw(st.binary(max_size=16)) + data[i:]
            elif op == "truncate":
                data = data[:draw(st.integers(0, len(data)))]
            elif op == "tensor_bytes" and parsed is not None:
                header, body = parsed
                if body:
                    i = draw(st.integers(0, max(0, len(body) - 8))) & ~3
                    value = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38, 3e38]))
                    b = bytearray(body)
                    b[i:i + 4] = struct.pack("<f", value)[: len(b) - i]
                    data = data[: len(data) - len(body)] + bytes(b)
        return data

    capsule = st.fixed_dictionaries({
        "versioned": st.booleans(),
        "major": st.sampled_from([1, 1, 1, 1, 0, 2, 2**32 - 1]),
        "minor": st.integers(0, 3),
        "ndim": st.one_of(st.integers(0, 4), st.sampled_from([-1, 63, 64, 65, 1000, -2**31, 2**31 - 1])),
        "shape": st.lists(hostile_int, max_size=6),
        "shape_null": st.booleans(),
        "strides": st.one_of(st.none(), st.lists(hostile_int, max_size=6)),
        "data_null": st.booleans(),
        "byte_offset": st.one_of(st.just(0), st.integers(0, 64), st.sampled_from([2**63, 2**64 - 1, 2**40])),
        "code": st.sampled_from([0, 1, 2, 2, 2, 4, 5, 6, 7, 255]),
        "bits": st.sampled_from([8, 16, 32, 32, 64, 64, 1, 0, 4, 128, 255]),
        "lanes": st.sampled_from([1, 1, 1, 1, 0, 2, 65535]),
        "device": st.sampled_from([[1, 0], [1, 0], [1, 0], [3, 0], [13, 0], [2, 0], [0, 0], [1, 7]]),
        "flags": st.integers(0, 15),
        "deleter_null": st.booleans(),
    }).map(lambda d: json.dumps(d).encode())
    return {"safetensors": file_case("safetensors"), "checkpoint": file_case("checkpoint"), "dlpack": capsule}


# ---- the runner -------------------------------------------------------------------------------


class Tally:
    def __init__(self, save: str | None) -> None:
        self.counts: dict[str, dict[str, int]] = {t: {} for t in TARGETS}
        self.failures: list[dict] = []
        self.save = save or None

    def record(self, target: str, name: str, payload: bytes, code: int, output: str) -> bool:
        what = describe(code)
        self.counts[target][what] = self.counts[target].get(what, 0) + 1
        ok = code in (LOADED, REFUSED)
        if not ok:
            entry = {"target": target, "case": name, "outcome": what, "output": output[-1500:]}
            if self.save:
                os.makedirs(self.save, exist_ok=True)
                ext = {"safetensors": ".safetensors", "checkpoint": ".ckpt", "dlpack": ".json"}[target]
                path = os.path.join(self.save, f"{target}-{len(self.failures)}{ext}")
                with open(path, "wb") as f:
                    f.write(payload)
                entry["saved"] = path
            self.failures.append(entry)
        return ok

    def summary(self) -> dict:
        cases = sum(sum(c.values()) for c in self.counts.values())
        crashes = sum(n for c in self.counts.values() for k, n in c.items() if k.startswith("crash"))
        return {"cases": cases, "crashes": crashes, "failures": len(self.failures), "by_target": self.counts,
                "failed_cases": self.failures[:20]}


def run_corpus(tally: Tally, workdir: str) -> None:
    for target, name, payload in corpus_cases():
        code, output = run_forked(target, payload, workdir)
        tally.record(target, name, payload, code, output)


def run_hypothesis(tally: Tally, workdir: str, seeds, targets, cases: int, seconds: float | None,
                   seed: int | None) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    strats = strategies(seeds)
    for target in targets:
        deadline = None if seconds is None else time.monotonic() + seconds / len(targets)
        failed: list[bool] = []

        @settings(max_examples=cases if seconds is None else 500, deadline=None, database=None,
                  derandomize=seed is None and seconds is None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        @given(strats[target])
        def fuzz(payload: bytes) -> None:
            if deadline is not None and time.monotonic() > deadline:
                return
            code, output = run_forked(target, payload, workdir)
            if not tally.record(target, "hypothesis", payload, code, output):
                failed.append(True)

        if seed is not None:
            from hypothesis import seed as hyp_seed

            fuzz = hyp_seed(seed)(fuzz)
        if seconds is None:
            fuzz()
        else:
            while time.monotonic() < deadline:
                fuzz()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200, help="Hypothesis cases per target")
    ap.add_argument("--seconds", type=float, default=None, help="run for this long instead of --cases")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: derandomized)")
    ap.add_argument("--corpus-only", action="store_true")
    ap.add_argument("--no-corpus", action="store_true")
    ap.add_argument("--write-corpus", action="store_true", help="regenerate the crafted corpus files")
    ap.add_argument("--save", default=os.path.join(os.path.dirname(HERE), "build", "fuzz-failures"))
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="rsm-fuzz-") as workdir:
        seeds = seed_files(workdir)
        if args.write_corpus:
            os.makedirs(CORPUS, exist_ok=True)
            for name, payload in crafted_corpus(seeds).items():
                with open(os.path.join(CORPUS, name), "wb") as f:
                    f.write(payload)
        tally = Tally(args.save)
        start = time.monotonic()
        if not args.no_corpus:
            run_corpus(tally, workdir)
        if not args.corpus_only:
            run_hypothesis(tally, workdir, seeds, targets, args.cases, args.seconds, args.seed)
        result = tally.summary()
        result["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
