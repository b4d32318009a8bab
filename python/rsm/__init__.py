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

from . import paths, models, sampling, training  # noqa: E402
from .paths import FlowPath, VPPath  # noqa: E402,F401
from .models import MLP, GaussianMixtureModel, load  # noqa: E402,F401
from .sampling import Trajectory, sample, log_prob, time_grid, step_coefficients  # noqa: E402,F401
from .training import AdamW, History, pretrain, save_checkpoint, load_checkpoint  # noqa: E402,F401


def set_num_threads(n: int) -> None:
    """Threads for rsm's CPU loops (OpenMP) and for the BLAS."""
    _C.set_num_threads(int(n))


def cuda_available() -> bool:
    """Whether a CUDA device can be used (this build has no CUDA backend yet)."""
    return False


def build_info() -> dict:
    """What this build of rsm found and uses: compiler, flags, OpenMP, BLAS, CUDA."""
    info = dict(_C.build_info())
    if _BLAS_ERROR:
        info["blas_error"] = _BLAS_ERROR
    return info
