"""Reward fine-tuning: rollout -> reward callback -> value-guidance estimate -> RSM objective ->
backward -> AdamW, one iteration per `Trainer.step()` (RSM-SPEC §4-§7, §9, §12.5).

Every method reaches the parameters through the one objective of csrc/objective.h: the loss gives
the cotangent on the model output, the backbone's VJP turns it into parameter gradients.

Where the work runs: the rollout is one C call (csrc/train/rollout.h: a sampler run, or the ODE
root + single-step branches of the redesigns), which calls the reward once per batch from inside
its loop, with the GIL held only during that call (ReFL's reward, taken at a Tweedie jump after
the sampler, and the extra Tweedie-point calls of VGG-Flow / Residual nabla-DB are Python calls);
the whole update (for every block of training rows: the reference forward once per rollout, the
policy forward, the objective, the backward; then the optimizer step of each inner epoch) is one
C call, csrc/train/update.h, with the GIL released. Python builds the group advantages' keys and
the per-row coefficients each preset gives (`_row_coefficients`, RSM-SPEC §12.6) between the two.
Only DRaFT's pathwise backward through the sampler and the lean adjoint of Adjoint Matching run
as Python loops over the model's C VJP.

Iteration k draws all its randomness from Philox streams keyed by (seed, k), the reward is called
before anything changes, and a failing step (reward raises, returns NaN or a wrong shape, the
gradient is not finite) leaves the policy and the optimizer exactly as they were."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kl as _kl
from . import methods as _methods
from .geometry import BatchGeometry, trained_steps, tree_split_steps
from .objective import ROW_FIELDS, group_advantages, objective, row_coefficients
from ._args import as_cond, num_classes_of, seed_int
from .paths import FlowPath, VPPath
from .rewards import Reward
from .sampling import (_core_of, _model_cond, _path_core, _sampler_kind, sample,
                       step_coefficients, time_grid)
from .training import AdamW, History

_MASK64 = (1 << 64) - 1
PCPO_ZETA = 4.3152134639895925  # PCPO's flow reweighting constant (RSM-SPEC §6.3.7)
KL_EVAL_SALT = 0x6B6C5F70617468  # "kl_path": keys path_kl's fixed evaluation seed, apart from
                                 # every training draw (small salts in _mix)


def _mix(seed: int, step: int, salt: int = 0) -> int:
    """A 64-bit rollout seed for iteration `step` (distinct per (seed, step, salt))."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB + 1) & _MASK64


