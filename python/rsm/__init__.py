"""rsm: Reward Score Matching, reward-based fine-tuning of diffusion and flow models."""
from __future__ import annotations

from . import _C  # noqa: E402
from ._C import Tensor, from_dlpack  # noqa: E402,F401
from ._build import (__version__, _BLAS_ERROR, _BUILD_CONFIG, _cuda_status,  # noqa: E402,F401
                     build_info, cuda_available, set_num_threads)

from . import paths, models, dit, sampling, training  # noqa: E402
from .paths import FlowPath, VPPath  # noqa: E402,F401
from .models import MLP, GaussianMixtureModel, load  # noqa: E402,F401
from .dit import DiT, LoRADiT, lora  # noqa: E402,F401
from .sampling import Trajectory, sample, log_prob, time_grid, step_coefficients  # noqa: E402,F401
from .training import AdamW, History, pretrain, save_checkpoint, load_checkpoint  # noqa: E402,F401
from . import kl  # noqa: E402,F401
from . import objective, rewards, methods, datasets, metrics, io, estimators  # noqa: E402,F401
from .rewards import Reward  # noqa: E402,F401
from .geometry import BatchGeometry  # noqa: E402,F401
# the compatibility module rsm.finetune is loaded first, so that the function below, not the
# module, is what rsm.finetune names (a later `import rsm.finetune` leaves the attribute alone)
from . import finetune as _finetune_module  # noqa: E402,F401
from .trainer import Run, Trainer, check_on_policy, finetune  # noqa: E402,F401
from . import guidance  # noqa: E402,F401
from .guidance import Guided  # noqa: E402,F401
from . import image_datasets, image_rewards  # noqa: E402,F401  (sklearn / Pillow imported on use)

