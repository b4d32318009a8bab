"""Reward fine-tuning: rollout -> reward -> advantages / estimates -> coefficients -> update ->
history, one iteration per `Trainer.step()` (THEORY.md §4-§7, §9, §12.5). The pieces live in
rsm.methods (presets, rollouts, estimates, coefficient rules, update blocks, pathwise methods,
path KL); this module holds the loop, the conditions, `finetune` and `check_on_policy`.

Every method reaches the parameters through the one objective of csrc/objective.h: the loss gives
the cotangent on the model output, the backbone's VJP turns it into parameter gradients.

Where the work runs: the rollout is one C call (csrc/train/rollout.h: a sampler run, or the ODE
root + single-step branches of the redesigns), which calls the reward once per batch from inside
its loop, with the GIL held only during that call (ReFL's reward, taken at a Tweedie jump after
the sampler, and the extra Tweedie-point calls of VGG-Flow / Residual nabla-DB are Python calls);
the whole update (for every block of training rows: the reference forward once per rollout, the
policy forward, the objective, the backward; then the optimizer step of each inner epoch) is one
C call, csrc/train/update.h, with the GIL released. Python builds the group advantages and the
per-row coefficients each preset gives (rsm.methods.coefficients, THEORY.md §12.6) between the
two. Only DRaFT's pathwise backward through the sampler and the lean adjoint of Adjoint Matching
run as Python loops over the model's C VJP (rsm.methods.pathwise).

Iteration k draws all its randomness from Philox streams keyed by (seed, k) (rsm.methods.streams),
the reward is called before anything changes, and a failing step (reward raises, returns NaN or a
wrong shape, the gradient is not finite) leaves the policy and the optimizer exactly as they
were."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import conventions as _conv
from . import dp_finetune as _parallel
from . import guards as _guards
from . import kl as _kl
from ._args import as_cond, num_classes_of, seed_int
from .geometry import BatchGeometry
from .methods import get as get_method
from .methods import pathwise, update as blocks
from .methods.batch import Batch
from .methods.estimates import ESTIMATES, tensor
from .methods.kl_eval import PathKL
from .methods.rollouts import ROLLOUTS
from .methods.setting import make_setting, resolve_path
from .rewards import Reward
from .sampling import log_prob
from .training import AdamW, History, finetune_row


@dataclass
class Run:
    """What rsm.finetune returns: the fine-tuned policy, the per-step history, the trainer."""

    policy: Any
    history: History
    trainer: "Trainer"

    def __repr__(self) -> str:
        from .runs import run_repr

        return run_repr(self)

    def _repr_html_(self) -> str:
        from .runs import run_html

        return run_html(self)

    def ema_policy(self) -> Any:
        """A copy of the policy with the EMA parameters (needs ema_decay > 0)."""
        ema = self.trainer.optimizer.ema
        if ema is None:
            raise ValueError("ema_policy(): fine-tune with ema_decay > 0 to keep an EMA")
        model = self.policy.copy()
        model.load_params(ema)
        return model


class Trainer:
    """Step-wise fine-tuning (for notebooks): `trainer.step()` runs one iteration and returns its
    history row; `rsm.finetune` loops over it with a progress bar.

    batch_size: conditions (prompts) or roots per rollout micro-batch; group_size: samples per
    condition (zeroth-order methods normalise rewards within a group; Branch-GRPO: the leaves
    branch ** split of each tree). The preset keys `accumulate` (rollout micro-batches per
    optimizer step) and `inner_epochs` (optimizer steps per iteration) complete the batch
    geometry, validated up front as `trainer.geometry` (rsm.BatchGeometry).

    conditions (or its older name cond): None (unconditional), class ids [M] (a class-conditional
    model such as rsm.DiT, or any model with cond_dim 1) or condition vectors [M, cond_dim].
    Every group shares one condition, and group advantages are computed per group, so per
    condition. With M == batch_size every iteration uses all of them; otherwise iteration k takes
    the batch_size conditions (k * batch_size + j) mod M, cycling through the list. The reward
    receives the condition of every sample: class ids int64 [n] when class ids were given,
    else the vectors [n, cond_dim]. Wrap policy and ref in rsm.Guided for guided rollouts and
    guided losses (THEORY.md §9).

    KL to the reference, two columns of the history:
      kl       the train-time KL: sum over the rows this method trains (all SDE steps for
               Flow-GRPO, the branch steps of rsm-zo, a random subset for DanceGRPO, none for
               DRaFT) of 0.5 w_i^2 |u_theta - u_ref|^2, w_i = |K_i| / std_i (THEORY.md §11), per
               sample, at the rollout states, before the update. It depends on which steps a
               method trains, so it is NOT comparable between methods.
      kl_anchor the same at the ODE KL-anchor rows of the redesigns rsm-zo / rsm-zo-diffusion
               (root states at the steps their budget leaves untrained, trained by the KL only;
               THEORY.md §9.2.5, §9.3; the preset keys kl_anchor*); 0 for every other preset.
      kl_path  KL(P_theta || P_ref) of the whole discretised path (`path_kl`): every step of one
               fixed SDE, the same for every preset, on fixed evaluation noise. Comparable
               between methods (and along a run). kl_every=k evaluates it at iterations 0, k,
               2k, ... (default 5, so it costs a few % of the training compute; 1 for a value
               every row; 0: never; NaN in the other rows) on kl_samples trajectories (default
               min(256, batch_size * group_size)); kl_grid / kl_noise_level replace the
               trainer's time grid / noise level for it (to compare trainers on other grids).
    kl_path is taken at the start of step(), on the parameters that roll out that iteration (the
    parameters its reward_mean belongs to), and is not training compute: its network
    evaluations are in "eval_nfe" and its time in "eval_seconds", not in "nfe" / "seconds", so
    reward-vs-compute plots stay about training; its random streams are its own, so the
    training run is bitwise the same with or without it.

    device: "cpu" (default), or "cuda" / "cuda:N" for the iteration's C loops on the CUDA
    backend (issue 13); refused with the reason where CUDA cannot be used, and (NotImplementedError)
    until those loops run over the backend table."""

    def __init__(self, policy: Any, ref: Any, reward: Any, method: str = "rsm-zo", *,
                 path: Any = None, batch_size: int = 16, group_size: int = 8, seed: int = 0,
                 cond: Any = None, conditions: Any = None, kl_every: int = 5,
                 kl_samples: int | None = None, kl_grid: Any = None,
                 kl_noise_level: float | None = None, comm: Any = None,
                 dp_tiles: int | None = None, dp_exact: bool = True, device: str = "cpu",
                 **overrides: Any) -> None:
        on_device = [getattr(m, "device", "cpu") for m in (policy, ref)
                     if getattr(m, "device", "cpu") != "cpu"]
        if device != "cpu" or on_device:
            # device="cuda[:N]" (or models built on a device): the rollouts and pretraining of a
            # device model run the C loops on its backend (rsm.MLP(..., device=...)); the
            # iteration's Python glue (methods/batch.py rows, methods/update.py's UpdateBlock,
            # rsm._reward) still builds host numpy arrays, so the iteration is refused with the
            # reason (never a silent run on the host)
            from . import cuda as _cuda
            _cuda.require(device if device != "cpu" else on_device[0], "Trainer")
            raise NotImplementedError(
                f"Trainer(device={device!r}): a fine-tuning iteration on the GPU needs the "
                "update's rows (UpdateBlock, methods/batch.py) on the device, which is not wired "
                "yet (issue 13); rsm.sample / rsm.pretrain already run device models "
                "(rsm.MLP(..., device='cuda')); use device='cpu' for the Trainer")
        overrides = _guards.sampler_steps_alias(overrides, "Trainer")
        self.cfg = cfg = get_method(method, **overrides)
        self.method = method
        self._dp = None   # data parallelism (rsm.dp_finetune): this rank's share of the groups
        for name, model in (("policy", policy), ("ref", ref)):
            if not all(hasattr(model, a) for a in ("dim", "dtype", "forward", "params")):
                raise TypeError(f"Trainer(): {name} must be an rsm model (rsm.MLP, rsm.DiT, "
                                f"rsm.Guided, ...; a torch module: rsm.TorchModel(module, ...)), "
                                f"got {type(model).__name__}")
        _guards.check_distinct(policy, ref)
        self.policy, self.ref = policy, ref
        self.reward = reward if isinstance(reward, Reward) else Reward(reward)
        # the models' recorded path decides (a preset for another path is refused, rsm.guards)
        self.path = resolve_path(cfg, _guards.resolve_path(method, cfg["path"], path, policy, ref,
                                                           cfg.get("vp_schedule", "linear")))
        if policy.dim != ref.dim:
            raise ValueError(f"policy (dim {policy.dim}) and ref (dim {ref.dim}) differ")
        self.geometry = BatchGeometry.from_method(cfg, batch_size, group_size, dim=policy.dim)
        if cfg.needs_reward_gradient and not self.reward.differentiable:
            raise ValueError(f"method {method!r} is first-order: the reward must be differentiable "
                             "(rsm.Reward(fn, differentiable=True) returning (rewards, grad))")
        self.batch_size, self.group_size = int(batch_size), int(group_size)
        self.seed = seed_int(seed, "Trainer")
        self._set_conditions(cond, conditions, policy, ref)
        self.setting = s = make_setting(cfg, self.path, policy.dtype)
        # the grid; the path's stochastic sampler (Flow-GRPO's SDE on flow, DDPM on VP; its steps
        # define w_i = |K_i| / std_i for the ratio forms and every method's KL report) and
        # deterministic one, with their step coefficients; PCPO's DDPM std (THEORY.md §6.3.6)
        self.ts, self.stochastic, self.deterministic = s.ts, s.stochastic, s.deterministic
        self.sde, self.det_coef, self.pcpo_weight = s.sde, s.det_coef, s.pcpo_weight
        # DDPO's per-prompt reward statistics, kept across iterations (rsm.conventions)
        self.tracker = (_conv.PromptTracker(cfg["adv_buffer_size"], cfg["adv_min_count"])
                        if cfg.get("adv_tracker") == "per_prompt" else None)
        self.optimizer = AdamW(policy, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                               max_grad_norm=cfg["max_grad_norm"], ema_decay=cfg.get("ema_decay", 0.0))
        # the geometry again, now counting only the steps that are stochastic on this path
        self.geometry = BatchGeometry.from_method(
            cfg, batch_size, group_size, dim=policy.dim,
            deterministic={i for i, c in enumerate(self.sde) if not c["std"] > 0})
        self.iteration = 0
        self._draw = 0   # index of the rollout micro-batch: keys every rollout's random streams
        self._score_rollouts = True   # False only inside check_on_policy's _rollout_rows(score=False)
        self.history = History()
        # kl_path is Flow-GRPO's SDE (or DDPM) whatever the preset rolls out with; a constant-s~
        # preset (dance-grpo) evaluates it at Flow-GRPO's a = 0.7
        const = self.stochastic == "sde-const"
        self.kl_eval = PathKL(policy, ref, self.path, "sde" if const else self.stochastic,
                              self._conditions, self.seed, self.batch_size * self.group_size,
                              self.ts, 0.7 if const else cfg["noise_level"],
                              kl_every, kl_samples, kl_grid, kl_noise_level)
        self.kl_every, self.kl_samples, self.kl_grid = self.kl_eval.every, self.kl_eval.samples, self.kl_eval.grid
        self.kl_noise_level, self.kl_seed = self.kl_eval.noise_level, self.kl_eval.seed
        # comm= (or an initialised rsm.distributed with several ranks): data-parallel iterations
        self._dp = _parallel.trainer_setup(self, comm, dp_tiles, dp_exact, Trainer)

    # ---- files and display (rsm.runs) -------------------------------------------------------
    def save(self, file: Any) -> None:
        """Write everything a resumed run needs (policy, optimizer and EMA, iteration, history,
        the reference's digest) to one safetensors file, atomically (rsm.runs)."""
        from .runs import save_trainer

        save_trainer(self, file)

    @classmethod
    def load(cls, file: Any, ref: Any, reward: Any = None, *, policy: Any = None,
             path: Any = None) -> "Trainer":
        """The trainer saved by `save(file)`, rebuilt around `ref` (checked against the stored
        digest) and `reward` (optional for rsm.rewards' analytic rewards); stepping it continues
        bitwise as the run that saved it (rsm.runs.load_trainer)."""
        from .runs import load_trainer

        return load_trainer(cls, file, ref, reward, policy=policy, path=path)

    def __repr__(self) -> str:
        from .runs import trainer_repr

        return trainer_repr(self)

    def _repr_html_(self) -> str:
        from .runs import trainer_html

        return trainer_html(self)

    # ---- one iteration ----------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One iteration: `accumulate` rollout micro-batches (each: rollout, reward, advantages or
        estimates), then `inner_epochs` optimizer steps on their summed gradient (coefficients,
        the C update). A failing reward leaves the policy and the optimizer untouched (nothing
        is updated before every rollout is scored). Under data parallelism (comm=), each rank
        rolls out its groups and the gradient is reduced over the ranks (rsm.dp_finetune)."""
        if self._dp is not None:
            return _parallel.trainer_step(self)
        evaluation = self.kl_eval.columns(self.iteration)   # before the clock: not training time
        start = time.perf_counter()
        # rollout (the reward called from inside it) and advantages / estimates, per micro-batch
        batches = [self.rollout(micro=j) for j in range(self.geometry.accumulate)]
        self.batch_advantages(batches)   # the batch-level conventions across the micro-batches
        scores = [self._step_scores(b) for b in batches]
        rewards = np.concatenate([r for r, _ in scores])
        valid = np.concatenate([v for _, v in scores])
        stats = self.update(batches)     # coefficients, then the C update (every inner epoch)
        if self.tracker is not None:   # the step succeeded: its rewards enter the buffers
            for b in batches:
                self.tracker.commit(b.get("tracker_update"))
        self.iteration += 1
        ok = rewards[valid]
        row = finetune_row(self.iteration - 1, float(ok.mean()) if ok.size else float("nan"),
                           float(ok.std()) if ok.size else float("nan"), valid, batches,
                           sum(int(b.nfe) + int(b.adjoint_nfe) for b in batches),
                           self._step_extra_nfe(), time.perf_counter() - start, stats, evaluation)
        self.history.append(row)
        return row

    def batch_advantages(self, batches: list) -> None:
        """The advantages of one iteration's rollout micro-batches (accumulate > 1) under the
        batch-level conventions of rsm.conventions, in place: the batch std and DDPO's tracker
        see all the iteration's rewards at once, as the released scripts see an epoch's (one
        tracker update with every reward, one std over them). Per-group conventions and a
        single micro-batch are left as rollout() computed them."""
        cfg = self.cfg
        if len(batches) < 2 or "adv_keys" not in batches[0]:
            return
        if cfg.get("adv_std") != "batch" and cfg.get("adv_tracker") is None:
            return
        offset, keys = 0, []
        for b in batches:   # groups stay apart across micro-batches (invalid rows: own keys)
            k = b["adv_keys"]
            keys.append(np.where(k >= 0, k + offset, k - offset))
            offset += int(np.abs(k).max()) + 1
        adv, mask, pending = _conv.group_advantages(
            np.concatenate([b.rewards for b in batches]), np.concatenate(keys),
            np.concatenate([b.valid for b in batches]), cfg, self.tracker,
            np.concatenate([b["prompts"] for b in batches]))
        _conv.assign_advantages(batches, adv, mask, pending)

    def _prompt_ids(self, n: int) -> np.ndarray:
        """The prompt of every sample of an SDE rollout for per-prompt trackers: the index of its
        condition in the conditions list (the same prompt across iterations), 0 for all samples
        of an unconditional model (one prompt)."""
        if self._conditions is None:
            return np.zeros(n, dtype=np.int64)
        idx = (self._draw * self.batch_size + np.arange(self.batch_size)) % self._conditions.shape[0]
        return np.repeat(idx, n // self.batch_size)

    def rollout(self, micro: int = 0) -> Batch:
        """One rollout with rewards and advantages (or reward gradients), as step() would use it:
        for inspecting batches and for gradient checks. `micro` = index of the micro-batch within
        the iteration (gradient accumulation): each draws its own random streams."""
        if isinstance(micro, bool) or not isinstance(micro, (int, np.integer)) or micro < 0:
            raise ValueError(f"rollout(): micro={micro!r} must be a non-negative int")
        # accumulate = 1 keeps the streams of iteration k at index k
        self._draw = self.iteration * self.geometry.accumulate + int(micro)
        batch = self._rollout_rows()
        # the reward was called once from inside the C rollout (batch.scored), except for
        # ReFL, whose reward is at the Tweedie jump taken after the sampler
        scored = batch.pop("scored")
        if scored is None:
            scored = self.reward(tensor(batch.x0), self.reward_cond(batch.cond_x0))
        batch.rewards, batch.reward_grad, batch.valid = scored
        ESTIMATES[self.cfg["estimator"]](self, batch)
        return batch

    def update(self, batches: list) -> dict[str, Any]:
        """`inner_epochs` optimizer steps, each on the gradient summed over the rollout
        micro-batches `batches` (gradient accumulation) under ONE masked-mean normalizer: the
        total number of signal rows of all micro-batches, so k micro-batches give the update of
        one batch holding the same rows. Every method but the pathwise DRaFT runs all its epochs
        in one C call (csrc/train/update.h); a failure in any epoch leaves the policy and the
        optimizer as they were. Returns the step statistics."""
        if isinstance(batches, Batch):
            batches = [batches]
        cfg = self.cfg
        epochs = int(cfg["inner_epochs"])
        normalizer = max(sum(blocks.signal_rows(b) for b in batches), 1.0)
        if getattr(self.policy, "optimizer", None) is not None:   # rsm.TorchModel(optimizer=)
            return self.policy.optimizer_update(self, batches, normalizer)
        stats = {"train_nfe": 0, "rows": int(sum(len(r["traj"]) for b in batches for r in b["rows"]))}
        if cfg.through_sampler:
            return pathwise.draft_update(self.policy, self.optimizer, self.setting, batches, stats)
        if not any(b["rows"] or b.get("anchor_rows") for b in batches):
            # nothing trained (MixGRPO's empty window at b = S - 2): no optimizer step, as the
            # released loop, whose optimizer skips parameters without a gradient (no Adam
            # moment update, no weight decay)
            return {**stats, "grad_norm": 0.0, "loss": 0.0, "kl": 0.0, "kl_anchor": 0.0,
                    "clip_fraction": 0.0, "clip_fraction_per_step": []}
        per_batch, out = blocks.run(self.policy, self.ref, self.optimizer, self.setting, batches,
                                    normalizer, epochs)
        loss, kl, clip = (np.from_dlpack(out[k]) for k in ("loss", "kl", "clip_fraction"))
        first = blocks.block_stats(cfg, batches, per_batch, loss[0], kl[0], clip[0])
        last = first if epochs == 1 else blocks.block_stats(cfg, batches, per_batch, loss[-1], kl[-1], clip[-1])
        stats["train_nfe"] = int(out["nfe"])
        stats["grad_norm"] = float(np.from_dlpack(out["grad_norms"])[-1])
        stats["loss"], stats["kl"], stats["kl_anchor"] = first["loss"], first["kl"], first["kl_anchor"]
        per_step = last["clip_fraction_per_step"]
        stats["clip_fraction"] = float(np.mean(list(per_step.values()))) if per_step else 0.0
        stats["clip_fraction_per_step"] = [per_step[k] for k in sorted(per_step)]
        return stats

    def loss_and_grad(self, batch: Batch, normalizer: float | None = None) -> tuple[np.ndarray, dict]:
        """The objective over all training rows of `batch` at the current policy parameters:
        (flat parameter gradient, stats). Nothing is updated."""
        if self.cfg.through_sampler:
            return pathwise.draft_grad(self.policy, self.setting, batch)
        normalizer = self.normalizer(batch) if normalizer is None else normalizer
        per_batch, out = blocks.run(self.policy, self.ref, self.optimizer, self.setting, [batch],
                                    normalizer, epochs=0)
        stats = blocks.block_stats(self.cfg, [batch], per_batch, np.from_dlpack(out["loss"]),
                                   np.from_dlpack(out["kl"]), np.from_dlpack(out["clip_fraction"]))
        stats["train_nfe"] = int(out["nfe"])
        return np.from_dlpack(out["grads"]), stats

    def normalizer(self, batch: Batch) -> float:
        """The masked-mean denominator of THEORY.md §9.2.3: the number of trained rows that carry
        a signal (valid reward, non-zero-std group), at least 1. Row weights (k_avg / k_i) scale
        the rows but not the denominator."""
        return max(blocks.signal_rows(batch), 1.0)

    def save_checkpoint(self, path: str) -> None:
        """Policy, optimizer, iteration and history in one file (rank 0 writes under data
        parallelism); load_checkpoint resumes exactly, under any world size."""
        _parallel.save_trainer(self, path)

    def load_checkpoint(self, path: str) -> None:
        _parallel.load_trainer(self, path)

    # hooks of step() for subclasses (rsm.auxiliary.AuxTrainer)
    def _step_scores(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, valid) of a rollout's own samples, for the history's reward statistics."""
        return batch.rewards, batch.valid

    def _step_extra_nfe(self) -> dict[str, int]:
        """Extra network-evaluation columns of the step (after rollout_nfe), added to nfe."""
        return {}

    # ---- rollouts (rsm.methods.rollouts) ----------------------------------------------------
    def _rollout_rows(self, score: bool = True) -> Batch:
        """The preset's rollout; score=False: without the reward call (batch.scored None)."""
        self._score_rollouts = score
        try:
            return ROLLOUTS[self.cfg["rollout"]](self)
        finally:
            self._score_rollouts = True

    def _reward_hook(self, cond_x0: Any) -> Any:
        """The reward as the C rollout's callback (csrc/train/rollout.h): the C loop calls it
        once, with the batch's terminal samples (an rsm.Tensor) and the interpreter lock held
        only for the call; it returns self.reward's checked (rewards, grad, valid), and whatever
        it raises reaches the caller of rollout()/step() unchanged. None while scoring is off
        (check_on_policy: a rollout without reward calls)."""
        if not self._score_rollouts:
            return None
        reward, reward_cond = self.reward, self.reward_cond(cond_x0)
        return lambda x0: reward(x0, reward_cond)

    def _cond_rows(self, repeat: int) -> Any:
        cond = self.cond
        return None if cond is None else np.ascontiguousarray(np.repeat(cond, repeat, axis=0))

    # ---- conditions --------------------------------------------------------------------------
    def _set_conditions(self, cond: Any, conditions: Any, policy: Any, ref: Any) -> None:
        if cond is not None and conditions is not None:
            raise ValueError("finetune(): give conditions= or cond=, not both")
        given = conditions if conditions is not None else cond
        name = "conditions" if conditions is not None else "cond"
        self._conditions, self._class_ids = None, False
        if given is None:
            if getattr(policy, "cond_dim", 0) > 0:
                raise ValueError(f"finetune(): the policy is conditional (cond_dim={policy.cond_dim}): "
                                 "pass conditions= (class ids [M] or vectors [M, cond_dim])")
            return
        cond_dim = getattr(policy, "cond_dim", 0)
        if cond_dim == 0:
            raise ValueError(f"finetune(): {name} was given but the policy is unconditional (cond_dim=0)")
        if getattr(ref, "cond_dim", cond_dim) != cond_dim:
            raise ValueError(f"finetune(): policy (cond_dim {cond_dim}) and ref (cond_dim {ref.cond_dim}) differ")
        arr = np.from_dlpack(given) if hasattr(given, "__dlpack__") and not isinstance(given, np.ndarray) else np.asarray(given)
        if arr.ndim == 0 or arr.shape[0] < 1:
            raise ValueError(f"finetune(): {name} must be a non-empty array of class ids [M] or vectors [M, {cond_dim}]")
        if cond is not None and arr.shape[0] != self.batch_size:
            raise ValueError(f"cond must have batch_size={self.batch_size} rows, got {arr.shape[0]}")
        self._class_ids = arr.ndim == 1 and cond_dim == 1
        if self._class_ids and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise ValueError(f"finetune(): {name} must be integer class ids, got {arr[:8]}")
        self._conditions = as_cond(arr, arr.shape[0], cond_dim, policy.dtype, "finetune", name=name,
                                   num_classes=num_classes_of(policy))

    def _groups(self) -> tuple[int, int]:
        """(first, count): the groups (conditions, roots) this process rolls out: all of them,
        or its share under data parallelism (rsm.dp_finetune)."""
        return (0, self.batch_size) if self._dp is None else self._dp.groups

    @property
    def cond(self) -> np.ndarray | None:
        """The conditions of the current iteration, [batch_size, cond_dim] in the model layout
        (under data parallelism: this rank's groups only)."""
        c = self._conditions
        if c is None:
            return None
        first, count = self._groups()
        if c.shape[0] == self.batch_size and count == self.batch_size:
            return c
        # one block of conditions per rollout micro-batch (gradient accumulation): draw index
        idx = (self._draw * self.batch_size + first + np.arange(count)) % c.shape[0]
        return np.ascontiguousarray(c[idx])

    def reward_cond(self, cond_rows: np.ndarray | None) -> Any:
        """What the reward receives for model-layout condition rows: class ids int64 [n] when the
        conditions were class ids, else the vectors themselves."""
        if cond_rows is None or not self._class_ids:
            return cond_rows
        return np.rint(cond_rows[:, 0]).astype(np.int64)

    # ---- path KL to the reference (evaluation, THEORY.md §11; rsm.methods.kl_eval) ------------
    def path_kl(self, n: int | None = None, seed: int | None = None, *, ts: Any = None,
                noise_level: float | None = None, per_step: bool = False) -> Any:
        """KL(P_theta || P_ref) of the CURRENT policy to the reference over whole discretised
        paths of one fixed SDE (rsm.kl.path_kl: Monte-Carlo over n trajectories of the policy,
        exact per step; nats per sample). The SDE is the path's stochastic sampler whatever the
        method rolls out with (ODE, branches, trees): Flow-GRPO's SDE at noise level
        `noise_level` on the flow path, DDPM on the VP path (without PCPO's std), on the grid
        `ts`; defaults: kl_grid (the trainer's grid) and kl_noise_level (the preset's), n =
        kl_samples, seed = kl_seed. So every preset sharing path, grid and noise level gets the
        same value for the same parameters, and the fixed seed (a stream of its own, not drawn
        by training) makes successive values along a run comparable (common random numbers) and
        leaves the training run unchanged. Conditional trainers use condition j mod M for
        trajectory j. per_step=True returns the terms [steps] instead of their sum."""
        n = self.kl_eval.samples if n is None else _kl.check_samples(n, "path_kl", "n")
        terms, _ = self.kl_eval.terms(n, seed, ts, noise_level)
        return terms if per_step else float(terms.sum())