@dataclass
class Run:
    """What rsm.finetune returns: the fine-tuned policy, the per-step history, the trainer."""

    policy: Any
    history: History
    trainer: "Trainer"

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
    guided losses (RSM-SPEC §9).

    KL to the reference, two columns of the history:
      kl       the train-time KL: sum over the rows this method trains (all SDE steps for
               Flow-GRPO, the branch steps of rsm-zo, a random subset for DanceGRPO, none for
               DRaFT) of 0.5 w_i^2 |u_theta - u_ref|^2, w_i = |K_i| / std_i (RSM-SPEC §11), per
               sample, at the rollout states, before the update. It depends on which steps a
               method trains, so it is NOT comparable between methods.
      kl_anchor the same at the ODE KL-anchor rows of the redesigns rsm-zo / rsm-zo-diffusion
               (root states at the steps their budget leaves untrained, trained by the KL only;
               RSM-SPEC §9.2.5, §9.3; the preset keys kl_anchor*); 0 for every other preset.
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
    training run is bitwise the same with or without it."""

    def __init__(self, policy: Any, ref: Any, reward: Any, method: str = "rsm-zo", *,
                 path: Any = None, batch_size: int = 16, group_size: int = 8, seed: int = 0,
                 cond: Any = None, conditions: Any = None, kl_every: int = 5,
                 kl_samples: int | None = None, kl_grid: Any = None,
                 kl_noise_level: float | None = None, **overrides: Any) -> None:
        self.cfg = _methods.get(method, **overrides)
        self.method = method
        self.policy, self.ref = policy, ref
        self.reward = reward if isinstance(reward, Reward) else Reward(reward)
        if path is None:
            path = FlowPath() if self.cfg["path"] == "flow" else VPPath("linear")
        self.path = path
        if self.cfg["path"] not in ("any", self.path.kind):
            raise ValueError(f"method {method!r} runs on the {self.cfg['path']} path; got {self.path!r}")
        if policy.dim != ref.dim:
            raise ValueError(f"policy (dim {policy.dim}) and ref (dim {ref.dim}) differ")
        self.geometry = self._check_geometry(batch_size, group_size)
        if self.cfg["family"] in ("first-order", "pathwise") and not self.reward.differentiable:
            raise ValueError(f"method {method!r} is first-order: the reward must be differentiable "
                             "(rsm.Reward(fn, differentiable=True) returning (rewards, grad))")
        self.batch_size, self.group_size = int(batch_size), int(group_size)
        self.seed = seed_int(seed, "Trainer")
        self._set_conditions(cond, conditions, policy, ref)
        cfg = self.cfg
        self.ts = time_grid(cfg["steps"], self.path, cfg["grid"], cfg["shift"])
        # The stochastic sampler of the method's path: Flow-GRPO's SDE (flow) or DDPM (VP). Its
        # steps define w_i = |K_i| / std_i for the ratio forms and for every method's KL report.
        self.stochastic = "sde" if self.path.kind == "flow" else "ddpm"
        self.deterministic = "ode" if self.path.kind == "flow" else "ddim"
        self.det_coef = step_coefficients(self.path, self.ts, self.deterministic)
        self.pcpo_weight = float(cfg.get("pcpo_weight", 0.0))  # PCPO's DDPM std (RSM-SPEC §6.3.6)
        self.sde = step_coefficients(self.path, self.ts, self.stochastic, noise_level=cfg["noise_level"],
                                     pcpo_weight=self.pcpo_weight)
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
        self._set_kl_eval(kl_every, kl_samples, kl_grid, kl_noise_level)
        if cfg["rollout"] == "branch":
            self._check_kl_anchor()

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

    @property
    def cond(self) -> np.ndarray | None:
        """The conditions of the current iteration, [batch_size, cond_dim] in the model layout."""
        c = self._conditions
        if c is None:
            return None
        if c.shape[0] == self.batch_size:
            return c
        # one block of conditions per rollout micro-batch (gradient accumulation): draw index
        idx = (self._draw * self.batch_size + np.arange(self.batch_size)) % c.shape[0]
        return np.ascontiguousarray(c[idx])

    def reward_cond(self, cond_rows: np.ndarray | None) -> Any:
        """What the reward receives for model-layout condition rows: class ids int64 [n] when the
        conditions were class ids, else the vectors themselves."""
        if cond_rows is None or not self._class_ids:
            return cond_rows
        return np.rint(cond_rows[:, 0]).astype(np.int64)

    # ---- validation -------------------------------------------------------------------------
    def _check_geometry(self, batch_size: int, group_size: int) -> BatchGeometry:
        """The validated batch geometry (rsm.BatchGeometry): conditions x group size x trained
        timesteps x inner epochs x accumulation; impossible combinations raise before any work."""
        return BatchGeometry.from_method(self.cfg, batch_size, group_size, dim=self.policy.dim)

    # ---- one iteration ----------------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """One iteration: `accumulate` rollout micro-batches (each with its reward calls), then
        `inner_epochs` optimizer steps on their summed gradient. A failing reward leaves the
        policy and the optimizer untouched (nothing is updated before every rollout is scored)."""
        evaluation = self._kl_path_columns()   # before the clock: evaluation is not training time
        start = time.perf_counter()
        k = self.geometry.accumulate
        batches = [self.rollout(micro=j) for j in range(k)]
        scores = [self._step_scores(b) for b in batches]
        rewards = np.concatenate([r for r, _ in scores])
        valid = np.concatenate([v for _, v in scores])
        stats = self.update(batches)
        self.iteration += 1
        extra_nfe = self._step_extra_nfe()
        row = {"step": self.iteration - 1,
               "reward_mean": float(rewards[valid].mean()) if valid.any() else float("nan"),
               "reward_std": float(rewards[valid].std()) if valid.any() else float("nan"),
               "skipped_rows": int((~valid).sum()),
               "reward_calls": sum(b.get("reward_calls", 1) for b in batches),
               "rollout_nfe": sum(int(b["nfe"]) + int(b.get("adjoint_nfe", 0)) for b in batches),
               **extra_nfe, "seconds": time.perf_counter() - start, **stats, **evaluation}
        row["nfe"] = row["rollout_nfe"] + row["train_nfe"] + sum(extra_nfe.values())
        self.history.append(row)
        return row

    # hooks of step() for subclasses (rsm.auxiliary.AuxTrainer)
    def _step_scores(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, valid) of a rollout's own samples, for the history's reward statistics."""
        return batch["rewards"], batch["valid"]

    def _step_extra_nfe(self) -> dict[str, int]:
        """Extra network-evaluation columns of the step (after rollout_nfe), added to nfe."""
        return {}

    # ---- path KL to the reference (evaluation, RSM-SPEC §11) ----------------------------------
    def _set_kl_eval(self, kl_every: Any, kl_samples: Any, kl_grid: Any, kl_noise_level: Any) -> None:
        if isinstance(kl_every, bool) or not isinstance(kl_every, (int, np.integer)) or kl_every < 0:
            raise ValueError(f"Trainer(): kl_every={kl_every!r} must be a non-negative int "
                             "(evaluate kl_path every kl_every iterations; 0: never)")
        self.kl_every = int(kl_every)
        if kl_samples is None:
            kl_samples = min(256, self.batch_size * self.group_size)
        self.kl_samples = _kl.check_samples(kl_samples, "Trainer", "kl_samples")
        self.kl_grid = self.ts if kl_grid is None else _kl.check_grid(kl_grid, "Trainer", "kl_grid")
        if kl_noise_level is None:
            kl_noise_level = self.cfg["noise_level"]
        self.kl_noise_level = _kl.check_noise_level(kl_noise_level, "Trainer", "kl_noise_level")
        # one seed for every evaluation: common random numbers along the run and across methods
        self.kl_seed = _mix(self.seed, 0, KL_EVAL_SALT)

    def _kl_cond(self, n: int) -> np.ndarray | None:
        """Fixed evaluation conditions: condition j mod M for trajectory j, whatever the iteration."""
        c = self._conditions
        return None if c is None else np.ascontiguousarray(c[np.arange(n) % c.shape[0]])

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
        n = self.kl_samples if n is None else _kl.check_samples(n, "path_kl", "n")
        terms, _ = self._path_kl_terms(n, seed, ts, noise_level)
        return terms if per_step else float(terms.sum())

    def _path_kl_terms(self, n: int, seed: int | None = None, ts: Any = None,
                       noise_level: float | None = None) -> tuple[np.ndarray, int]:
        """rsm.kl.path_kl_terms with the trainer's sampler and conditions; None: the defaults."""
        return _kl.path_kl_terms(self.policy, self.ref, self.path, self.kl_grid if ts is None else ts,
                                 n, sampler=self.stochastic,
                                 noise_level=self.kl_noise_level if noise_level is None else noise_level,
                                 seed=self.kl_seed if seed is None else seed, cond=self._kl_cond(n))

    def _kl_path_columns(self) -> dict[str, Any]:
        """The evaluation columns of the current iteration's history row (kl_every)."""
        if self.kl_every == 0 or self.iteration % self.kl_every:
            return {"kl_path": float("nan"), "eval_nfe": 0, "eval_seconds": 0.0}
        start = time.perf_counter()
        terms, nfe = self._path_kl_terms(self.kl_samples)
        return {"kl_path": float(terms.sum()), "eval_nfe": nfe, "eval_seconds": time.perf_counter() - start}

    # ---- rollouts ---------------------------------------------------------------------------
    def _train_steps(self, steps: int) -> list[int]:
        """The trained transitions: "all", "interior" (all but the first), "no_last", a fraction
        (a seeded random subset per rollout, as DanceGRPO's timestep subsampling) or a list."""
        spec = trained_steps(self.cfg.get("train_steps", "all"), steps)
        if isinstance(spec, float):
            count = max(1, int(round(spec * (steps - 1))))
            from . import _C

            u = np.from_dlpack(_C.random("uniform", _mix(self.seed, self._draw, 11), 0, 0, steps, "float64"))
            # DanceGRPO-style subsampling among the trainable steps (not the last one)
            return sorted(int(i) for i in np.argsort(u[: steps - 1])[:count])
        return spec

    def _cond_rows(self, repeat: int) -> Any:
        cond = self.cond
        return None if cond is None else np.ascontiguousarray(np.repeat(cond, repeat, axis=0))

    def _rollout_sde(self) -> dict[str, Any]:
        """Full SDE trajectories (Flow-GRPO, DDPO, DanceGRPO): every step trainable."""
        cfg, n = self.cfg, self.batch_size * self.group_size
        cond = self._cond_rows(self.group_size)
        x_init = None
        if cfg.get("shared_noise", False):  # DanceGRPO: one initial noise per group
            from . import _C

            z = np.from_dlpack(_C.random("normal", _mix(self.seed, self._draw, 7), 0, 0,
                                         self.batch_size * self.policy.dim, self.policy.dtype))
            x_init = np.repeat(z.reshape(self.batch_size, self.policy.dim), self.group_size, axis=0)
        traj = sample(self.policy, n, self.path, self.stochastic, ts=self.ts,
                      noise_level=cfg["noise_level"], seed=_mix(self.seed, self._draw),
                      cond=cond, x_init=x_init, return_trajectory=True,
                      pcpo_weight=self.pcpo_weight, reward=self._reward_hook(cond))
        steps = self._train_steps(traj.steps)
        rows = [{"step": i, "x": traj.xs[i], "x_next": traj.xs[i + 1], "u_old": traj.outputs[i],
                 "noise": traj.noises[i], "traj": np.arange(n), "cond": cond, "weight": 1.0,
                 "log_prob": traj.log_probs[i].astype(np.float64), "grid": self.ts, "grid_step": i}
                for i in steps if traj.stds[i] > 0]
        return {"x0": traj.x, "keys": np.arange(n) // self.group_size, "rows": rows,
                "nfe": traj.nfe, "cond_x0": cond, "states": traj.xs, "scored": traj.reward}

    def _rollout_branch(self) -> dict[str, Any]:
        """ODE root per condition, then k_i single-step SDE branches from the root state at t_i,
        each continued by the ODE to t = 0 (stochasticity localisation, RSM-SPEC §9.2.1): one C
        call (csrc/train/rollout.h), which calls the reward once on every branch end. The one
        stochastic step is the method's (PCPO's std when pcpo_weight > 0: the SD1.5 redesign,
        RSM-SPEC §9.3), the same step self.sde[i] weighs in the loss."""
        from . import _C

        cfg, roots = self.cfg, self.batch_size
        cond_root = self.cond
        steps = cfg["steps"]
        budget = list(cfg["budget"]) + [0] * (steps - len(cfg["budget"]))
        active = [k for k in budget if k > 0]
        k_avg = sum(active) / len(active)
        cond_rows = {k: self._cond_rows(k) for k in set(active)}   # None when unconditional
        cond_x0 = None if cond_root is None else np.concatenate([cond_rows[k] for k in active])
        det_kind, det_eta = _sampler_kind(self.deterministic, None)
        sto_kind, sto_eta = _sampler_kind(self.stochastic, None)
        out = _C.branch_rollout(_core_of(self.policy), _path_core(self.path, "finetune"),
                                np.ascontiguousarray(self.ts),
                                roots, det_kind, sto_kind, np.asarray(budget, dtype=np.int64),
                                np.array([_mix(self.seed, self._draw, i + 1) for i in range(steps)],
                                         dtype=np.uint64),
                                seed=_mix(self.seed, self._draw), root_eta=det_eta,
                                branch_eta=sto_eta, noise_level=float(cfg["noise_level"]),
                                pcpo_weight=self.pcpo_weight,
                                cond=_model_cond(self.policy, cond_root, roots, "finetune"),
                                reward=self._reward_hook(cond_x0))
        root_xs = np.from_dlpack(out["root_xs"])
        x_next, u_old, noise, log_prob = (np.from_dlpack(out[k]) for k in
                                          ("x_next", "outputs", "noises", "log_probs"))
        keys, rows = [], []
        offset = 0
        for i, k in enumerate(budget):
            if k == 0:
                continue
            n_rows = roots * k
            sel = slice(offset, offset + n_rows)
            keys.append(np.arange(n_rows) // k + i * roots)   # group = (root, t_i)
            rows.append({"step": i, "x": np.repeat(root_xs[i], k, axis=0), "x_next": x_next[sel],
                         "u_old": u_old[sel], "noise": noise[sel],
                         "traj": offset + np.arange(n_rows),
                         "cond": cond_rows[k], "weight": k_avg / k,
                         "log_prob": log_prob[sel].astype(np.float64),
                         "grid": self.ts[i:], "grid_step": 0, "window": (0, 1)})
            offset += n_rows
        return {"x0": np.from_dlpack(out["x0"]), "keys": np.concatenate(keys), "rows": rows,
                "nfe": int(out["nfe"]), "cond_x0": cond_x0, "scored": out["reward"],
                "anchor_rows": self._kl_anchor_rows(root_xs, budget, offset, k_avg)}

    def _kl_anchor_beta(self) -> float:
        beta = self.cfg.get("kl_anchor", 0.0)
        return float(self.cfg["kl"] if beta is None else beta)

    def _check_kl_anchor(self) -> None:
        """The KL-anchor keys of a branch preset (rsm.methods), checked before any work."""
        cfg = self.cfg
        beta = self._kl_anchor_beta()
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"Trainer(): kl_anchor={cfg.get('kl_anchor')!r} must be a finite "
                             "beta >= 0 (or None: the preset's kl)")
        weight = cfg.get("kl_anchor_weight", "sampler")
        if weight != "sampler" and (isinstance(weight, (bool, str)) or
                                    not isinstance(weight, (int, float, np.floating, np.integer)) or
                                    not np.isfinite(weight) or weight <= 0):
            raise ValueError(f"Trainer(): kl_anchor_weight={weight!r} must be 'sampler' "
                             "(|K_i| / std_i) or a finite number > 0")
        if cfg.get("kl_anchor_reduce", "k_avg") not in ("k_avg", "mean"):
            raise ValueError(f"Trainer(): kl_anchor_reduce={cfg.get('kl_anchor_reduce')!r} must "
                             "be 'k_avg' or 'mean'")
        ratio = cfg.get("kl_anchor_max_ratio")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating))
                                  or not 0.0 <= ratio <= 1.0):
            raise ValueError(f"Trainer(): kl_anchor_max_ratio={ratio!r} must be None or in [0, 1]")

    def _kl_anchor_rows(self, root_xs: np.ndarray, budget: list, transition_rows: int,
                        k_avg: float) -> list:
        """The ODE KL-anchor rows of a branch rollout (RSM-SPEC §9.2.5, §9.3): the root states
        x_{t_i} at the budget's k_i = 0 transitions (i < len(preset budget), never the last
        transition), which no branch trains. With kl_anchor_max_ratio r, at most
        max(1, int(r * transition_rows)) (root, step) pairs, a random subset drawn from the
        rollout's own stream. One row dict per anchor step; "weight" is the per-row weight of
        kl_anchor_reduce "k_avg" (the "mean" weight needs the update's normalizer)."""
        cfg = self.cfg
        if self._kl_anchor_beta() == 0.0:
            return []
        last = min(len(cfg["budget"]), cfg["steps"] - 1)
        steps = [i for i in range(last) if budget[i] == 0 and self.sde[i]["std"] > 0]
        keep = np.ones((len(steps), self.batch_size), dtype=bool)   # (anchor step, root)
        ratio = cfg.get("kl_anchor_max_ratio")
        if ratio is not None and keep.size:
            target = max(int(transition_rows * ratio), 1) if ratio > 0 else 0
            if target < keep.size:
                from . import _C

                u = np.from_dlpack(_C.random("uniform", _mix(self.seed, self._draw, 17), 0, 0,
                                             keep.size, "float64"))
                keep = np.zeros(keep.size, dtype=bool)
                keep[np.argsort(u, kind="stable")[:target]] = True
                keep = keep.reshape(len(steps), self.batch_size)
        cond = self.cond
        rows = []
        for i, roots in zip(steps, keep):
            if not roots.any():
                continue
            rows.append({"step": i, "x": np.ascontiguousarray(root_xs[i][roots]),
                         "cond": None if cond is None else np.ascontiguousarray(cond[roots]),
                         "weight": k_avg, "anchor": True})
        return rows

    def _rollout_tree(self) -> dict[str, Any]:
        """Branch-GRPO's tree (RSM-SPEC §6.3.8, §7.2): SDE steps everywhere; before each of the
        `split` evenly spaced split steps every node splits into `branch` children, which share
        the node's state (the C sampler's branching). Training rows are the distinct transitions
        (node at t_i -> child at t_{i+1}) of the trained steps less the depth-pruned ones
        (rsm.tree); row["traj"] indexes the child nodes, whose advantages `rollout` derives from
        their descendant leaves (`_tree_advantages`)."""
        from .tree import depth_pruned_steps

        cfg, roots = self.cfg, self.batch_size
        splits = tree_split_steps(cfg["steps"], cfg["split"])
        leaves = roots * cfg["branch"] ** len(splits)
        cond_leaf = self._cond_rows(leaves // roots)
        traj = sample(self.policy, roots, self.path, self.stochastic, ts=self.ts,
                      noise_level=cfg["noise_level"], seed=_mix(self.seed, self._draw),
                      cond=self.cond, branch_steps=splits, branch_factor=cfg["branch"],
                      return_trajectory=True, pcpo_weight=self.pcpo_weight,
                      reward=self._reward_hook(cond_leaf))
        assert traj.x.shape[0] == leaves
        distinct = [int(r) for r in traj.rows]          # distinct states at each t_d
        offsets = np.concatenate([[0], np.cumsum(distinct)])  # node ids: offsets[d] + j
        pruned = depth_pruned_steps(cfg, splits, self.iteration)
        # log-probability of the transition into every node at depth i + 1 (path-probability
        # fusion), per element when the preset averages over the dimensions
        per_dim = self.policy.dim if cfg["mean_over_dims"] else 1
        # one representative leaf row per node at depth i + 1
        reps = [np.arange(distinct[i + 1]) * (leaves // distinct[i + 1]) for i in range(traj.steps)]
        edge_log_prob = [traj.log_probs[i][idx].astype(np.float64) / per_dim
                         for i, idx in enumerate(reps)]
        rows = []
        for i in self._train_steps(traj.steps):
            if not traj.stds[i] > 0 or i in pruned:
                continue
            n_nodes, idx = distinct[i + 1], reps[i]
            rows.append({"step": i, "x": traj.xs[i][idx], "x_next": traj.xs[i + 1][idx],
                         "u_old": traj.outputs[i][idx], "noise": traj.noises[i][idx],
                         "traj": offsets[i + 1] + np.arange(n_nodes),
                         "cond": None if cond_leaf is None else cond_leaf[idx], "weight": 1.0,
                         "log_prob": traj.log_probs[i][idx].astype(np.float64), "grid": self.ts,
                         "grid_step": i})
        return {"x0": traj.x, "keys": None, "rows": rows, "nfe": traj.nfe, "cond_x0": cond_leaf,
                "scored": traj.reward, "tree": {"distinct": distinct, "offsets": offsets, "roots": roots,
                         "splits": splits, "edge_log_prob": edge_log_prob}}

    def _tree_advantages(self, batch: dict, rewards: np.ndarray, valid: np.ndarray):
        """Node advantages of a Branch-GRPO tree (rsm.tree): node rewards fused from the valid
        leaves ("fusion": mean of the descendant leaves, or the authors' path-probability
        weighting), normalised among the nodes of the same (root, depth) ("adv_std"; clipped,
        zero-std masked); then width pruning drops transitions after the last split from
        batch["rows"]. Returns (adv, mask, node_valid) over all nodes (ids offsets[d] + j)."""
        from .tree import depth_advantages, fuse_rewards, width_kept

        cfg, tree = self.cfg, batch["tree"]
        node_r, node_ok = fuse_rewards(tree["distinct"], rewards, valid, cfg.get("fusion", "mean"),
                                       tree["edge_log_prob"])
        adv, mask = depth_advantages(node_r, node_ok, tree["roots"], eps=cfg["adv_eps"],
                                     adv_clip=cfg["adv_clip"],
                                     adv_std=cfg.get("adv_std", "population"))
        node_ok = np.concatenate(node_ok)
        rows = batch["rows"]
        if cfg.get("width_pruning", 0) and rows:
            keep = width_kept([r["step"] for r in rows],
                              [r["traj"] - tree["offsets"][r["step"] + 1] for r in rows],
                              [adv[r["traj"]] for r in rows], max(tree["splits"]),
                              cfg["width_pruning"], cfg.get("width_pruning_ratio", 0.5))
            pruned = []
            for r, k in zip(rows, keep):
                if k.all():
                    pruned.append(r)
                elif k.any():
                    pruned.append({**r, **{f: r[f][k] for f in
                                           ("x", "x_next", "u_old", "noise", "traj", "log_prob")},
                                   "cond": None if r["cond"] is None else r["cond"][k]})
            batch["rows"] = pruned
        return adv, mask & node_ok, node_ok

    def _rollout_refl(self) -> dict[str, Any]:
        """ReFL: the ODE from t = 1 down to a random step i among the last `late_steps` (one i per
        rollout, seeded), then one Tweedie jump x0_hat(x_{t_i}, u(x_{t_i})); the reward is taken
        at x0_hat and the training row is that single network call."""
        cfg, n = self.cfg, self.batch_size * self.group_size
        steps, late = cfg["steps"], cfg["late_steps"]
        from . import _C

        u01 = float(np.from_dlpack(_C.random("uniform", _mix(self.seed, self._draw, 13), 0, 0, 1, "float64"))[0])
        i = steps - late + min(int(u01 * late), late - 1)
        cond = self._cond_rows(self.group_size)
        traj = sample(self.policy, n, self.path, self.deterministic, ts=self.ts[: i + 1], cond=cond,
                      seed=_mix(self.seed, self._draw), return_trajectory=True)
        x = np.ascontiguousarray(traj.x)
        u = np.from_dlpack(self.policy.forward(x, self.ts[i], cond))
        x0_hat = np.from_dlpack(self.path.x0_hat(x, u, np.full(n, self.ts[i])))
        rows = [{"step": i, "x": x, "u_old": u, "traj": np.arange(n), "cond": cond, "weight": 1.0}]
        return {"x0": np.ascontiguousarray(x0_hat), "keys": None, "rows": rows,
                "nfe": traj.nfe + n, "cond_x0": cond}

    def _rollout_ode(self) -> dict[str, Any]:
        """ODE trajectories (first-order methods): the states of every step are training rows."""
        n = self.batch_size * self.group_size
        cond = self._cond_rows(self.group_size)
        traj = sample(self.policy, n, self.path, self.deterministic, ts=self.ts, cond=cond,
                      seed=_mix(self.seed, self._draw), return_trajectory=True,
                      reward=self._reward_hook(cond))
        steps = self._train_steps(traj.steps)
        rows = [{"step": i, "x": traj.xs[i], "u_old": traj.outputs[i], "traj": np.arange(n),
                 "cond": cond, "weight": 1.0} for i in steps]
        return {"x0": traj.x, "keys": None, "rows": rows, "nfe": traj.nfe, "cond_x0": cond,
                "scored": traj.reward}

    # ---- the objective ----------------------------------------------------------------------
    def _row_coefficients(self, row: dict, batch: dict, n: int) -> tuple[np.ndarray, str, dict]:
        cfg, i = self.cfg, row["step"]
        c = self.sde[i]
        t, dt, std = c["t"], c["dt"], c["std"]
        # a deterministic last step (VP into t = 0: std = 0) has no density and is never a
        # zeroth-order row; first-order rows only use w for the KL report
        w = abs(c["K"]) / std if std > 0 else 0.0
        mask = batch["mask"][row["traj"]].astype(np.float64)
        # tree rollouts: rows are nodes, with their own validity (any valid leaf below)
        valid = batch.get("row_valid", batch["valid"])[row["traj"]].astype(np.float64)
        if cfg["estimator"] == "refl":
            # ReFL: L = -lambda mean r(x0_hat(u)); at the current outputs its cotangent is
            # -lambda (d x0_hat / du) g / n, written as the RSM loss (1/2)|u - (sg(u) + Psi)|^2
            # with Psi = lambda (d x0_hat / du) g in output units (conv = 1; the gamma -> inf
            # pathwise limit of RSM-SPEC §6.3.11): its gradient at u = sg(u) is -Psi.
            p_u = float(np.from_dlpack(self.path.x0_hat(np.zeros((1, 1)), np.ones((1, 1)),
                                                        np.full(1, t)))[0, 0])
            psi = (cfg["reward_scale"] * p_u * batch["grad"][row["traj"]]).astype(self.policy.dtype)
            coef = row_coefficients(n, conv=1.0, c1=0.5, gamma=1.0, w=w, weight=valid * row["weight"])
            return coef, "score_matching", {"psi": psi, "anchor_current": True}
        if cfg["family"] == "first-order":
            lam = cfg["reward_scale"]
            if cfg["estimator"] == "fo-next" and "discount" in cfg:
                # SQDF (RSM-SPEC §6.3.2): per row alpha KL_i - gamma_d Q(x'), x' = mu_theta + std z,
                # gradient [alpha (mu - mu_ref)/std^2 - gamma_d grad Q(x')] dmu/dtheta, i.e. the
                # loss (alpha/(2 std^2)) |mu - mu_ref - (std^2 gamma_d/alpha) grad Q|^2; with
                # mu - mu_ref = K (u - u_ref): C1 = alpha K^2/(2 std^2), Psi = std^2 gamma_d/(alpha K) g
                K, alpha = c["K"], cfg["alpha"]
                discount = cfg["discount"] ** (len(self.ts) - 2 - i)
                g = batch["grad_rows"][row["index"]]
                psi = (std**2 * discount * lam / (alpha * K) * g).astype(self.policy.dtype)
                coef = row_coefficients(n, conv=1.0, c1=alpha * K**2 / (2 * std**2), gamma=1.0,
                                        w=w, weight=valid * row["weight"])
                return coef, "score_matching", {"psi": psi}
            if cfg["estimator"] in ("fo-residual", "fo-next"):
                # forward residual (RSM-SPEC §6.3.3, §12.5): R = kappa (mu - mu_ref)/std^2 - lambda a g
                # with mu - mu_ref = K (eps - eps_ref):
                #   |R|^2 = (kappa K/std^2)^2 |d eps - lambda a std^2/(kappa K) g|^2,
                # plus reg |eps - eps_old|^2 = C1 C2 |.|^2 (the trust region toward theta_old).
                # Residual nabla-DB: kappa = 1, a = alpha_bar(t'), g at the next state (FO-next);
                # the redesign: kappa = a = std, g = grad r(x0) at the rollout's end.
                K = c["K"]
                kappa = std if cfg.get("kappa", "sigma") == "sigma" else 1.0
                if cfg.get("adaptive", "sigma") == "sigma":
                    a_t = std
                else:  # "alpha_bar_next": alpha_bar(t') = alpha(t')^2 of the VP path
                    a_t = self.path.coef(c["t_next"])["alpha"] ** 2
                c1 = (kappa * K / std**2) ** 2
                g = (batch["grad_rows"][row["index"]] if cfg["estimator"] == "fo-next"
                     else batch["grad"][row["traj"]])
                psi = (lam * a_t * std**2 / (kappa * K) * g).astype(self.policy.dtype)
                coef = row_coefficients(n, conv=1.0, c1=c1, gamma=1.0, c2=cfg["reg"] / c1, w=w,
                                        weight=valid * row["weight"])
                return coef, "score_matching", {"psi": psi, "u_old": row["u_old"]}
            if cfg["estimator"] == "fo-adjoint":
                # Adjoint Matching in RSM form: |s_theta - (s_ref + Psi)|^2 with C1 = g(t)^2 =
                # 2t/(1-t) (the memoryless noise), v = conv s + (x terms), conv = -t/(1-t)
                conv = -t / (1 - t)
                psi = batch["adjoint"][i][row["traj"]].astype(self.policy.dtype)
                coef = row_coefficients(n, conv=conv, c1=2 * t / (1 - t), gamma=1.0, w=w,
                                        weight=valid * row["weight"])
                return coef, "score_matching", {"psi": psi}
            eta = (1 - t) if cfg["eta"] == "linear" else (1 - t) ** 2
            g = batch["grad_rows"][row["index"]] if cfg["estimator"] == "fo-tweedie" else batch["grad"][row["traj"]]
            # velocity regression written as the RSM loss with conv = 1 (the score difference
            # scaled into velocity units, RSM-SPEC L6): C1 = 1, gamma Psi = -lambda eta(t) g
            psi = (-lam * eta * g).astype(self.policy.dtype)
            coef = row_coefficients(n, conv=1.0, c1=1.0, gamma=1.0, kl=0.0, w=w,
                                    weight=valid * row["weight"])
            return coef, "score_matching", {"psi": psi}
        # rows without signal (zero-std group) keep A = 0: no policy gradient, but their KL
        # anchor still counts; rows with an invalid reward are dropped entirely
        adv = batch["adv"][row["traj"]] * mask
        sigma_tilde = std / np.sqrt(dt)
        reweight = cfg.get("reweight", "base")
        term_scale, post, ratio_scale = 1.0, 1.0, 1.0
        if reweight == "fairclip2":          # RSM-SPEC §9.2.3
            term_scale = sigma_tilde**2 * dt
            post = sigma_tilde / (np.sqrt(dt) * sigma_tilde**2 * dt)
            ratio_scale = sigma_tilde**2 * dt
        elif reweight == "fairclip":
            term_scale = sigma_tilde**2 * dt
            post = 1.0 / (sigma_tilde**2 * dt)
            ratio_scale = sigma_tilde**2 * dt
        elif reweight == "tempflow":
            term_scale = 2.25 * sigma_tilde * np.sqrt(dt)
            post = 1.0 if cfg["form"] == "matching" else term_scale
            if cfg["form"] != "matching":
                term_scale = 1.0
        elif reweight == "pcpo":   # w' = zeta dt in the log-ratio (RSM-SPEC §6.3.7)
            w_prime = PCPO_ZETA * dt
            if cfg["form"] == "matching":
                w = w_prime
            else:
                ratio_scale = w_prime / w
        elif reweight == "constant":  # PCPO-reweight (diffusion): w' = const in log rho (§6.3.6)
            w_prime = cfg["loss_weight"]
            if cfg["form"] == "matching":
                w = w_prime
            else:
                ratio_scale = w_prime / w
        elif reweight == "guard":  # GRPO-Guard: RatioNorm (linear part, x std) and 1/dt
            post = 1.0 / dt
            if cfg["form"] == "matching":
                term_scale = sigma_tilde * np.sqrt(dt)
            else:
                ratio_scale = std
        elif reweight != "base":
            raise ValueError(f"unknown reweight {reweight!r}")
        w_kl = abs(c["K"]) / std   # the KL anchor always uses the sampler's true weight
        coef = row_coefficients(n, adv=adv, w=w, ratio_scale=ratio_scale, term_scale=term_scale,
                                post=post, clip_eps=cfg["clip_eps"], kl=cfg["kl"], w_kl=w_kl,
                                weight=valid * row["weight"])
        return coef, cfg["form"], {"noise": row["noise"], "u_old": row["u_old"]}

    def normalizer(self, batch: dict) -> float:
        """The masked-mean denominator of RSM-SPEC §9.2.3: the number of trained rows that carry
        a signal (valid reward, non-zero-std group), at least 1. Row weights (k_avg / k_i) scale
        the rows but not the denominator."""
        return max(self._signal_rows(batch), 1.0)

    @staticmethod
    def _signal_rows(batch: dict) -> float:
        return sum(float(batch["mask"][row["traj"]].sum()) for row in batch["rows"])

    def _anchor_coefficients(self, row: dict, batch: dict, n: int, normalizer: float,
                             n_batches: int) -> tuple[np.ndarray, str, dict]:
        """A KL-anchor row (RSM-SPEC §9.2.5, §9.3): no policy term (C1 = 0), only
        beta (w^2 / 2) mean|u - u_ref|^2, per row weight k_avg ("k_avg": the row counts in the
        masked mean like a trained transition) or normalizer / (anchor rows x micro-batches)
        ("mean": beta times the micro-batch's mean over its anchor rows, micro-batches averaged)."""
        cfg = self.cfg
        w = self._anchor_kl_weight(row["step"])
        if cfg.get("kl_anchor_reduce", "k_avg") == "mean":
            count = sum(len(r["x"]) for r in batch["anchor_rows"])
            weight = normalizer / (count * n_batches)
        else:
            weight = row["weight"]
        coef = row_coefficients(n, c1=0.0, kl=self._kl_anchor_beta(), w=w, w_kl=w, weight=weight)
        return coef, "score_matching", {}

    def _anchor_kl_weight(self, step: int) -> float:
        """w of a KL-anchor row at `step`: the sampler's |K| / std, or the preset's constant."""
        w = self.cfg.get("kl_anchor_weight", "sampler")
        c = self.sde[step]
        return abs(c["K"]) / c["std"] if w == "sampler" else float(w)

    def _update_blocks(self, batch: dict, normalizer: float = 1.0, n_batches: int = 1) -> list[dict]:
        """The blocks of the C update (csrc/train/update.h), one per training row of `batch` and
        then one per KL-anchor row (branch rollouts): the states, the per-row objective
        coefficients the preset gives (`_row_coefficients`, `_anchor_coefficients`) and what the
        form reads. The reference outputs' buffer lives in the row, so the reference is
        evaluated once per rollout however many inner epochs and calls follow."""
        policy = self.policy
        blocks = []
        for row in batch["rows"] + batch.get("anchor_rows", []):
            i = row["step"]
            x = np.ascontiguousarray(row["x"], dtype=policy.dtype)
            n = x.shape[0]
            anchor = bool(row.get("anchor", False))
            if anchor:
                coef, form, extra = self._anchor_coefficients(row, batch, n, normalizer, n_batches)
            else:
                coef, form, extra = self._row_coefficients(row, batch, n)
            if "u_ref" not in row:
                row["u_ref"], row["u_ref_ready"] = np.empty_like(x), False
            c = self.sde[i]
            # the train-time KL of this step (history "kl"; RSM-SPEC §11): per sample
            # (1/2) w^2 |u - u_ref|^2, w = |K| / std, on the trained rows only (kl_path is the
            # comparable whole-path KL)
            if anchor:
                w = self._anchor_kl_weight(i)
            else:
                w = abs(c["K"]) / c["std"] if c["std"] > 0 else 0.0
            blocks.append({"form": form, "anchor": anchor, "t": float(self.ts[i]), "x": x,
                           "cond": _model_cond(policy, row["cond"], n, "finetune"), "coef": coef,
                           "u_old": extra.get("u_old"), "psi": extra.get("psi"),
                           "noise": extra.get("noise"), "u_ref": row["u_ref"],
                           "ref_ready": row["u_ref_ready"],
                           # ReFL anchors on the current outputs themselves (stop-gradient)
                           "anchor_current": bool(extra.get("anchor_current", False)),
                           "kl_report": 0.5 * w * w})
        return blocks

    def _run_update(self, batches: list, normalizer: float, epochs: int) -> tuple[list, dict]:
        """One C call over the training rows of all `batches`: the gradient (epochs = 0) or
        `epochs` optimizer steps (all or nothing). Returns (blocks per batch, the C result)."""
        from . import _C

        per_batch = [self._update_blocks(b, normalizer, len(batches)) for b in batches]
        blocks = [blk for bl in per_batch for blk in bl]
        opt = self.optimizer
        result = _C.train_update(self.policy._core, self.ref._core, self.path._core, blocks,
                                 float(normalizer), linear_only=self.cfg.get("reweight") == "guard",
                                 mean_over_dims=bool(self.cfg["mean_over_dims"]),
                                 opt=opt._core if epochs else None, epochs=int(epochs),
                                 lr=opt.config["lr"])
        for b in batches:   # the reference outputs are now in every row's buffer
            for row in b["rows"] + b.get("anchor_rows", []):
                row["u_ref_ready"] = True
        return per_batch, result

    def _block_stats(self, batches: list, per_batch: list, loss, kl, clip) -> dict:
        """The step statistics of one epoch from the per-block loss, KL and clip fractions."""
        stats = {"loss": 0.0, "kl": 0.0, "kl_anchor": 0.0, "clip_fraction_per_step": {}}
        k = 0
        for b, blocks in zip(batches, per_batch):
            # the KL-anchor blocks follow the row blocks: their loss counts, their KL is reported
            # apart ("kl_anchor") and they clip nothing
            anchors = range(k + len(b["rows"]), k + len(blocks))
            stats["kl_anchor"] += float(sum(kl[j] for j in anchors)) / len(batches)
            stats["loss"] += float(sum(loss[j] for j in anchors))
            rows = range(k, k + len(b["rows"]))
            k += len(blocks)
            if self.cfg["estimator"] == "refl":  # ReFL's own loss, -lambda mean r(x0_hat)
                ok = b["valid"]
                stats["loss"] += float(-self.cfg["reward_scale"] * b["rewards"][ok].mean()) if ok.any() else 0.0
            else:
                stats["loss"] += float(sum(loss[j] for j in rows))
            stats["kl"] += float(sum(kl[j] for j in rows)) / len(batches)
            for j, row in zip(rows, b["rows"]):
                stats["clip_fraction_per_step"].setdefault(row["step"], []).append(float(clip[j]))
        stats["clip_fraction_per_step"] = {s: float(np.mean(v))
                                           for s, v in stats["clip_fraction_per_step"].items()}
        return stats

    def loss_and_grad(self, batch: dict, normalizer: float | None = None) -> tuple[np.ndarray, dict]:
        """The objective over all training rows of `batch` at the current policy parameters:
        (flat parameter gradient, stats). Nothing is updated."""
        cfg = self.cfg
        if cfg["family"] == "pathwise" and cfg["estimator"] == "pathwise":
            return self._pathwise_grad(batch)
        normalizer = self.normalizer(batch) if normalizer is None else normalizer
        per_batch, out = self._run_update([batch], normalizer, epochs=0)
        stats = self._block_stats([batch], per_batch, np.from_dlpack(out["loss"]),
                                  np.from_dlpack(out["kl"]), np.from_dlpack(out["clip_fraction"]))
        stats["train_nfe"] = int(out["nfe"])
        return np.from_dlpack(out["grads"]), stats

    def _lean_adjoint(self, batch: dict) -> dict[int, np.ndarray]:
        """The discrete lean adjoint of Adjoint Matching (Domingo-Enrich et al. 2024):
        a_S = grad r(x0) / alpha, a_i = A_i a_{i+1} + J_ref(x_i)^T (K_i a_{i+1}), i.e. the VJP
        of the reference sampler's mean map along the sampled trajectory (the control's own
        dependence dropped: "lean"). Returns {step: a_i [n, D]} in score units."""
        ref, dtype = self.ref, self.policy.dtype
        a = (batch["grad"] / self.cfg["alpha"]).astype(dtype)
        adjoint = {}
        states = batch["states"]
        for i in range(len(self.ts) - 2, -1, -1):
            c = self.sde[i]
            _, dx, _ = ref.forward_and_vjp(states[i], self.ts[i], np.ascontiguousarray(c["K"] * a),
                                           batch.get("cond_x0"))
            a = (c["A"] * a + np.from_dlpack(dx)).astype(dtype)
            adjoint[i] = a
        batch["adjoint_nfe"] = 2 * states[0].shape[0] * (len(self.ts) - 1)
        return adjoint

    def _pathwise_grad(self, batch: dict) -> tuple[np.ndarray, dict]:
        """DRaFT-K: L = -mean r(x0) with x0 from the last K sampler steps differentiated and the
        earlier states held fixed. Backward through x_{i+1} = A x_i + K u(x_i): the adjoint
        a_i = A a_{i+1} + J_x^T (K a_{i+1}), dtheta += J_theta^T (K a_{i+1})."""
        policy, rows = self.policy, batch["rows"]
        n = batch["x0"].shape[0]
        a = (-batch["grad"] / n).astype(policy.dtype)     # dL / dx0
        grads = np.zeros(policy.num_params, dtype=policy.dtype)
        nfe = 0
        for row in reversed(rows[-self.cfg["truncation"]:]):
            c = self.det_coef[row["step"]]
            t = self.ts[row["step"]]
            ct = np.ascontiguousarray((c["K"] * a).astype(policy.dtype))
            _, dx, dparams = policy.forward_and_vjp(row["x"], t, ct, row["cond"])
            grads += np.from_dlpack(dparams)
            a = (c["A"] * a + np.from_dlpack(dx)).astype(policy.dtype)
            nfe += 2 * n
        return grads, {"loss": float(-batch["rewards"][batch["valid"]].mean()), "kl": 0.0,
                       "train_nfe": nfe, "clip_fraction_per_step": {}}

    def update(self, batches: list) -> dict[str, Any]:
        """`inner_epochs` optimizer steps, each on the gradient summed over the rollout
        micro-batches `batches` (gradient accumulation) under ONE masked-mean normalizer: the
        total number of signal rows of all micro-batches, so k micro-batches give the update of
        one batch holding the same rows. Every method but the pathwise DRaFT runs all its epochs
        in one C call (csrc/train/update.h); a failure in any epoch leaves the policy and the
        optimizer as they were. Returns the step statistics."""
        if isinstance(batches, dict):
            batches = [batches]
        cfg = self.cfg
        epochs = int(cfg["inner_epochs"])
        normalizer = max(sum(self._signal_rows(b) for b in batches), 1.0)
        stats = {"train_nfe": 0, "rows": int(sum(len(r["traj"]) for b in batches for r in b["rows"]))}
        if cfg["family"] == "pathwise" and cfg["estimator"] == "pathwise":
            return self._update_pathwise(batches, stats)
        per_batch, out = self._run_update(batches, normalizer, epochs)
        loss, kl, clip = (np.from_dlpack(out[k]) for k in ("loss", "kl", "clip_fraction"))
        first = self._block_stats(batches, per_batch, loss[0], kl[0], clip[0])
        last = first if epochs == 1 else self._block_stats(batches, per_batch, loss[-1], kl[-1], clip[-1])
        stats["train_nfe"] = int(out["nfe"])
        stats["grad_norm"] = float(np.from_dlpack(out["grad_norms"])[-1])
        stats["loss"], stats["kl"], stats["kl_anchor"] = first["loss"], first["kl"], first["kl_anchor"]
        per_step = last["clip_fraction_per_step"]
        stats["clip_fraction"] = float(np.mean(list(per_step.values()))) if per_step else 0.0
        stats["clip_fraction_per_step"] = [per_step[k] for k in sorted(per_step)]
        return stats

    def _update_pathwise(self, batches: list, stats: dict) -> dict[str, Any]:
        """DRaFT-K: the backward runs through the sampler's own steps (adjoint in Python over the
        model's VJP), then one optimizer step on the mean over micro-batches per epoch."""
        for epoch in range(self.cfg["inner_epochs"]):
            grads, loss = None, 0.0
            for b in batches:
                g, s = self._pathwise_grad(b)
                grads = g if grads is None else grads + g
                stats["train_nfe"] += s["train_nfe"]
                loss += s["loss"]
            grads = grads / len(batches)   # DRaFT's loss is a per-batch mean
            stats["grad_norm"] = self.optimizer.step(grads)
            if epoch == 0:
                stats["loss"], stats["kl"], stats["kl_anchor"] = loss / len(batches), 0.0, 0.0
        stats["clip_fraction"], stats["clip_fraction_per_step"] = 0.0, []
        return stats

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

    def _rollout_rows(self, score: bool = True) -> dict[str, Any]:
        """The preset's rollout; score=False: without the reward call (batch["scored"] None)."""
        self._score_rollouts = score
        try:
            return {"sde": self._rollout_sde, "branch": self._rollout_branch,
                    "ode": self._rollout_ode, "tree": self._rollout_tree,
                    "refl": self._rollout_refl}[self.cfg["rollout"]]()
        finally:
            self._score_rollouts = True

    def rollout(self, micro: int = 0) -> dict[str, Any]:
        """One rollout with rewards and advantages (or reward gradients), as step() would use it:
        for inspecting batches and for gradient checks. `micro` = index of the micro-batch within
        the iteration (gradient accumulation): each draws its own random streams."""
        cfg = self.cfg
        if isinstance(micro, bool) or not isinstance(micro, (int, np.integer)) or micro < 0:
            raise ValueError(f"rollout(): micro={micro!r} must be a non-negative int")
        # accumulate = 1 keeps the streams of iteration k at index k
        self._draw = self.iteration * self.geometry.accumulate + int(micro)
        batch = self._rollout_rows()
        # the reward was called once from inside the C rollout (batch["scored"]), except for
        # ReFL, whose reward is at the Tweedie jump taken after the sampler
        scored = batch.pop("scored", None)
        if scored is None:
            scored = self.reward(_tensor(batch["x0"]), self.reward_cond(batch.get("cond_x0")))
        rewards, grad, valid = scored
        batch["rewards"], batch["valid"] = rewards, valid
        if cfg["family"] == "zeroth-order" and "tree" in batch:
            adv, mask, node_valid = self._tree_advantages(batch, np.where(valid, rewards, 0.0), valid)
            batch["adv"], batch["mask"], batch["row_valid"] = adv, mask, node_valid
        elif cfg["family"] == "zeroth-order":
            # rows with an invalid reward get groups of their own, so they do not bias the
            # statistics of the valid rows of their group
            keys = np.asarray(batch["keys"], dtype=np.int64).copy()
            keys[~valid] = -1 - np.flatnonzero(~valid)
            center = cfg.get("advantage") == "center"   # REINFORCE: (r - mean_g) / alpha
            adv, mask = group_advantages(np.where(valid, rewards, 0.0), keys,
                                         eps=cfg["adv_eps"], adv_clip=cfg["adv_clip"],
                                         center_only=center)
            if center:
                adv = adv / cfg["alpha"]
            batch["adv"], batch["mask"] = adv, mask & valid
        else:
            batch["grad"], batch["mask"] = np.where(valid[:, None], grad, 0.0), valid
            if cfg["estimator"] == "fo-adjoint":
                batch["adjoint"] = self._lean_adjoint(batch)
            if cfg["estimator"] == "fo-next":
                # FO-next (RSM-SPEC §7.1): g = grad_{x'} r(x0_hat(x')) at each row's sampled next
                # state, through the Tweedie jump of the rollout policy (Residual nabla-DB) or of
                # the reference (SQDF's training-free soft-Q); one reward call per trained step
                from .estimators import first_order_next

                model = self.ref if cfg.get("tweedie_model", "policy") == "ref" else self.policy
                batch["grad_rows"] = []
                for k, r in enumerate(batch["rows"]):
                    g = first_order_next(model, self.path, self.reward, r["x"], self.ts, r["step"],
                                         x_next=r["x_next"], cond=r.get("cond"),
                                         reward_cond=self.reward_cond(r.get("cond")))
                    ok = batch["valid"][r["traj"]]
                    batch["grad_rows"].append(np.where(ok[:, None], g, 0.0))
                    r["index"] = k
                batch["reward_calls"] = 1 + len(batch["rows"])
                batch["nfe"] += 2 * sum(len(r["traj"]) for r in batch["rows"])
            if cfg["estimator"] == "fo-tweedie":
                # VGG-Flow's current-state estimator: grad r at x0_hat(x_t) = x_t - t sg(v), one
                # reward call for all (row, t) pairs of the batch
                x0_hat = [np.from_dlpack(self.path.x0_hat(r["x"], r["u_old"], self.ts[r["step"]]))
                          for r in batch["rows"]]
                conds = [r["cond"] for r in batch["rows"]]
                cond_rows = None if conds[0] is None else np.concatenate(conds)
                _, g_rows, ok = self.reward(_tensor(np.concatenate(x0_hat)), self.reward_cond(cond_rows))
                batch["reward_calls"] = 2
                sizes = np.cumsum([0] + [len(x) for x in x0_hat])
                batch["grad_rows"] = [np.where(ok[a:b, None], g_rows[a:b], 0.0)
                                      for a, b in zip(sizes[:-1], sizes[1:])]
                for k, r in enumerate(batch["rows"]):
                    r["index"] = k
        return batch


def _tensor(x: np.ndarray) -> Any:
    from . import from_dlpack

    return from_dlpack(np.ascontiguousarray(x))


def finetune(policy: Any, ref: Any, reward: Any, method: str = "rsm-zo", steps: int = 100,
             batch_size: int = 16, group_size: int = 8, seed: int = 0, progress: bool = True,
             **overrides: Any) -> Run:
    """Fine-tune `policy` toward `reward` while staying close to `ref` with a method preset
    (rsm.methods.names()); hyper-parameters of the preset can be overridden by keyword.
    conditions= (class ids [M] or vectors [M, cond_dim]) fine-tunes a conditional model, one
    condition per group (see Trainer); rsm.Guided(policy, w) / rsm.Guided(ref, w) fine-tune with
    classifier-free guidance in the rollouts and the losses. kl_every / kl_samples / kl_grid /
    kl_noise_level set the comparable path-KL column "kl_path" (see Trainer; kl_every=0 turns it
    off); its network evaluations go to "eval_nfe", not "nfe". Returns Run(policy, history,
    trainer)."""
    path = overrides.pop("path", None)
    cond = overrides.pop("cond", None)
    conditions = overrides.pop("conditions", None)
    trainer = Trainer(policy, ref, reward, method, path=path, batch_size=batch_size,
                      group_size=group_size, seed=seed, cond=cond, conditions=conditions, **overrides)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"finetune(): steps={steps!r} must be a non-negative int")
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"finetune {method}", dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            bar = None
    kl_path = float("nan")   # the bar keeps the last evaluated value between evaluations
    try:
        for _ in range(steps):
            row = trainer.step()
            if bar is not None:
                bar.update(1)
                kl_path = row["kl_path"] if np.isfinite(row["kl_path"]) else kl_path
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3g}",
                                kl_path=f"{kl_path:.3g}", clip=f"{row['clip_fraction']:.2f}")
    finally:
        if bar is not None:
            bar.close()
    return Run(policy, trainer.history, trainer)


