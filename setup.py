"""Build of rsm's C extension (rsm._C). Minimal version; see the Makefile for the user commands."""
import glob
import os
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def c_sources():
    # Every csrc/**/*.c is compiled once, except the numeric templates (*_real.c), which are
    # compiled twice (float32, float64) by being #included from csrc/precision_f32.c / _f64.c.
    files = sorted(glob.glob("csrc/**/*.c", recursive=True))
    return [f for f in files if not f.endswith("_real.c")]


def c_flags():
    flags = ["-std=gnu11", "-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra",
             "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
    if os.environ.get("RSM_NATIVE", "1") != "0":
        flags.append("-march=native")
    if os.environ.get("RSM_SANITIZE", "0") == "1":
        flags = [f for f in flags if f != "-O3"] + ["-O1", "-g", "-fno-omit-frame-pointer",
                                                     "-fsanitize=address,undefined",
                                                     "-fno-sanitize-recover=undefined",
                                                     "-DRSM_SANITIZE=1"]
    return flags


flags = c_flags()
ext = Extension(
    "rsm._C",
    sources=c_sources(),
    include_dirs=["csrc"],
    extra_compile_args=flags + ['-DRSM_BUILD_CFLAGS="%s"' % " ".join(flags).replace('"', "")],
    extra_link_args=["-fopenmp", "-ldl", "-lm"] + (["-fsanitize=address,undefined"] if os.environ.get("RSM_SANITIZE", "0") == "1" else []),
)

setup(ext_modules=[ext], package_dir={"": "python"}, packages=["rsm"])
