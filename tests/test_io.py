"""rsm.io: pure-Python safetensors read/write — round trips, interoperability, atomicity, and clear
errors for truncated, foreign and corrupt files."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from rsm import io
from rsm.io import CheckpointError


def _sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f64": rng.standard_normal((3, 4)),
        "f32": rng.standard_normal((2, 3, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, size=(4,), dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(2, 2), dtype=np.int32),
        "i16": np.arange(-3, 3, dtype=np.int16),
        "i8": np.array([-128, 0, 127], dtype=np.int8),
        "u8": np.arange(256, dtype=np.uint8),
        "u16": np.array([0, 65535], dtype=np.uint16),
        "u32": np.array([1, 2**32 - 1], dtype=np.uint32),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "bool": np.array([[True, False], [False, True]]),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "scalar": np.array(3.5),
        "empty": np.zeros((0,), dtype=np.float32),
        "empty_2d": np.zeros((3, 0, 2), dtype=np.int64),
        "ünïcode name": np.ones(2, dtype=np.float32),
    }


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert b[name].dtype == np.asarray(a[name]).dtype.newbyteorder("="), name
        assert b[name].shape == np.shape(a[name]), name
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def test_round_trip_dtypes_and_shapes(tmp_path):
    tensors = _sample_tensors()
    path = tmp_path / "all.safetensors"
    io.save_file(tensors, path, metadata={"step": "12", "config": json.dumps({"a": [1, 2]})})
    loaded, meta = io.load_file(path)
    _assert_same(tensors, loaded)
    assert meta == {"step": "12", "config": '{"a": [1, 2]}'}
    assert io.read_metadata(path) == meta
    for arr in loaded.values():  # owning, writeable, aligned, native order: safe to hand to C
        assert arr.flags.writeable and arr.flags.aligned and arr.flags.c_contiguous
        assert arr.dtype.isnative


def test_header_layout_is_spec_conformant(tmp_path):
    path = tmp_path / "x.safetensors"
    io.save_file({"b": np.ones(3, np.float32), "a": np.zeros(2, np.float64)}, path, metadata={"k": "v"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0, "buffer must start 8-aligned"
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"k": "v"}
    # insertion order, contiguous from 0
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert header["a"] == {"dtype": "F64", "shape": [2], "data_offsets": [12, 28]}
    assert len(raw) == 8 + n + 28


def test_non_contiguous_big_endian_and_array_likes(tmp_path):
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    tensors = {"transposed": base.T, "strided": base[:, ::2], "big_endian": base.astype(">f8"),
               "list": [[1, 2], [3, 4]], "float": 2.0}
    path = tmp_path / "x.safetensors"
    io.save_file(tensors, path)
    loaded, meta = io.load_file(path)
    assert meta == {}
    np.testing.assert_array_equal(loaded["transposed"], base.T)
    np.testing.assert_array_equal(loaded["strided"], base[:, ::2])
    np.testing.assert_array_equal(loaded["big_endian"], base)
    assert loaded["big_endian"].dtype == np.float64
    np.testing.assert_array_equal(loaded["list"], [[1, 2], [3, 4]])
    assert loaded["float"].shape == () and loaded["float"] == 2.0


class _DLPackOnly:
    """An object that is not an ndarray but exports DLPack (like a torch or rsm tensor)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_values(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "x.safetensors"
    io.save_file({"t": _DLPackOnly(arr)}, path)
    np.testing.assert_array_equal(io.load_file(path)[0]["t"], arr)


def test_rsm_tensor_values(tmp_path):
    import rsm

    t = rsm.from_dlpack(np.arange(5, dtype=np.float32))
    path = tmp_path / "x.safetensors"
    io.save_file({"t": t}, path)
    np.testing.assert_array_equal(io.load_file(path)[0]["t"], np.arange(5, dtype=np.float32))


def test_bf16_is_loaded_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.15625, 2.0 ** 100], dtype=np.float32)  # exactly representable in bf16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    loaded, _ = io.load_file(path)
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], values.reshape(2, 2))