def check_on_policy(trainer: "Trainer") -> dict[str, Any]:
    """Run one rollout of `trainer` (no update, no reward call) and recompute, with the current
    parameters, the network outputs and the log-probabilities of every recorded transition.
    Sampling and training share one code path, so both are bitwise equal and every importance
    ratio is exactly 1. Returns dict(rows, max_abs_log_ratio); raises AssertionError otherwise."""
    from .sampling import log_prob

    batch = trainer._rollout_rows(score=False)
    worst, rows = 0.0, 0
    for row in batch["rows"]:
        i = row["step"]
        u = np.from_dlpack(trainer.policy.forward(row["x"], trainer.ts[i], row["cond"]))
        if not np.array_equal(u, row["u_old"]):
            raise AssertionError(f"step {i}: recomputed outputs differ from the rollout's "
                                 f"(max |diff| {np.abs(u - row['u_old']).max():.3g})")
        if "log_prob" in row:
            lp, _ = log_prob(trainer.policy, trainer.path, row["x"], row["x_next"], row["grid_step"],
                             row["grid"], trainer.stochastic, noise_level=trainer.cfg["noise_level"],
                             cond=row["cond"], sde_window=row.get("window"),
                             pcpo_weight=trainer.pcpo_weight)
            diff = float(np.abs(lp.astype(np.float64) - row["log_prob"]).max())
            if diff != 0.0:
                raise AssertionError(f"step {i}: log-probabilities differ by {diff:.3g}")
            worst = max(worst, diff)
        rows += len(row["traj"])
    return {"rows": rows, "max_abs_log_ratio": worst}