def finetune(policy: Any, ref: Any, reward: Any, method: str = "rsm-zo", iterations: int | None = None,
             batch_size: int = 16, group_size: int = 8, seed: int = 0, progress: bool = True, *,
             steps: int | None = None, resume_from: Any = None, save_every: int = 0,
             save_path: Any = None, log_with: Any = None, log_dir: Any = "runs/rsm",
             log_every: int = 1, log_config: dict | None = None, sample_every: int = 0,
             kl_warn: float | None = 50.0, target_reward: float | None = None,
             **overrides: Any) -> Run:
    """Fine-tune `policy` toward `reward` while staying close to `ref` with a method preset
    (rsm.methods.names()) for `iterations` iterations (in total: a resumed run continues to it);
    hyper-parameters of the preset can be overridden by keyword: the options of
    rsm.methods.Preset that the preset has (rsm.methods.get(method).options(); each is typed and
    checked when the preset is built, rsm.methods.options), the sampler's step count as
    sampler_steps= (steps= is the deprecated alias of iterations=).
    conditions= (class ids [M] or vectors [M, cond_dim]) fine-tunes a conditional model, one
    condition per group (see Trainer); rsm.Guided(policy, w) / rsm.Guided(ref, w) fine-tune with
    classifier-free guidance in the rollouts and the losses. kl_every / kl_samples / kl_grid /
    kl_noise_level set the comparable path-KL column "kl_path" (see Trainer; kl_every=0 turns it
    off); its network evaluations go to "eval_nfe", not "nfe".

    Runs (rsm.runs, rsm.loggers): save_path= writes the trainer file (Trainer.save) at the end
    and every save_every iterations; resume_from= a trainer file continues that run bitwise;
    log_with= "csv" | "tensorboard" | "wandb" | fn(row, step) | a list logs every log_every-th
    history row (to log_dir; log_config: wandb.init's keywords) and, for image models, a grid
    of samples every sample_every iterations; kl_warn= warns once when kl_path exceeds it
    (None: never); target_reward= (the mean reward under the exact reward-tilted target
    p* ∝ p_ref exp(r / alpha), where it is known, e.g. from rsm.datasets' tilted mixtures) warns
    once when the batch's mean reward passes it by more than two standard errors: a policy
    beyond p* trades more KL than the objective asks for (over-optimisation).
    Returns Run(policy, history, trainer)."""
    from .runs import RunHooks, restore

    iterations = _guards.iterations_alias(iterations, steps)
    path = overrides.pop("path", None)
    cond = overrides.pop("cond", None)
    conditions = overrides.pop("conditions", None)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise ValueError(f"finetune(): iterations={iterations!r} must be a non-negative int")
    trainer = Trainer(policy, ref, reward, method, path=path, batch_size=batch_size,
                      group_size=group_size, seed=seed, cond=cond, conditions=conditions, **overrides)
    if resume_from is not None:
        restore(trainer, resume_from)
    hooks = RunHooks(trainer, log_with=log_with, log_dir=log_dir, log_every=log_every,
                     log_config=log_config, sample_every=sample_every, save_every=save_every,
                     save_path=save_path, kl_warn=kl_warn, target_reward=target_reward)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=iterations, initial=min(trainer.iteration, iterations),
                       desc=f"finetune {method}", dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            bar = None
    kl_path = float("nan")   # the bar keeps the last evaluated value between evaluations
    finished = False
    try:
        while trainer.iteration < iterations:
            row = trainer.step()
            hooks.after_step(row)
            if bar is not None:
                bar.update(1)
                kl_path = row["kl_path"] if np.isfinite(row["kl_path"]) else kl_path
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3g}",
                                kl_path=f"{kl_path:.3g}", clip=f"{row['clip_fraction']:.2f}")
        finished = True
    finally:
        hooks.close(finished)
        if bar is not None:
            bar.close()
    return Run(policy, trainer.history, trainer)


