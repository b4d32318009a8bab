"""rsm: Reward Score Matching, reward-based fine-tuning of diffusion and flow models."""
from __future__ import annotations

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


from . import _C  # noqa: E402
from ._C import Tensor, from_dlpack  # noqa: E402,F401

_BLAS_ERROR = _load_blas()


def build_info() -> dict:
    """What this build of rsm found and uses: compiler, flags, OpenMP, BLAS, CUDA."""
    info = dict(_C.build_info())
    if _BLAS_ERROR:
        info["blas_error"] = _BLAS_ERROR
    return info
