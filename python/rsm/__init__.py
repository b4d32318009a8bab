"""rsm: Reward Score Matching, reward-based fine-tuning of diffusion and flow models."""
from __future__ import annotations


def _threading_policy() -> dict:
    """OpenMP's waiting policy, set before libgomp starts (it reads its environment once, when
    rsm._C loads it). libgomp's default lets a thread that waits at a barrier spin for about
    300,000 iterations before it sleeps: on a machine where other processes compete for the
    cores, the spinning threads burn the time slices that the thread everyone waits for needs,
    and a step runs 10-60x slower. Passive waiting (sleep at once) costs a few microseconds per
    parallel region on an idle machine and keeps rsm near its fair share of a busy one. Nothing
    is changed when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT; the environment is restored
    after the import (processes started later, and other OpenMP runtimes loaded later, such as
    torch's, see the user's environment). Returns what was set (for build_info)."""
    import os

    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return {}
    return {"OMP_WAIT_POLICY": "passive"}


def _import_core() -> dict:
    import importlib
    import os

    from ._cpu import load_core

    policy = _threading_policy()
    os.environ.update(policy)
    try:
        # the rsm._C copy for this CPU (x86-64-v4 / v3, when the build made them), else the baseline
        if load_core(__name__) == "baseline":
            importlib.import_module("._C", __name__)
    finally:
        for key in policy:
            os.environ.pop(key, None)
    return policy


_THREAD_POLICY = _import_core()

from . import _C  # noqa: E402
from ._C import Tensor, from_dlpack  # noqa: E402,F401
from ._build import (__version__, _BLAS_ERROR, _BUILD_CONFIG, _cuda_status,  # noqa: E402,F401
                     build_info, cuda_available, get_num_threads, set_num_threads)

from . import paths, models, dit, sampling, training  # noqa: E402
from .paths import FlowPath, VPPath  # noqa: E402,F401
from .models import MLP, GaussianMixtureModel, load  # noqa: E402,F401
from .dit import DiT, LoRADiT, lora  # noqa: E402,F401
from .sampling import Trajectory, sample, log_prob, time_grid, step_coefficients  # noqa: E402,F401
from .training import AdamW, History, pretrain, save_checkpoint, load_checkpoint  # noqa: E402,F401
from . import kl, conventions  # noqa: E402,F401
from . import objective, rewards, methods, datasets, metrics, io, estimators  # noqa: E402,F401
from .rewards import Reward  # noqa: E402,F401
from .geometry import BatchGeometry  # noqa: E402,F401
# the compatibility module rsm.finetune is loaded first, so that the function below, not the
# module, is what rsm.finetune names (a later `import rsm.finetune` leaves the attribute alone)
from . import finetune as _finetune_module  # noqa: E402,F401
from .trainer import Run, Trainer, check_on_policy, finetune  # noqa: E402,F401
from . import guidance  # noqa: E402,F401
from . import distributed  # noqa: E402,F401  (data parallelism: MPI, torch.distributed)
from .guidance import Guided  # noqa: E402,F401
from .external import ExternalModel  # noqa: E402,F401
from .torch_model import TorchModel, TorchModelError  # noqa: E402,F401  (torch imported on use)
from .jax_model import JaxModel  # noqa: E402,F401  (jax imported on use)
from . import image_datasets, image_rewards  # noqa: E402,F401  (sklearn / Pillow imported on use)
from . import guards, loggers, runs  # noqa: E402,F401


def __getattr__(name: str):
    """rsm.plot (matplotlib) and rsm.config (a run's config file) load on first use, so that
    `import rsm` stays fast and needs neither."""
    if name in ("plot", "config"):
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'rsm' has no attribute {name!r}")