def check_on_policy(trainer: Trainer) -> dict[str, Any]:
    """Run one rollout of `trainer` (no update, no reward call) and recompute, with the current
    parameters, the network outputs and the log-probabilities of every recorded transition.
    Sampling and training share one code path, so both are bitwise equal and every importance
    ratio is exactly 1. Returns dict(rows, max_abs_log_ratio); raises AssertionError otherwise."""
    batch = trainer._rollout_rows(score=False)
    worst, rows = 0.0, 0
    for row in batch.rows:
        i = row["step"]
        u = np.from_dlpack(trainer.policy.forward(row["x"], trainer.ts[i], row["cond"]))
        if not np.array_equal(u, row["u_old"]):
            raise AssertionError(f"{trainer.policy!r}, step {i}: recomputed outputs differ from "
                                 f"the rollout's (max |diff| {np.abs(u - row['u_old']).max():.3g}): "
                                 "the policy is not a deterministic function of its inputs "
                                 "(a torch module: dropout in train mode? call module.eval())")
        if "log_prob" in row:
            lp, _ = log_prob(trainer.policy, trainer.path, row["x"], row["x_next"], row["grid_step"],
                             row["grid"], trainer.stochastic, noise_level=trainer.cfg["noise_level"],
                             cond=row["cond"], sde_window=row.get("window"),
                             pcpo_weight=trainer.pcpo_weight)
            diff = float(np.abs(lp.astype(np.float64) - row["log_prob"]).max())
            if diff != 0.0:
                raise AssertionError(f"{trainer.policy!r}, step {i}: log-probabilities differ by {diff:.3g}")
            worst = max(worst, diff)
        rows += len(row["traj"])
    return {"rows": rows, "max_abs_log_ratio": worst}
