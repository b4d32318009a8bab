"""Which build of the C core this CPU runs. A portable build of rsm on x86-64 carries, next to the
baseline rsm._C, copies compiled for x86-64-v3 (AVX2, FMA) and x86-64-v4 (AVX-512) (setup.py);
`load_core` puts the best one the CPU supports in sys.modules["rsm._C"] before anything imports
it. RSM_CPU_VARIANT=baseline|x86_64_v3|x86_64_v4 forces one. Imports nothing from rsm."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4 = _V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

LOADED = "baseline"   # the variant load_core put in place


def cpu_features() -> set[str]:
    """The CPU flags the kernel reports (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_core(package: str) -> str:
    """Load the best rsm._C copy as `package`._C; returns its name ("baseline" when none fits)."""
    global LOADED
    choice = os.environ.get("RSM_CPU_VARIANT", "auto")
    if choice == "auto":
        flags = cpu_features()
        order = [v for v, need in (("x86_64_v4", _V4), ("x86_64_v3", _V3)) if need <= flags]
    else:
        order = [] if choice == "baseline" else [choice]
    here = os.path.dirname(os.path.abspath(__file__))
    name = f"{package}._C"
    for variant in order:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(here, f"_C_{variant}{suffix}")
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                spec = importlib.util.spec_from_file_location(name, path, loader=loader)
                assert spec is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                loader.exec_module(module)
                LOADED = variant
                return variant
        if choice != "auto":
            raise ImportError(f"RSM_CPU_VARIANT={choice}: this build of rsm has no such copy of rsm._C")
    return "baseline"