def test_argument_validation(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="tensors must be a dict"):
        io.save_file([np.ones(2)], path)
    with pytest.raises(TypeError, match="tensor names must be str"):
        io.save_file({1: np.ones(2)}, path)
    with pytest.raises(ValueError, match="__metadata__"):
        io.save_file({"__metadata__": np.ones(2)}, path)
    with pytest.raises(TypeError, match=r"metadata\['step'\] must be str"):
        io.save_file({"a": np.ones(2)}, path, metadata={"step": 3})
    with pytest.raises(TypeError, match="metadata keys must be str"):
        io.save_file({"a": np.ones(2)}, path, metadata={3: "x"})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        io.save_file({"a": np.ones(2)}, path, metadata="x")
    with pytest.raises(TypeError, match=r"tensors\['obj'\] has dtype object"):
        io.save_file({"obj": np.array([object()])}, path)
    with pytest.raises(TypeError, match=r"tensors\['s'\] has dtype"):
        io.save_file({"s": np.array(["text"])}, path)
    assert not path.exists() and os.listdir(tmp_path) == []  # nothing written on a bad call


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load_file(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        io.read_metadata(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- safetensors interop

def test_our_files_load_in_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    tensors = _sample_tensors()
    path = tmp_path / "ours.safetensors"
    io.save_file(tensors, path, metadata={"who": "rsm"})
    _assert_same(tensors, st.load_file(str(path)))
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"who": "rsm"}


def test_safetensors_files_load_in_ours(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = _sample_tensors()
    path = tmp_path / "theirs.safetensors"
    st.save_file(tensors, str(path), metadata={"who": "safetensors"})
    loaded, meta = io.load_file(path)
    _assert_same(tensors, loaded)
    assert meta == {"who": "safetensors"}
    assert io.read_metadata(path) == meta


# ------------------------------------------------------------------------------------- atomicity

def test_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    io.save_file({"w": np.arange(4.0)}, path, metadata={"version": "old"})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        io.save_file({"w": np.zeros(1000)}, path, metadata={"version": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert io.load_file(path)[1] == {"version": "old"}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]


def test_failed_write_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        io.save_file({"w": np.zeros(10)}, path)
    assert os.listdir(tmp_path) == []


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    io.save_file({"w": np.arange(4.0)}, path)
    io.save_file({"v": np.ones(2, np.int32)}, path)
    loaded, _ = io.load_file(path)
    assert list(loaded) == ["v"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]


# ------------------------------------------------------------------------------ damaged files

def _valid_bytes(tmp_path) -> bytes:
    path = tmp_path / "valid.safetensors"
    io.save_file({"a": np.arange(6, dtype=np.float32), "b": np.ones((2, 2))}, path, metadata={"k": "v"})
    return path.read_bytes()


def test_truncated_files(tmp_path):
    raw = _valid_bytes(tmp_path)
    n = int.from_bytes(raw[:8], "little")
    cuts = [0, 1, 4, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, 8 + n + 24, len(raw) - 1]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated") as info:
            io.load_file(path)
        assert str(path) in str(info.value)
        with pytest.raises(CheckpointError, match="truncated"):
            io.read_metadata(path)


def _png_bytes() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["png", "random", "json", "json_short", "pickle", "text"])
def test_foreign_files(tmp_path, kind):
    content = {
        "png": _png_bytes(),
        "random": np.random.default_rng(1).integers(0, 256, size=4096, dtype=np.uint8).tobytes(),
        "json": json.dumps({"weights": [1.0, 2.0], "config": {"lr": 0.1}}).encode(),
        "json_short": b'{"a": 1}',
        "pickle": pickle.dumps({"w": np.ones(3)}),
        "text": b"step,loss\n0,1.0\n1,0.5\n",
    }[kind]
    path = tmp_path / f"foreign.{kind}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        io.load_file(path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        io.read_metadata(path)


def _with_header(header: object, buffer: bytes, raw_header: bytes | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + buffer


CORRUPT_HEADERS = {
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "overlaps"),
    "gap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
             "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, 20, "gap"),
    "not_from_zero": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "gap"),
    "beyond_buffer": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8, "truncated"),
    "trailing_bytes": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 16, "trailing"),
    "shape_mismatch": ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "needs 12 bytes"),
    "unknown_dtype": ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype"),
    "fp8_dtype": ({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, 8, "cannot load"),
    "reversed_offsets": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, 8, "invalid data_offsets"),
    "negative_shape": ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8, "invalid shape"),
    "float_offsets": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, 8, "invalid data_offsets"),
    "missing_field": ({"a": {"dtype": "F32", "shape": [2]}}, 8, "lacks"),
    "entry_not_object": ({"a": [0, 8]}, 8, "not an object"),
    "metadata_not_str": ({"__metadata__": {"step": 3}}, 0, "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_headers(tmp_path, case):
    header, size, message = CORRUPT_HEADERS[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(_with_header(header, bytes(size)))
    with pytest.raises(CheckpointError, match=message):
        io.load_file(path)


@pytest.mark.parametrize("raw_header", [b"[1, 2, 3]", b"{\xff\xfe}", b'{"a": ', b'"just a string"'])
def test_header_not_a_json_object(tmp_path, raw_header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_with_header(None, b"", raw_header=raw_header))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        io.load_file(path)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_empty_tensor_dict(tmp_path):
    path = tmp_path / "empty.safetensors"
    io.save_file({}, path)
    assert io.load_file(path) == ({}, {})
