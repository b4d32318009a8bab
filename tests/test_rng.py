"""Philox4x32-10 against the published known-answer vectors, and the normal/uniform streams."""
import numpy as np
import pytest

import rsm
from rsm import _C

# Random123's known-answer vectors for Philox4x32-10 (Salmon et al. 2011, kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    assert _C.philox(counter, key) == expected


def _philox_reference(counter, key):
    """An independent Python implementation of Philox4x32-10 (10 rounds, Weyl key schedule)."""
    M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
    c, k = list(counter), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + W0) & 0xFFFFFFFF, (k[1] + W1) & 0xFFFFFFFF]
        p0, p1 = M0 * c[0], M1 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & 0xFFFFFFFF, p1 & 0xFFFFFFFF,
             ((p0 >> 32) ^ c[3] ^ k[1]) & 0xFFFFFFFF, p0 & 0xFFFFFFFF]
    return tuple(c)


def test_philox_matches_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counter = tuple(int(v) for v in rng.integers(0, 2**32, 4))
        key = tuple(int(v) for v in rng.integers(0, 2**32, 2))
        assert _C.philox(counter, key) == _philox_reference(counter, key)


def test_u32_stream_layout():
    """Element i of (seed, stream) is word i % 4 of block i // 4 with counter (block, stream)."""
    seed, stream = 0x1234_5678_9ABC_DEF0, 0x0F00_0000_0000_0042
    words = np.from_dlpack(_C.random("u32", seed, stream, 0, 12))
    key = (seed & 0xFFFFFFFF, seed >> 32)
    for block in range(3):
        counter = (block, 0, stream & 0xFFFFFFFF, stream >> 32)
        assert tuple(int(w) for w in words[4 * block:4 * block + 4]) == _C.philox(counter, key)


def test_normals_box_muller_and_offsets():
    seed, stream = 7, 3
    z = np.from_dlpack(_C.random("normal", seed, stream, 0, 8, "float64"))
    words = np.from_dlpack(_C.random("u32", seed, stream, 0, 8)).astype(np.float64)
    u = (words + 0.5) / 2.0**32
    expected = []
    for a, b in ((0, 1), (2, 3), (4, 5), (6, 7)):
        r = np.sqrt(-2 * np.log(u[a]))
        expected += [r * np.cos(2 * np.pi * u[b]), r * np.sin(2 * np.pi * u[b])]
    np.testing.assert_allclose(z, expected, rtol=1e-14, atol=1e-14)
    # any window of the stream can be produced on its own (replay from an offset)
    tail = np.from_dlpack(_C.random("normal", seed, stream, 5, 3, "float64"))
    np.testing.assert_array_equal(tail, z[5:8])
    # float32 is the float64 stream rounded
    z32 = np.from_dlpack(_C.random("normal", seed, stream, 0, 8, "float32"))
    np.testing.assert_array_equal(z32, z.astype(np.float32))


def test_normal_moments():
    n = 400_000
    z = np.from_dlpack(_C.random("normal", 1, 0, 0, n, "float64"))
    se = 1 / np.sqrt(n)
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(np.mean(z**3)) < 5 * np.sqrt(15) * se
    assert abs(np.mean(z**4) - 3) < 5 * np.sqrt(96) * se
    # neighbouring streams and seeds are uncorrelated
    z2 = np.from_dlpack(_C.random("normal", 1, 1, 0, n, "float64"))
    z3 = np.from_dlpack(_C.random("normal", 2, 0, 0, n, "float64"))
    assert abs(np.corrcoef(z, z2)[0, 1]) < 5 * se
    assert abs(np.corrcoef(z, z3)[0, 1]) < 5 * se


def test_uniform_open_interval():
    u = np.from_dlpack(_C.random("uniform", 3, 0, 0, 200_000, "float32"))
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)


def test_stream_ids_are_distinct():
    ids = {_C.stream_id(p, a, b) for p in range(7) for a in range(5) for b in range(3)}
    assert len(ids) == 7 * 5 * 3
