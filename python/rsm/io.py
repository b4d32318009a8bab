"""Safetensors files in pure Python (json + raw bytes): checkpoints that any framework can read.

File layout (https://github.com/huggingface/safetensors, format spec):

    [8 bytes]  N, the header length, unsigned little-endian
    [N bytes]  UTF-8 JSON object: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
               ..., "__metadata__": {str: str}}, padded with spaces so the buffer starts 8-aligned
    [rest]     the byte buffer; offsets are relative to its start, tensors are C-contiguous,
               little-endian and cover the buffer exactly (no gaps, no overlap)

Why our own reader/writer: rsm must not depend on the `safetensors` package (nor torch), and the
loader validates every field so a damaged or foreign file fails with a clear `CheckpointError`
instead of garbage weights.  Files are written atomically (temp file + fsync + os.replace), so a
crash or a full disk never leaves a half-written checkpoint in place of a good one.

BF16 has no numpy dtype: it is loaded as float32 (exact, the 16 bits are the top half of an f32);
arrays whose dtype is named "bfloat16" (ml_dtypes) are saved as BF16.  The 8-bit float dtypes
(F8_*) are recognised but not supported.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

__all__ = ["DTYPES", "CheckpointError", "load_file", "read_metadata", "save_file"]

#: safetensors dtype tag -> little-endian numpy dtype string (BF16 handled separately).
DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
    "BOOL": "?",
    "C64": "<c8",
}
_ITEMSIZE: dict[str, int] = {**{tag: np.dtype(s).itemsize for tag, s in DTYPES.items()}, "BF16": 2}
_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"}
# numpy dtype (kind, itemsize) -> tag, for saving
_TAG_OF: dict[tuple[str, int], str] = {(np.dtype(s).kind, np.dtype(s).itemsize): tag for tag, s in DTYPES.items()}

#: The safetensors package refuses headers above 100 MB; a larger length means a foreign file.
MAX_HEADER_BYTES = 100_000_000
#: The deepest JSON nesting a header (or a JSON string in its metadata) may have. A real header is
#: 3 deep ({name: {"shape": [..]}}) and an rsm config 1 or 2; the bound keeps a crafted
#: "[[[[..." from reaching the parser's recursion limit (RecursionError) at all.
MAX_JSON_DEPTH = 16
#: The most dimensions a tensor in a file may have (numpy's limit is 32 or 64 by version).
MAX_NDIM = 32
#: The largest dimension and element count a tensor may declare: rsm's size bound (2**40,
#: csrc/checked.h); a larger one cannot be real and numpy cannot even reshape to it.
MAX_ELEMS = 2**40
_METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A file that is not a valid safetensors file (truncated, corrupt, or something else entirely)."""


def json_depth_ok(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the brackets of JSON `text` nest at most `max_depth` deep (strings skipped), checked
    in one linear pass before any recursive parser sees the text."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str | bytes, where: str, field: str, max_bytes: int = MAX_HEADER_BYTES, *,
               allow_nan: bool = False) -> Any:
    """Parse untrusted JSON (a header, a config in the metadata): at most `max_bytes` long and
    MAX_JSON_DEPTH deep, no NaN/Infinity unless allow_nan (a history of floats), and every parser
    failure (ValueError for a malformed text or an int of too many digits, RecursionError,
    MemoryError) raised as CheckpointError naming the file and the field."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise CheckpointError(f"{where}: {field} must be a JSON string, got {type(text).__name__}")
    if len(text) > max_bytes:
        raise CheckpointError(f"{where}: {field} is {len(text)} bytes long, more than {max_bytes}")
    if not json_depth_ok(text):
        raise CheckpointError(f"{where}: {field} nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text) if allow_nan else json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: {field} is not valid JSON ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------- writing


def _as_numpy(value: Any, name: str) -> np.ndarray:
    """Convert one tensor value to a numpy array: DLPack producers zero-copy, else np.asarray."""
    if not isinstance(value, np.ndarray) and hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except Exception as exc:  # e.g. a GPU tensor: numpy can only import host memory
            raise TypeError(f"save_file(): tensors[{name!r}] exports __dlpack__ but numpy cannot import it "
                            f"({type(exc).__name__}: {exc}); copy it to host memory first") from exc
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(f"save_file(): tensors[{name!r}] ({type(value).__name__}) is not array-like: {exc}") from exc


def _dtype_tag(arr: np.ndarray, name: str) -> str:
    if arr.dtype.name == "bfloat16" and arr.dtype.itemsize == 2:
        return "BF16"
    tag = _TAG_OF.get((arr.dtype.kind, arr.dtype.itemsize))
    if tag is None:
        raise TypeError(f"save_file(): tensors[{name!r}] has dtype {arr.dtype}, which safetensors cannot store "
                        f"(supported: {', '.join(sorted(DTYPES))}, BF16)")
    return tag


def _little_endian_bytes(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian copy (or the array itself when it already is), viewed as bytes."""
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE_ENDIAN_HOST):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return arr.reshape(-1).view(np.uint8)