def influence(method: str, path: Any = None, **overrides: Any) -> dict[str, np.ndarray]:
    """Per-timestep optimization strength of a preset, from the engine itself (RSM-SPEC §4.3):

      kappa_i  the factor between the unit estimator (A z = e for zeroth-order rows, g = e for
               first-order rows) and the cotangent dL/du the objective returns at theta = theta_old
               (u = u_old = u_ref), per row, in output space;
      n_i      trained rows per root at step i times the per-row multiplier (k_avg / k_i);
      h_i      kappa_i n_i / mean_j(kappa_j n_j)   (the normalized influence metric);
      c1, gamma, c2, conv
               the per-row coefficients the trainer hands the objective at step i (RSM-SPEC
               §4.1: C1, gamma, the relative trust-region weight C2 — invariant under the change
               of output space — and the output-space conversion factor); NaN where the step
               is not trained;
      psi_scale
               first-order rows: |Psi_hat| per unit reward gradient g in the row's output space
               (the estimator's time weighting, e.g. lambda eta(t) for VGG-Flow); NaN otherwise.

    No models are evaluated: the rows are synthetic, the coefficients are the trainer's."""
    from .models import MLP

    dummy = MLP(1, 1, 0, seed=0, temb_dim=2, dtype="float64")
    cfg = _methods.get(method, **overrides)
    group = cfg["branch"] ** cfg["split"] if cfg["rollout"] == "tree" else 2
    trainer = Trainer(dummy, dummy, Reward(lambda x, c: np.zeros(len(x)), differentiable=True),
                      method, path=path, batch_size=1, group_size=group, **overrides)
    cfg = trainer.cfg
    steps = cfg["steps"]
    if cfg["rollout"] == "tree":   # distinct transitions per root at each step (trained ones)
        from .tree import depth_pruned_steps

        splits = tree_split_steps(steps, cfg["split"])
        spec = trained_steps(cfg.get("train_steps", "all"), steps)
        spec = [i for i in spec if i not in depth_pruned_steps(cfg, splits, 0)]  # width: ignored
        rows_per_root = [float(cfg["branch"] ** sum(1 for s in splits if s <= i))
                         if i in spec else 0.0 for i in range(steps)]
    elif cfg["rollout"] == "refl":  # one trained step, uniform among the last late_steps
        late = cfg["late_steps"]
        rows_per_root = [1.0 / late if i >= steps - late else 0.0 for i in range(steps)]
    elif cfg["rollout"] == "branch":
        budget = list(cfg["budget"]) + [0] * (steps - len(cfg["budget"]))
        active = [k for k in budget if k > 0]
        k_avg = sum(active) / len(active)
        rows_per_root = [k * (k_avg / k) if k > 0 else 0.0 for k in budget]
    else:
        spec = cfg.get("train_steps", "all")
        named = {"all": range(steps), "interior": range(1, steps), "no_last": range(steps - 1)}
        trained = set(named[spec]) if isinstance(spec, str) else None
        if trained is None:
            spec = cfg["train_steps"]
            if isinstance(spec, float):  # expected rows per step of a random subset of 0..S-2
                frac = max(1, int(round(spec * (steps - 1)))) / (steps - 1)
                rows_per_root = [frac] * (steps - 1) + [0.0]
            else:
                rows_per_root = [1.0 if i in spec else 0.0 for i in range(steps)]
        else:
            rows_per_root = [1.0 if i in trained else 0.0 for i in range(steps)]
    kappa = np.zeros(steps)
    fields = {name: np.full(steps, np.nan) for name in ("c1", "gamma", "c2", "conv", "psi_scale")}
    one = np.ones((1, 1))
    for i in range(steps):
        if rows_per_root[i] == 0:
            continue  # not a training step of this method
        batch = {"mask": np.ones(1, bool), "valid": np.ones(1, bool), "adv": np.ones(1),
                 "grad": one.copy(), "grad_rows": [one.copy()] * steps,
                 "adjoint": {j: one.copy() for j in range(steps)}}
        row = {"step": i, "x": np.zeros((1, 1)), "u_old": np.zeros((1, 1)), "noise": one.copy(),
               "traj": np.zeros(1, dtype=np.int64), "cond": None, "weight": 1.0, "index": i}
        if cfg["family"] == "pathwise" and cfg["estimator"] == "pathwise":
            kappa[i] = 1.0 if i >= steps - cfg["truncation"] else 0.0
            continue
        needs_density = cfg["family"] == "zeroth-order" or cfg["estimator"] in ("fo-residual", "fo-next")
        if needs_density and not trainer.sde[i]["std"] > 0:
            continue  # a deterministic step (std = 0) is never a training row of these methods
        coef, form, extra = trainer._row_coefficients(row, batch, 1)
        for name in ("c1", "gamma", "c2", "conv"):
            fields[name][i] = coef[0, list(ROW_FIELDS).index(name)]
        if form != "score_matching":
            # ratio forms (PPO, log-ratio, matching) carry C1 gamma inside kappa (their clipped
            # surrogate has no separate C1 and gamma); their trust region is the clip, C2 = 0
            fields["c1"][i] = fields["gamma"][i] = np.nan
            fields["c2"][i] = 0.0
        if cfg["family"] != "zeroth-order" and "psi" in extra:
            fields["psi_scale"][i] = abs(float(np.asarray(extra["psi"]).reshape(-1)[0]))
        extra.pop("anchor_current", None)   # ReFL: u = u_ref = 0 here anyway
        coef[:, list(ROW_FIELDS).index("kl")] = 0.0
        out = objective(form, np.zeros((1, 1)), coef, u_ref=np.zeros((1, 1)), normalizer=1.0,
                        mean_over_dims=False, linear_only=cfg.get("reweight") == "guard", **extra)
        kappa[i] = abs(float(np.from_dlpack(out["cotangent"])[0, 0]))
    strength = kappa * np.asarray(rows_per_root)
    mean = strength.mean()
    return {"t": np.asarray(trainer.ts[:-1]), "kappa": kappa, "rows_per_root": np.asarray(rows_per_root),
            "h": strength / mean if mean > 0 else strength, **fields}
