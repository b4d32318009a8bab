"""The shared Philox body (csrc/ops/philox.h) on the host: it is the CPU stream, bitwise.

csrc/ops/philox.h is the one definition of rsm's random numbers, compiled for the CPU fills
(csrc/rng.c, csrc/rng_real.c) and for the CUDA kernels. These tests compile that header alone into
a small probe (with the C compiler, and with nvcc as CUDA source when nvcc is there, host half)
and check, bit for bit, that its per-element functions give the words, uniforms and normals of
the CPU stream rsm._C draws (rsm_fill_*), and that Philox4x32-10 itself gives the published
known-answer vectors. They run everywhere; the device half is tests/test_cuda_device.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

from rsm import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Philox4x32-10 known answers (Salmon et al., SC'11; the kat_vectors of their Random123
# distribution): (counter, key) -> output, words low first.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# The probe: reads "seed stream offset n" lines, prints per element the word, the uniform's and
# the normal's bits (hex) from the per-element functions, and the normal again from the
# block-wise rsm_philox_normals4 (the form the CPU fill and the block kernel use).
PROBE = r"""
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include "ops/philox.h"

static uint64_t bits(double v) { uint64_t b; memcpy(&b, &v, sizeof b); return b; }

int main(void) {
    unsigned long long seed, stream, offset, n;
    while (scanf("%llu %llu %llu %llu", &seed, &stream, &offset, &n) == 4) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t k = offset + i;
            double z4[4];
            rsm_philox_normals4(seed, stream, k >> 2, z4);
            printf("%u %016" PRIx64 " %016" PRIx64 " %016" PRIx64 "\n",
                   (unsigned)rsm_philox_u32_at(seed, stream, k),
                   bits(rsm_philox_uniform_at(seed, stream, k)),
                   bits(rsm_philox_normal_at(seed, stream, k)), bits(z4[k & 3]));
        }
    }
    return 0;
}
"""
# nvcc compiles the same header as CUDA: the body must build for the device too (a kernel uses
# it), and its host half must give the same stream.
PROBE_CU_KERNEL = r"""
__global__ void rsm_probe_kernel(uint64_t seed, uint64_t stream, double *out) {
    out[threadIdx.x] = rsm_philox_normal_at(seed, stream, threadIdx.x) +
                       rsm_philox_uniform_at(seed, stream, threadIdx.x);
}
"""

CASES = [(0, 0, 0, 9), (11, int(_C.stream_id(3, 5, 0)), 0, 1003), (7, int(_C.stream_id(6, 2, 9)), 5, 41),
         (2**64 - 1, 2**64 - 1, 2**33 + 3, 13), (123456789, int(_C.stream_id(2, 0, 0)), 2**40 - 2, 7)]


# the tools and the probe run without the sanitizer runtime that `make test-asan` preloads into
# this process (nvcc crashes under an inherited LD_PRELOAD=libasan: exit 139)
_CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}


def _compile(compiler, src, exe, extra):
    out = subprocess.run([compiler, *extra, "-I" + os.path.join(ROOT, "csrc"), src, "-o", exe,
                          "-lm"], capture_output=True, text=True, env=_CLEAN_ENV)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr.lower(), out.stderr


def _run(exe):
    text = "\n".join(" ".join(str(v) for v in c) for c in CASES) + "\n"
    out = subprocess.run([exe], input=text, capture_output=True, text=True, check=True, env=_CLEAN_ENV)
    rows = [line.split() for line in out.stdout.splitlines()]
    words = np.array([int(r[0]) for r in rows], np.uint64)
    as_f64 = lambda col: np.array([int(r[col], 16) for r in rows], np.uint64).view(np.float64)
    return words, as_f64(1), as_f64(2), as_f64(3)


def _cpu_stream():
    """What rsm._C's fills (rsm_fill_u32 / _uniform / _normal, csrc/rng*.c) give for CASES."""
    words, uni, nor = [], [], []
    for seed, stream, offset, n in CASES:
        words.append(np.from_dlpack(_C.random("u32", seed, stream, offset, n)).astype(np.uint64))
        uni.append(np.from_dlpack(_C.random("uniform", seed, stream, offset, n, "float64")))
        nor.append(np.from_dlpack(_C.random("normal", seed, stream, offset, n, "float64")))
    return np.concatenate(words), np.concatenate(uni), np.concatenate(nor)


def _check_probe(exe):
    words, uni, normal_at, normal4 = _run(exe)
    ref_words, ref_uni, ref_normal = _cpu_stream()
    assert np.array_equal(words, ref_words)
    # bitwise: compare the bit patterns, not the values (a -0.0 or a NaN would slip through ==)
    assert np.array_equal(uni.view(np.uint64), ref_uni.view(np.uint64))
    assert np.array_equal(normal4.view(np.uint64), ref_normal.view(np.uint64))
    assert np.array_equal(normal_at.view(np.uint64), ref_normal.view(np.uint64))


def test_philox_known_answers():
    for counter, key, expect in KAT:
        assert _C.philox(counter, key) == expect


def test_shared_body_compiled_alone_is_the_cpu_stream(tmp_path):
    cc = sysconfig.get_config_var("CC") or "cc"
    cc = shutil.which(cc.split()[0]) or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "probe.c"
    src.write_text(PROBE)
    _compile(cc, str(src), str(tmp_path / "probe"), ["-std=c11", "-O2", "-Wall", "-Wextra"])
    _check_probe(str(tmp_path / "probe"))


def _nvcc():
    nvcc = os.environ.get("RSM_NVCC") or shutil.which("nvcc")
    if nvcc is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


def test_shared_body_compiled_by_nvcc_is_the_cpu_stream(tmp_path):
    """nvcc builds the header for sm_80 / sm_90 + PTX without a warning, and the host half of what
    it built is the CPU stream bitwise (the device half needs a GPU: test_cuda_device.py)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (RSM_NVCC, PATH, /usr/local/cuda)")
    src = tmp_path / "probe.cu"
    src.write_text(PROBE.replace("int main(void)", PROBE_CU_KERNEL + "\nint main(void)"))
    _compile(nvcc, str(src), str(tmp_path / "probe"),
             ["-O2", "-std=c++17", "-Xcompiler", "-Wall,-Wextra", "-Werror", "all-warnings",
              "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
              "-gencode=arch=compute_90,code=compute_90"])
    _check_probe(str(tmp_path / "probe"))