_LITTLE_ENDIAN_HOST = np.little_endian


def _validate_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"save_file(): metadata must be a dict[str, str] or None, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"save_file(): metadata keys must be str, got {key!r} ({type(key).__name__})")
        if not isinstance(value, str):
            raise TypeError(f"save_file(): metadata[{key!r}] must be str, got {type(value).__name__} "
                            f"(convert it, e.g. with str() or json.dumps())")
    return dict(metadata)


def _encode(tensors: Any, metadata: Any) -> tuple[bytes, list[np.ndarray]]:
    """Validate the arguments and build (padded header bytes, list of byte views in buffer order)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save_file(): tensors must be a dict[str, array], got {type(tensors).__name__}")
    meta = _validate_metadata(metadata)
    header: dict[str, Any] = {}
    if meta:
        header[_METADATA_KEY] = meta
    chunks: list[np.ndarray] = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_file(): tensor names must be str, got {name!r} ({type(name).__name__})")
        if name == _METADATA_KEY:
            raise ValueError(f"save_file(): {_METADATA_KEY!r} is reserved and cannot be a tensor name "
                             f"(pass metadata=... instead)")
        arr = _as_numpy(value, name)
        tag = _dtype_tag(arr, name)
        data = _little_endian_bytes(arr)
        header[name] = {"dtype": tag, "shape": [int(d) for d in arr.shape],
                        "data_offsets": [offset, offset + data.size]}
        offset += data.size
        chunks.append(data)
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return text, chunks


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (name -> array-like or DLPack object) and string `metadata` as a safetensors file.

    Tensors are laid out in the mapping's order.  The write is atomic: the bytes go to a temporary
    file in the target's directory, are flushed and fsync'ed, and only then renamed over `path`;
    on any error the temporary file is removed and an existing `path` is left untouched."""
    header, chunks = _encode(tensors, metadata)  # validates everything before touching the disk
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666 lets the umask apply, as for an ordinary open(path, "wb")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for data in chunks:
                if data.size:
                    f.write(data.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def check_writable(path: str | os.PathLike, func: str, name: str) -> str:
    """Fail now, naming the argument, if save_file(..., path) would fail later: path must not be a
    directory and its directory must exist and accept a new file (tried with the same kind of
    temporary file save_file writes, removed at once). Returns the path as a str."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{func}(): {name} must be a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{func}(): {name}={path!r} is a directory, expected a file path")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(tmp)
    except OSError as exc:
        raise OSError(exc.errno, f"{func}(): {name}={path!r} cannot be written ({exc.strerror})") from None
    return path


def _fsync_directory(directory: str) -> None:
    """Make the rename durable too (POSIX); best effort, a no-op where directories cannot be opened."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------------------- reading


class _Entry:
    """One validated header entry."""

    __slots__ = ("begin", "end", "name", "shape", "tag")

    def __init__(self, name: str, tag: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name, self.tag, self.shape, self.begin, self.end = name, tag, shape, begin, end


def _is_nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _parse_entry(name: str, spec: Any, where: str) -> _Entry:
    if not isinstance(spec, dict):
        raise CheckpointError(f"{where}: header entry {name!r} is not an object")
    missing = {"dtype", "shape", "data_offsets"} - spec.keys()
    if missing:
        raise CheckpointError(f"{where}: header entry {name!r} lacks {sorted(missing)}")
    tag, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(tag, str) or (tag not in _ITEMSIZE and tag not in _UNSUPPORTED):
        raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {tag!r} "
                              f"(known: {', '.join(sorted(_ITEMSIZE))})")
    if tag in _UNSUPPORTED:
        raise CheckpointError(f"{where}: tensor {name!r} has dtype {tag}, which rsm.io cannot load (no numpy dtype)")
    if not isinstance(shape, list) or not all(_is_nonneg_int(d) for d in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
    if len(shape) > MAX_NDIM or any(d > MAX_ELEMS for d in shape) or math.prod(shape) > MAX_ELEMS:
        raise CheckpointError(f"{where}: tensor {name!r} has shape {shape!r}: more than {MAX_NDIM} "
                              f"dimensions or more than 2**40 elements")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_nonneg_int(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise CheckpointError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = math.prod(shape) * _ITEMSIZE[tag]
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{where}: tensor {name!r} ({tag}, shape {shape}) needs {nbytes} bytes but its "
                              f"data_offsets {offsets} span {offsets[1] - offsets[0]}")
    return _Entry(name, tag, tuple(shape), offsets[0], offsets[1])


def _read_header(f: BinaryIO, file_size: int, where: str) -> tuple[list[_Entry], dict[str, str], int]:
    """Read and validate the header against the file size.

    Returns (entries sorted by offset, metadata, byte position of the buffer)."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"truncated: {where} has {file_size} bytes, fewer than the 8-byte header length")
    n = int.from_bytes(prefix, "little")
    available = file_size - 8
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(f"not a safetensors file: {where} (its first 8 bytes give an implausible header "
                              f"length of {n} bytes)")
    head = f.read(min(n, available))
    if head[:1] not in (b"{", b""):
        raise CheckpointError(f"not a safetensors file: {where} (the header does not start with a JSON object)")
    if n > available:
        raise CheckpointError(f"truncated: {where} declares a {n}-byte header but only {available} bytes follow "
                              f"the length field")
    try:
        header = parse_json(head.decode("utf-8"), where, "the header")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"not a safetensors file: {where} (header is not valid UTF-8: {exc})") from None
    except CheckpointError as exc:
        raise CheckpointError(f"not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"not a safetensors file: {where} (header is JSON {type(header).__name__}, "
                              f"not an object)")
    metadata = header.pop(_METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise CheckpointError(f"{where}: {_METADATA_KEY} must be an object of string -> string")
    entries = sorted((_parse_entry(name, spec, where) for name, spec in header.items()),
                     key=lambda e: (e.begin, e.end))
    expected = 0
    for e in entries:
        if e.begin != expected:
            kind = "overlaps the previous tensor" if e.begin < expected else "leaves a gap before it"
            raise CheckpointError(f"{where}: corrupt header, tensor {e.name!r} at data_offsets "
                                  f"[{e.begin}, {e.end}] {kind} (expected to start at {expected})")
        expected = e.end
    buffer_size = available - n
    if buffer_size < expected:
        raise CheckpointError(f"truncated: {where} has {buffer_size} data bytes but its header describes "
                              f"{expected}")
    if buffer_size > expected:
        raise CheckpointError(f"{where}: corrupt header, the data_offsets cover {expected} bytes but the data "
                              f"section has {buffer_size} (trailing bytes belong to no tensor)")
    return entries, metadata, 8 + n


def _decode(raw: bytes | bytearray | memoryview, entry: _Entry) -> np.ndarray:
    """Bytes of one tensor -> an owning, aligned, native-endian numpy array."""
    if entry.tag == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(entry.shape)
    arr = np.frombuffer(raw, dtype=DTYPES[entry.tag]).reshape(entry.shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def _open_regular(path: str) -> BinaryIO:
    """Open a file for reading, refusing what is not a regular file (a device such as /dev/zero
    or /dev/urandom has no size and never ends, a FIFO blocks): CheckpointError naming it. The
    check is made before the open (which would block on a FIFO) and again on the open file."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise CheckpointError(f"not a safetensors file: {path} is not a regular file")
    f = open(path, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise CheckpointError(f"not a safetensors file: {path} is not a regular file")
    return f


def load_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (tensors by name in file order, metadata).

    Every field is validated; anything wrong raises `CheckpointError` (a ValueError) whose message
    starts with "truncated:" for a cut-short file and "not a safetensors file:" for a foreign one.
    A missing file raises FileNotFoundError.  BF16 tensors come back as float32."""
    path = os.fspath(path)
    with _open_regular(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        entries, metadata, start = _read_header(f, file_size, path)
        buffer = bytearray(file_size - start)
        got = f.readinto(buffer)
        if got != len(buffer):  # the file shrank while we read it
            raise CheckpointError(f"truncated: {path} ended after {got} of {len(buffer)} data bytes")
    view = memoryview(buffer)
    tensors = {e.name: _decode(view[e.begin:e.end], e) for e in entries}
    return tensors, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, reading only the header (validated like load_file,
    including that the data section has exactly the size the header describes)."""
    path = os.fspath(path)
    with _open_regular(path) as f:
        _, metadata, _ = _read_header(f, os.fstat(f.fileno()).st_size, path)
    return metadata
