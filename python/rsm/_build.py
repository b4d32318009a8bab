"""What this build of rsm is and found: the version, the BLAS handed to the C core, the build
configuration setup.py wrote, CUDA availability. The lowest Python layer next to the extension
(rsm._C): the package's __init__ re-exports it, and modules needing any of it import it from here,
never from the package root (tests/test_imports.py)."""
from __future__ import annotations

from . import _C

__version__ = "0.1.0"


def _load_blas() -> str | None:
    """Hand the OpenBLAS of the scipy-openblas32 wheel to the C core (dlopen'ed there)."""
    try:
        import os

        import scipy_openblas32

        lib_dir = scipy_openblas32.get_lib_dir()
        path = os.path.join(lib_dir, scipy_openblas32.get_library(fullname=True))
        _C.load_blas(path)
        return None
    except Exception as exc:  # no wheel, or a broken one: the built-in kernel is used
        return f"{type(exc).__name__}: {exc}"


_BLAS_ERROR = _load_blas()


def set_num_threads(n: int) -> None:
    """Threads for rsm's CPU loops (OpenMP) and its GEMM tiles (the BLAS itself runs one thread
    per tile). Results are bitwise the same for every thread count (README, Threads, busy
    machines and reproducibility). Default: OMP_NUM_THREADS if set, else the cores this process
    may run on."""
    import numbers

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"set_num_threads(): n must be an int >= 1, got {n!r}")
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads rsm's CPU loops use (set_num_threads, else OMP_NUM_THREADS, else the
    cores this process may run on)."""
    return _C.get_num_threads()


try:  # written by setup.py at build time (gitignored)
    from ._build_config import CONFIG as _BUILD_CONFIG
except ImportError:  # pragma: no cover - a tree built without setup.py
    _BUILD_CONFIG = {}

_CUDA_STATUS: tuple[bool, str] | None = None


def _cuda_status() -> tuple[bool, str]:
    """(available, reason): imports rsm._cuda on first use; cached."""
    global _CUDA_STATUS
    if _CUDA_STATUS is None:
        if not _BUILD_CONFIG.get("cuda_built", False):
            why = _BUILD_CONFIG.get("cuda_error") or "unknown"
            _CUDA_STATUS = (False, f"rsm was built without CUDA ({why})")
        else:
            try:
                from . import _cuda
            except ImportError as exc:  # e.g. libcublas missing at run time
                _CUDA_STATUS = (False, f"cannot load rsm._cuda: {exc}")
            else:
                count, reason = _cuda.device_count()
                _CUDA_STATUS = (count > 0, reason if count == 0 else f"{count} device(s)")
    return _CUDA_STATUS


def cuda_available() -> bool:
    """True when rsm was built with CUDA and a CUDA device is usable (build_info() says why not)."""
    return _cuda_status()[0]


def build_info() -> dict:
    """What this build of rsm found and uses: versions (rsm, Python, numpy), the copy of the C
    core this CPU runs, compiler, flags, OpenMP, BLAS, CUDA."""
    import platform
    import sys

    import numpy

    from . import _cpu

    info = {"rsm_version": __version__, "python_version": platform.python_version(),
            "python": sys.executable, "numpy_version": numpy.__version__,
            "platform": platform.platform(), "cpu_variant": _cpu.LOADED}
    info.update(_C.build_info())
    if _BLAS_ERROR:
        info["blas_error"] = _BLAS_ERROR
    cfg = _BUILD_CONFIG
    available, reason = _cuda_status()
    info.update(
        cuda_built=bool(cfg.get("cuda_built", False)),
        cuda_archs=cfg.get("cuda_archs"),
        nvcc=cfg.get("nvcc"),
        nvcc_path=cfg.get("nvcc_path"),
        cuda_available=available,
        cuda_reason=reason,
        native=cfg.get("native"),
        cpu_variants_built=list(cfg.get("cpu_variants", [])),
        build_summary=list(cfg.get("summary", [])),
    )
    return info
