"""The method presets: every fine-tuning method as a frozen, typed `Preset` of the one RSM
objective's hyper-parameters (THEORY.md §6, §12.6), with the source it follows.

A preset names its rollout (sampler, steps, noise level, branching budget), the estimator of the
value guidance Psi and how the objective weighs it (form, reweighting, clip threshold, KL anchor).
Every option can be overridden by keyword in rsm.finetune / rsm.Trainer / rsm.methods.get; a
preset only has the options its family uses (reading another one raises KeyError, overriding it
ValueError). `Preset` keeps the read access of the dicts it replaces: p["kl"], p.get("alpha"),
"discount" in p, dict(p) (sequence options read as lists there, as tuples as attributes)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

from .. import conventions as _conv
from .options import OPTIONS, UNSET, check_combination, suggest

_COMMON_ZO = {
    "ema_decay": 0.0,
    "family": "zeroth-order", "estimator": "zo-group", "advantage": "group", "adv_eps": 1e-4,
    "adv_clip": 5.0, "mean_over_dims": True, "train_steps": "all", "inner_epochs": 1,
    "max_grad_norm": 1.0, "weight_decay": 1e-4, "noise_level": 0.7, "shift": 3.0, "lr": 1e-3,
    "accumulate": 1,
    # ODE KL-anchor rows of branch rollouts (THEORY.md §9.2.5, §9.3): the root states at the
    # transitions the budget leaves at k_i = 0 (not the last one), trained only by the KL term
    # kl_anchor (w^2 / 2) mean|u - u_ref|^2. kl_anchor: its beta (None: the preset's "kl");
    # kl_anchor_weight: w, "sampler" (|K_i| / std_i of the step's SDE) or a constant;
    # kl_anchor_reduce: "k_avg" (each anchor row weighs k_avg in the masked mean, so an anchor
    # transition weighs what a trained one does) or "mean" (beta times the mean over the
    # micro-batch's anchor rows, added to the loss); kl_anchor_max_ratio: at most this fraction
    # of the micro-batch's transition rows, a seeded random subset (None: all of them)
    "kl_anchor": 0.0, "kl_anchor_weight": "sampler", "kl_anchor_reduce": "k_avg",
    "kl_anchor_max_ratio": None,
    # the released-code conventions (rsm.conventions, issue 15), at rsm's earlier values;
    # sde_sigma: "flow-grpo" (s~ = a sqrt(t/(1-t))) or "constant" (s~ = a, DanceGRPO), the flow
    # SDE's noise; vp_schedule: the VPPath schedule a Trainer builds when no path is given
    **_conv.RSM_DEFAULTS, "sde_sigma": "flow-grpo", "vp_schedule": "linear",
}

_COMMON_FO = {
    "ema_decay": 0.0,
    "family": "first-order", "shift": 3.0, "noise_level": 0.7, "form": "score_matching",
    "reward_scale": 1.0, "kl": 0.0, "mean_over_dims": True, "inner_epochs": 1, "lr": 1e-3,
    "max_grad_norm": 1.0, "weight_decay": 0.0, "train_steps": "all", "accumulate": 1,
}

# the released forms and their earlier (*-rsm) variants share these
_VGG = {**_COMMON_FO, "path": "flow", "rollout": "ode", "steps": 20, "estimator": "fo-tweedie",
        "eta": "quad"}
_SQDF = {**_COMMON_FO, "path": "vp", "rollout": "sde", "estimator": "fo-next",
         "tweedie_model": "ref"}
_AM = {**_COMMON_FO, "path": "flow", "rollout": "sde", "grid": "shift", "noise_level": 2.0 ** 0.5,
       "estimator": "fo-adjoint", "alpha": 1.0, "am_adjoint": "state"}
_DRAFT = {"ema_decay": 0.0, "family": "pathwise", "shift": 3.0, "noise_level": 0.7,
          "estimator": "pathwise", "form": "pathwise", "truncation": 1, "kl": 0.0,
          "mean_over_dims": True, "inner_epochs": 1, "accumulate": 1, "lr": 1e-3,
          "max_grad_norm": 1.0}

# the forward residual on DDPM rollouts (THEORY.md §6.3.3): the diffusion first-order redesign and
# Residual nabla-DB differ in kappa, a(t) and where g is taken
_RESIDUAL = {**_COMMON_FO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform", "reg": 1.0}

_PRESETS: dict[str, dict[str, Any]] = {
    # ---- zeroth order: full stochastic trajectories (Table 1 rows REINFORCE+KL, PPO/GRPO/PCPO)
    # released train_sd3.py + config/grpo.py (geneval_sd3): global std, samples with A = 0
    # dropped (KL rows too), KL / (2 s~^2) with beta 0.04, the first int(0.99 S) steps
    "flow-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                  "train_steps": "no_last", "form": "ppo", "reweight": "base", "clip_eps": 1e-4,
                  "kl": 0.04, "adv_std": "batch", "zero_std": "drop", "kl_denominator": "released",
                  "description": "Flow-GRPO as released: GRPO on Flow-GRPO's SDE, group mean / "
                                 "batch std advantages, zero-advantage samples dropped, PPO ratio "
                                 "clip, KL beta |mu - mu_ref|^2 / (2 s~^2)"},
    # the paper's / rsm's earlier form: exact Gaussian KL (its beta 0.004 ~ 0.04 dt on the
    # 10-step grid), group std, the masked mean of THEORY.md §9.2.3 (zero-std groups keep their
    # KL rows); the Figs. 3-6 runs of docs/RESULTS.md used it
    "flow-grpo-exact": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                        "train_steps": "no_last", "form": "ppo", "reweight": "base",
                        "clip_eps": 1e-4, "kl": 0.004,
                        "description": "Flow-GRPO in rsm's exact form: group std, masked mean, "
                                       "exact Gaussian KL |mu - mu_ref|^2 / (2 std^2)"},
    # released train_grpo_flux.py + finetune_flux_grpo.sh: s~ = eta = 0.3 constant on the shifted
    # grid (16 steps), per-sample random 0.6 of the steps 0..S-2, torch.std (ddof 1) + 1e-8
    "dance-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 16, "grid": "shift",
                   "form": "ppo", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
                   "shared_noise": True, "train_steps": 0.6, "timestep_subset": "per_sample",
                   "sde_sigma": "constant", "noise_level": 0.3, "adv_ddof": 1, "adv_eps": 1e-8,
                   "zero_std": "keep",
                   "description": "DanceGRPO as released: constant s~ = eta SDE, no KL, one "
                                  "initial noise per group, per-sample timestep subsets"},
    # released scripts/train.py + config/dgx.py (compressibility): SD1.x scaled_linear table on
    # the leading grid (every step stochastic), eta = 1, per-prompt tracker (16, 16), std + 1e-6
    "ddpo": {**_COMMON_ZO, "path": "vp", "rollout": "sde", "steps": 50, "grid": "leading",
             "vp_schedule": "scaled_linear", "form": "ppo", "reweight": "base", "clip_eps": 1e-4,
             "kl": 0.0, "adv_tracker": "per_prompt", "adv_buffer_size": 16, "adv_min_count": 16,
             "adv_eps": 1e-6, "zero_std": "keep",
             "description": "DDPO as released (PPO on DDPM transitions of SD1.x's scaled_linear "
                            "table, leading grid, per-prompt reward tracker, no KL)"},
    "grpo-guard": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
                   "train_steps": "no_last", "form": "ppo", "reweight": "guard", "clip_eps": 1e-4, "kl": 0.0,
                   "description": "GRPO-Guard: RatioNorm (linear part of log rho, x std), 1/dt"},
    "pcpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 10, "grid": "sd3",
             "train_steps": "no_last", "form": "ppo", "reweight": "pcpo", "clip_eps": 1e-4, "kl": 0.0,
             "description": "PCPO-reweight (flow): log-ratio weight zeta dt (proportional credit)"},
    "pcpo-base": {**_COMMON_ZO, "path": "any", "rollout": "sde", "steps": 10, "grid": "uniform",
                  "form": "log_ratio", "reweight": "base", "clip_eps": 1e-4, "kl": 0.0,
                  "description": "PCPO-base: clip on 1 + log rho instead of rho"},
    "reinforce-kl": {**_COMMON_ZO, "path": "any", "rollout": "sde", "steps": 10, "grid": "uniform",
                     "form": "log_ratio", "reweight": "base", "clip_eps": 1e30, "kl": 1.0,
                     "advantage": "center", "alpha": 1.0, "adv_clip": 0.0,
                     "description": "REINFORCE + KL (DPOK-like): -(r - b)/alpha log pi + KL"},
    "pcpo-diffusion": {**_COMMON_ZO, "path": "vp", "rollout": "sde", "steps": 20, "grid": "uniform",
                       "form": "matching", "reweight": "constant", "pcpo_weight": 4.5,
                       "loss_weight": 4.5 / 8.70575076181, "clip_eps": 1e-4, "kl": 0.0,
                       "description": "PCPO-reweight (diffusion, 'uw-sigma'): DDPM with PCPO's "
                                      "step std (w = 4.5), noise-matching hinge with the constant "
                                      "log-ratio weight w' = 4.5 / 8.70575 (h = 1)"},
    # ---- zeroth order with branching and stochasticity localisation
    # released fastvideo/train_branchgrpo_flux.py + finetune_flux_branchgrpo_8gpus.sh: 20 steps of
    # the shifted grid, constant s~ = eta = 0.3, splits at 0,3,6,9 (16 leaves) drawn with 4x the
    # step's std, every transition trained, depth advantages with torch.std (ddof 1) + 1e-8 and
    # std < 1e-6 -> 0, all transitions in the mean, clip 1e-3
    "branch-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "tree", "steps": 20, "grid": "shift",
                    "sde_sigma": "constant", "noise_level": 0.3, "estimator": "zo-tree",
                    "train_steps": "all", "form": "ppo", "reweight": "base", "clip_eps": 1e-3,
                    "kl": 0.0, "split": 4, "split_steps": [0, 3, 6, 9], "branch": 2,
                    "split_noise_scale": 4.0,
                    # rsm.tree: reward fusion "mean" | "path_prob", depth pruning (child depths,
                    # sliding window), width pruning 0/1/2: the released script's defaults (no
                    # weighting, no pruning)
                    "fusion": "mean", "adv_ddof": 1, "adv_eps": 1e-8, "adv_zero_tol": 1e-6,
                    "zero_std": "keep", "depth_pruning": [], "depth_pruning_slide": 0,
                    "depth_pruning_stop": None, "width_pruning": 0, "width_pruning_ratio": 0.5,
                    "description": "Branch-GRPO as released: SDE tree (listed split steps x "
                                   "branch children, shared prefixes), node rewards fused from "
                                   "the leaves, advantages normalised per (root, depth), "
                                   "optional width/depth pruning, PPO on the node transitions"},
    # rsm's earlier Branch-GRPO (the Figs. 3-6 runs of docs/RESULTS.md): Flow-GRPO's SDE on the
    # 10-step SD3 grid, 3 evenly spaced splits, population std + 1e-4, the masked mean, clip 1e-4
    "branch-grpo-rsm": {**_COMMON_ZO, "path": "flow", "rollout": "tree", "steps": 10, "grid": "sd3",
                        "estimator": "zo-tree", "train_steps": "no_last", "form": "ppo",
                        "reweight": "base", "clip_eps": 1e-4, "kl": 0.0, "split": 3,
                        "split_steps": None, "split_noise_scale": 1.0, "branch": 2,
                        "fusion": "mean", "adv_ddof": 0,
                        "adv_zero_tol": 0.0, "depth_pruning": [], "depth_pruning_slide": 0,
                        "depth_pruning_stop": None, "width_pruning": 0, "width_pruning_ratio": 0.5,
                        "description": "Branch-GRPO in rsm's earlier form: Flow-GRPO's SDE tree "
                                       "on the 10-step SD3 grid, evenly spaced splits, "
                                       "population std, masked mean"},
    # released fastvideo/train_grpo_flux.py + finetune_flux_grpo_MixGRPO.sh: Flow-GRPO's SDE in a
    # 4-step window sliding by 1 step every 25 iterations, Euler ODE elsewhere, only the window
    # trained; 25 steps of the shifted grid; torch.std (ddof 1) + 1e-8; one noise per group
    "mixgrpo": {**_COMMON_ZO, "path": "flow", "rollout": "sde", "steps": 25, "grid": "shift",
                "train_steps": "all", "form": "ppo", "reweight": "base", "clip_eps": 1e-4,
                "kl": 0.0, "shared_noise": True, "adv_ddof": 1, "adv_eps": 1e-8,
                "zero_std": "keep", "mix_window": 4, "mix_interval": 25, "mix_stride": 1,
                "description": "MixGRPO as released: Flow-GRPO's SDE inside a sliding window of "
                               "mix_window steps, the ODE outside, GRPO (PPO) on the window's "
                               "steps only"},
    "tempflow-grpo": {**_COMMON_ZO, "path": "flow", "rollout": "branch", "steps": 10, "grid": "sd3",
                      "estimator": "zo-branch", "form": "ppo", "reweight": "tempflow",
                      "clip_eps": 1e-4, "kl": 0.004, "budget": [6] * 9,
                      "description": "TempFlow-GRPO: ODE root + single-step SDE branches (budget base), "
                                     "noise-aware weight 2.25 s~ sqrt(dt), PPO"},
    "rsm-zo": {**_COMMON_ZO, "path": "flow", "rollout": "branch", "steps": 10, "grid": "sd3",
               "estimator": "zo-branch", "form": "matching", "reweight": "fairclip2",
               # budget "tapered" (30 branches per root, as the paper's lowsnr2 6 6 8 10 0 0 0 0 0,
               # but every transition branches, more at low SNR): chosen on benchmarks/
               # bench_time_to_reward.py's three held-out tasks, then checked on two more tasks and
               # the digits DiT (benchmarks/RESULTS.md "rsm-zo's default budget"): lowsnr2 trains
               # only the four noisiest steps, which left rsm-zo 1.4-3.1x slower to a reward level
               # on the five 2D tasks and falling back from its best where the late steps must
               # move mass too (on the digits DiT lowsnr2 was 1.1x faster); budget="lowsnr2" is
               # the paper's profile (Fig. 1(b), Figs. 3/4)
               "clip_eps": 1e-4, "kl": 0.004, "budget": [4, 4, 4, 4, 4, 3, 3, 2, 2],
               # §9.2.5: loss = policy + beta (KL_sde + KL_anchor), anchor rows weigh k_avg (the
               # anchor rows sit at untrained steps: none under the default budget, which trains
               # every step; they come back with a budget that has zeros, e.g. "lowsnr2")
               "kl_anchor": None,
               "description": "RSM zeroth-order redesign (flow): localised stochasticity, tapered "
                              "budget (every step branches, more at low SNR), timestep-fair "
                              "matching hinge, KL on the branch rows and ODE-anchor rows at the "
                              "untrained steps"},
    # THEORY.md §9.3: the branches' single stochastic step uses PCPO's std (w = 4.5, §6.3.6),
    # which also sets the step's mean coefficient K and so the KL weight |K|/std; the hinge
    # uses PCPO's constant log-ratio weight w' = 4.5 / 8.70575 (reweight "base" would use
    # |K|/std of that step instead)
    "rsm-zo-diffusion": {**_COMMON_ZO, "path": "vp", "rollout": "branch", "steps": 20,
                         "grid": "uniform", "estimator": "zo-branch", "form": "matching",
                         "reweight": "constant", "pcpo_weight": 4.5,
                         "loss_weight": 4.5 / 8.70575076181, "clip_eps": 1e-4, "kl": 0.0,
                         "budget": [4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0],
                         # §9.3: + 8e-5 mean_anchor (1/2) mean(4.5^2 (eps - eps_ref)^2) over at
                         # most 10% as many anchor rows as transition rows (the constant 4.5,
                         # without the 1 / 8.70575 of the hinge)
                         "kl_anchor": 8e-5, "kl_anchor_weight": 4.5, "kl_anchor_reduce": "mean",
                         "kl_anchor_max_ratio": 0.1,
                         "description": "RSM zeroth-order redesign (diffusion): DDIM root, 4 "
                                        "single-step branches at 5 steps with PCPO's std "
                                        "(w = 4.5), noise-matching hinge with PCPO's constant "
                                        "weight w' = 4.5 / 8.70575, ODE KL anchor at the "
                                        "untrained steps"},
    # ---- first order
    "rsm-fo": {**_COMMON_FO, "path": "flow", "rollout": "ode", "steps": 20, "grid": "uniform",
               "estimator": "fo-terminal", "eta": "linear",
               "description": "RSM first-order redesign (flow): grad r(x0) at the rollout end "
                              "reused at every t; v_target = v_ref - lambda (1 - t) g"},
    # released lzzcd001/vggflow train_vggflow.py + config/default_config.py: SD3's FlowMatchEuler
    # grid (shift 3), 20 Euler steps, per sample the last step and one step of each of the
    # int(0.25 S) trunks (step 0 clamped to 1), eta quad, weight decay 1e-4
    "vgg-flow": {**_VGG, "grid": "sd3", "train_steps": 0.25, "timestep_subset": "trunks_min1",
                 "weight_decay": 1e-4,
                 "description": "VGG-Flow as released, pruned (no value network): g = grad r at "
                                "Tweedie x0_hat = x_t - t sg(v), v_target = v_ref - lambda (1 - "
                                "t)^2 g, per-sample trunk subsampling of the steps"},
    # the form the RSM paper's comparisons ran (docs/RESULTS.md): uniform grid, every step
    "vgg-flow-rsm": {**_VGG, "grid": "uniform",
                     "description": "VGG-Flow (pruned, no value network) in rsm's earlier form: "
                                    "uniform grid, every step trained"},
    "rsm-fo-diffusion": {**_RESIDUAL, "estimator": "fo-residual", "kappa": "sigma", "adaptive": "sigma",
                         "description": "RSM first-order redesign (diffusion): DDPM rollout, "
                                        "forward residual (s (mu - mu_ref)/s^2 - lambda s g)^2 "
                                        "+ reg |eps - eps_old|^2 with g = grad r(x0)"},
    # released lzzcd001/nabla-gfn train_nablagfn.py + README's command: SD1.5's DDIM (eta 1) on
    # the scaled_linear table, leading grid, 50 steps; per sample the last step and one of each
    # of int(0.1 S) trunks; reward_scale 1e4 and unet_reg_scale 2e3 (their ratio 0.2 kept here)
    "residual-ndb": {**_RESIDUAL, "steps": 50, "grid": "leading", "vp_schedule": "scaled_linear",
                     "estimator": "fo-next", "tweedie_model": "policy", "kappa": "one",
                     "adaptive": "alpha_bar_next", "reg": 0.2, "train_steps": 0.1,
                     "timestep_subset": "trunks", "weight_decay": 1e-4,
                     "description": "Residual nabla-DB as released, pruned (no residual flow "
                                    "network, no reverse loss): DDPM rollout, forward residual "
                                    "(kappa (mu - mu_ref)/s^2 - lambda abar' g)^2 + reg |eps - "
                                    "eps_old|^2 with g = grad_{x'} r(x0_hat(x')) at the next state, "
                                    "per-sample trunk subsampling"},
    "residual-ndb-rsm": {**_RESIDUAL, "estimator": "fo-next", "tweedie_model": "policy",
                         "kappa": "one", "adaptive": "alpha_bar_next",
                         "description": "Residual nabla-DB (pruned) in rsm's earlier form: 20 "
                                        "uniform steps of the continuous VP path, every step"},
    # released Shin-woocheol/SQDF T2I/sd_pipeline.py, alignprop_trainer.py, aesthetic.sh (without
    # consistency model and buffer): SD1.5's DDIM (eta 1), 50 steps, one random step per sample,
    # alpha 2 on mean_d |mu - mu_ref|^2 / std^2, gamma 0.9
    "sqdf": {**_SQDF, "steps": 50, "grid": "leading", "vp_schedule": "scaled_linear", "alpha": 2.0,
             "discount": 0.9, "timestep_subset": "one_per_sample", "kl_denominator": "std2", "reward_reduce": "sum", "weight_decay": 1e-4,
             "description": "SQDF as released without consistency model / replay buffer: per "
                            "sample one random step, alpha mean_d|mu - mu_ref|^2/std^2 - gamma_d "
                            "Q(x') with Q(x') = r(x0_hat_ref(x')) at the reparameterised next "
                            "state (r(x') at the last step), gamma_d = discount^(S-1-i)"},
    "sqdf-rsm": {**_SQDF, "steps": 20, "grid": "uniform", "alpha": 1.0, "discount": 1.0,
                 "description": "SQDF in rsm's earlier form: every step, alpha KL_i (exact "
                                "Gaussian) - gamma_d Q(x'), the row loss a per-element mean"},
    # released microsoft/soc-fine-tuning-sd src/trainers/am_trainer.py + configs (single_prompt_993):
    # per rollout 4 of the 50 steps (2 in the first 60%, 2 after), |(mu - mu_ref)/std + std a|^2
    # summed over dimensions, no gradient clipping. Kept on the paper's memoryless flow SDE (the
    # release runs SD1.5's DDIM with its own betas, see rsm.conventions.SOURCES)
    "adjoint-matching": {**_AM, "steps": 50, "train_steps": 0.08, "timestep_subset": "stratified",
                         "am_loss": "released", "mean_over_dims": False, "max_grad_norm": 0.0,
                         "description": "Adjoint Matching as released (lean adjoint): memoryless "
                                        "SDE rollouts (a = sqrt 2), Psi = discrete lean adjoint of "
                                        "r(x0)/alpha through the reference drift's Jacobian, per "
                                        "step |(mu - mu_ref)/std - std Psi|^2 summed over dims on 4 "
                                        "stratified steps"},
    "adjoint-matching-rsm": {**_AM, "steps": 40, "train_steps": "interior", "am_loss": "rsm",
                             "description": "Adjoint Matching in rsm's earlier form: score "
                                            "regression onto s_ref + Psi with weight g^2 = "
                                            "2t/(1-t), every interior step, per-element mean"},
    # ---- pathwise baselines (not RSM; for comparison)
    # DRaFT has no official code: AlignProp's released script (mihirp1998/AlignProp main.py,
    # sd_pipeline.py, aesthetic_k1.sh: backprop_strategy 'fixed', the last step) is the closest:
    # SD1.5's DDIM with eta 1 (the noises reparameterised), scaled_linear, leading grid, 50 steps
    "draft": {**_DRAFT, "path": "vp", "rollout": "sde", "steps": 50, "grid": "leading",
              "vp_schedule": "scaled_linear", "weight_decay": 1e-4,
              "description": "DRaFT-K as AlignProp releases it: backpropagate the reward through "
                             "the last K steps of the DDPM sampler (eta = 1, noises fixed)"},
    "draft-rsm": {**_DRAFT, "path": "flow", "rollout": "ode", "steps": 20, "grid": "uniform",
                  "weight_decay": 0.0,
                  "description": "DRaFT-K in rsm's earlier form: the last K flow ODE steps"},
    # released ImageReward/ReFL.py: 40 DDPM steps of SD1.x's table on the leading grid, the
    # ancestral sampler down to a random step among the last 10, hinge relu(2 - r)
    "refl": {"ema_decay": 0.0, "family": "pathwise", "path": "any", "rollout": "refl", "steps": 40,
             "grid": "leading", "vp_schedule": "scaled_linear", "refl_sampler": "stochastic",
             "reward_hinge": 2.0, "shift": 3.0, "noise_level": 0.7, "estimator": "refl",
             "form": "score_matching", "late_steps": 10, "reward_scale": 1.0, "kl": 0.0,
             "mean_over_dims": False, "inner_epochs": 1, "accumulate": 1, "lr": 1e-3,
             "max_grad_norm": 1.0, "weight_decay": 1e-2,   # ReFL.py adam_weight_decay
             "description": "ReFL as released: ancestral sampling to a random step among the "
                            "last late_steps, one Tweedie jump x0_hat, loss lambda relu(h - "
                            "r(x0_hat)) back-propagated through that single network call"},
}


# Branching budgets k_0..k_8 of THEORY.md §9.2.4 (10-step SD3 grid; transition i = 0 is the noisiest).
BUDGETS: dict[str, list[int]] = {
    "base": [6, 6, 6, 6, 6, 6, 6, 6, 6],
    "highsnr": [3, 3, 4, 5, 6, 7, 7, 8, 11],
    "highsnr2": [4, 5, 5, 6, 7, 8, 9, 10, 0],
    "base2": [7, 7, 7, 7, 7, 7, 6, 6, 0],
    "lowsnr": [6, 6, 8, 10, 11, 13, 0, 0, 0],
    "lowsnr2": [6, 6, 8, 10, 0, 0, 0, 0, 0],
    # rsm-zo's default (not in the paper): lowsnr2's 30 branches spread over every step
    "tapered": [4, 4, 4, 4, 4, 3, 3, 2, 2],
}


_SEQUENCES = ("budget", "depth_pruning", "split_steps")   # stored as tuples (frozen), read as lists via p[...]


@dataclass(frozen=True, eq=True)
class Preset(Mapping):
    """One fine-tuning method: the validated options the Trainer reads (rsm.methods.get).

    Options a preset does not have hold UNSET and are absent from the mapping view."""

    name: str
    family: str = UNSET              # "zeroth-order" | "first-order" | "pathwise"
    path: str = UNSET                # "flow" | "vp" | "any"
    rollout: str = UNSET             # "sde" | "branch" | "tree" | "ode" | "refl"
    estimator: str = UNSET           # the value-guidance estimator (coefficient rule)
    form: str = UNSET                # the objective's form (csrc/objective.h)
    steps: int = UNSET
    grid: str = UNSET
    shift: float = UNSET
    noise_level: float = UNSET
    train_steps: Any = UNSET         # "all" | "interior" | "no_last" | fraction | list of steps
    lr: float = UNSET
    weight_decay: float = UNSET
    max_grad_norm: float = UNSET
    ema_decay: float = UNSET
    inner_epochs: int = UNSET
    accumulate: int = UNSET
    mean_over_dims: bool = UNSET
    kl: float = UNSET
    # zeroth order
    advantage: str = UNSET           # "group" | "center" (REINFORCE)
    adv_eps: float = UNSET
    adv_clip: float = UNSET
    reweight: str = UNSET            # the timestep weighting (coefficients.REWEIGHTS)
    clip_eps: float = UNSET
    alpha: float = UNSET
    shared_noise: bool = UNSET
    pcpo_weight: float = UNSET
    loss_weight: float = UNSET
    budget: tuple = UNSET
    kl_anchor: Any = UNSET           # float, or None: the preset's kl
    kl_anchor_weight: Any = UNSET    # "sampler" or a float
    kl_anchor_reduce: str = UNSET
    kl_anchor_max_ratio: Any = UNSET
    # the released code's conventions (rsm.conventions, issue 15)
    adv_std: str = UNSET             # "group" | "batch"
    adv_ddof: int = UNSET            # 0 | 1 (also Branch-GRPO's depth-wise std)
    adv_tracker: Any = UNSET         # None | "per_prompt" (DDPO's PerPromptStatTracker)
    adv_buffer_size: int = UNSET
    adv_min_count: int = UNSET
    zero_std: str = UNSET            # "mask" | "drop" | "keep"
    kl_denominator: str = UNSET      # "exact" | "released"
    timestep_subset: str = UNSET     # "per_rollout" | "per_sample"
    sde_sigma: str = UNSET           # "flow-grpo" | "constant"
    vp_schedule: str = UNSET         # the VPPath schedule when no path is given
    adv_zero_tol: float = UNSET      # tree: a depth group with std below it has no signal
    mix_window: Any = UNSET          # None | W: MixGRPO's sliding SDE window (rsm.conventions)
    mix_interval: int = UNSET        # iterations per window position
    mix_stride: int = UNSET          # steps the window moves
    # Branch-GRPO trees (rsm.tree)
    split: int = UNSET
    split_steps: Any = UNSET         # None | the split steps (Branch-GRPO's --tree_split_points)
    split_noise_scale: float = UNSET  # the split children's noise x the step's std (released 4)
    branch: int = UNSET
    fusion: str = UNSET
    depth_pruning: tuple = UNSET
    depth_pruning_slide: int = UNSET
    depth_pruning_stop: Any = UNSET
    width_pruning: int = UNSET
    width_pruning_ratio: float = UNSET
    # first order
    reward_scale: float = UNSET
    eta: str = UNSET                 # "linear" | "quad"
    reg: float = UNSET
    kappa: str = UNSET               # "sigma" | "one"
    adaptive: str = UNSET            # "sigma" | "alpha_bar_next"
    tweedie_model: str = UNSET       # "policy" | "ref"
    discount: float = UNSET
    # pathwise
    truncation: int = UNSET
    late_steps: int = UNSET
    refl_sampler: str = UNSET        # "stochastic" (released ReFL) | "deterministic"
    reward_hinge: Any = UNSET        # None | h: ReFL's relu(h - r)
    # first order (rsm.conventions, issue 15)
    am_loss: str = UNSET             # "released" | "rsm": Adjoint Matching's regression weighting
    am_adjoint: str = UNSET          # "state" | "next": the lean adjoint a step regresses onto
    reward_reduce: str = UNSET       # "sum" | "mean": SQDF's reward term per sample or per element
    # documentation
    description: str = UNSET
    source: str = UNSET

    def __post_init__(self) -> None:
        for key in _SEQUENCES:
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        for key in _OPTION_NAMES:   # every option typed and validated once, here
            value = getattr(self, key)
            if value is not UNSET:
                OPTIONS[key](f"method {self.name!r}: {key}", value)
        check_combination(self)

    # ---- read access of the dicts presets were (compatibility) -------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _OPTION_SET:
            raise KeyError(key)
        value = getattr(self, key)
        if value is UNSET:
            raise KeyError(key)
        return list(value) if key in _SEQUENCES and isinstance(value, tuple) else value

    def __iter__(self) -> Iterator[str]:
        return (k for k in _OPTION_NAMES if getattr(self, k) is not UNSET)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def needs_reward_gradient(self) -> bool:
        """First-order and pathwise methods read d r / d x0: the reward must be differentiable."""
        return self.family in ("first-order", "pathwise")

    @property
    def through_sampler(self) -> bool:
        """DRaFT: the update differentiates through the sampler (rsm.methods.pathwise), not
        through the objective's C update."""
        return self.estimator == "pathwise"

    def options(self) -> list[str]:
        """The option names this preset has (overridable), without name/description/source."""
        return [k for k in self if k not in _DOCUMENTATION]

    def replace(self, **overrides: Any) -> "Preset":
        """A copy with `overrides` applied; only options the preset has."""
        unknown = set(overrides) - set(self.options())
        if unknown:
            raise ValueError(_unknown_options_message(self, sorted(unknown)))
        if isinstance(overrides.get("budget"), str):
            profile = overrides["budget"]
            if profile not in BUDGETS:
                raise ValueError(f"unknown budget profile {profile!r}; known: {sorted(BUDGETS)}")
            overrides["budget"] = list(BUDGETS[profile])
        return dataclasses.replace(self, **overrides)

    def __repr__(self) -> str:
        return f"Preset({self.name!r}: {self.family}, {self.rollout}, {self.estimator})"


_DOCUMENTATION = ("name", "description", "source")
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(Preset))
_OPTION_SET = frozenset(_OPTION_NAMES)
assert set(OPTIONS) == _OPTION_SET, set(OPTIONS) ^ _OPTION_SET


def _unknown_options_message(preset: Preset, unknown: list[str]) -> str:
    hint = suggest(unknown[0], preset.options())
    return (f"method {preset.name!r} has no hyper-parameter(s) {unknown}{hint}; "
            f"it has {sorted(preset.options())}")


# Where each preset comes from (docs/THEORY.md sections; the papers named there).
SOURCES: dict[str, str] = {
    "flow-grpo": "Flow-GRPO (Liu et al. 2025): GRPO on the flow SDE, KL beta 0.004; THEORY.md §6.3.5",
    "dance-grpo": "DanceGRPO (Xue et al. 2025): no KL, shared initial noise, timestep subsampling; "
                  "THEORY.md §6.3.5",
    "ddpo": "DDPO (Black et al. 2024): PPO on DDPM transitions; THEORY.md §6.3.5",
    "grpo-guard": "GRPO-Guard (Wang et al., arXiv 2510.22319): RatioNorm, 1/dt; THEORY.md §6.3.10",
    "pcpo": "PCPO-reweight, flow (the paper's code, sd3_train_shared.py): zeta dt; THEORY.md §6.3.7",
    "pcpo-base": "PCPO-base: clip on 1 + log rho; THEORY.md §6.3.5",
    "reinforce-kl": "REINFORCE + KL (DPOK-like); THEORY.md §6.3.4",
    "pcpo-diffusion": "PCPO-reweight, diffusion 'uw-sigma' (the paper's code, sd15_zeroth_order); "
                      "THEORY.md §6.3.6",
    "branch-grpo": "Branch-GRPO (Li et al., arXiv 2509.06040); THEORY.md §6.3.8",
    "branch-grpo-rsm": "Branch-GRPO in rsm's earlier form (Flow-GRPO's SDE, evenly spaced "
                       "splits, population std, masked mean); THEORY.md §6.3.8",
    "mixgrpo": "MixGRPO (Li et al., arXiv 2507.21802): sliding SDE/ODE window",
    "tempflow-grpo": "TempFlow-GRPO (He et al., arXiv 2508.04324): branch sampler, budget base, "
                     "reweight tempflow; THEORY.md §6.3.9",
    "rsm-zo": "RSM zeroth-order redesign, flow (Lee et al., arXiv 2604.17415); THEORY.md §9.2",
    "rsm-zo-diffusion": "RSM zeroth-order redesign, diffusion (Lee et al., arXiv 2604.17415); "
                        "THEORY.md §9.3",
    "rsm-fo": "RSM first-order redesign, flow (Lee et al., arXiv 2604.17415); THEORY.md §9.4",
    "vgg-flow": "VGG-Flow, pruned (Liu et al., NeurIPS 2025); THEORY.md §6.3.1",
    "vgg-flow-rsm": "VGG-Flow, pruned, rsm's earlier form (the RSM paper's comparisons); THEORY.md §6.3.1",
    "rsm-fo-diffusion": "RSM first-order redesign, diffusion (Lee et al., arXiv 2604.17415); "
                        "THEORY.md §9.5",
    "residual-ndb": "Residual nabla-DB, pruned (Nabla-GFlowNet, Liu et al., ICLR 2025); THEORY.md §6.3.3",
    "residual-ndb-rsm": "Residual nabla-DB, pruned, rsm's earlier form (the RSM paper's comparisons); "
                        "THEORY.md §6.3.3",
    "sqdf": "SQDF without consistency model / replay buffer (Kang et al., ICLR 2026, arXiv "
            "2512.04559); THEORY.md §6.3.2",
    "sqdf-rsm": "SQDF, rsm's earlier form (the RSM paper's comparisons); THEORY.md §6.3.2",
    "adjoint-matching": "Adjoint Matching, lean adjoint (Domingo-Enrich et al. 2024); THEORY.md §6.3.11",
    "adjoint-matching-rsm": "Adjoint Matching, rsm's earlier form (g^2-weighted score regression); "
                            "THEORY.md §6.3.11",
    "draft": "DRaFT-K (Clark et al. 2024): pathwise; THEORY.md §6.3.11",
    "draft-rsm": "DRaFT-K on the flow ODE, rsm's earlier form; THEORY.md §6.3.11",
    "refl": "ReFL (Xu et al. 2023, ImageReward): one Tweedie jump; THEORY.md §6.3.11",
}

SOURCES["flow-grpo"] = ("Flow-GRPO (Liu et al. 2025) as released: " + _conv.source_of("flow-grpo")
                        + "; THEORY.md §6.3.5")
SOURCES["flow-grpo-exact"] = ("Flow-GRPO in rsm's exact form (group std, masked mean THEORY.md "
                              "§9.2.3, exact Gaussian KL, beta 0.004); THEORY.md §6.3.5")
SOURCES["dance-grpo"] = ("DanceGRPO (Xue et al. 2025) as released: " + _conv.source_of("dance-grpo")
                         + "; THEORY.md §6.3.5")
SOURCES["ddpo"] = ("DDPO (Black et al. 2024) as released: " + _conv.source_of("ddpo")
                   + "; THEORY.md §6.3.5")
SOURCES["refl"] = ("ReFL (Xu et al. 2023) as released: " + _conv.source_of("refl")
                   + "; THEORY.md §6.3.11")
SOURCES["branch-grpo"] = ("Branch-GRPO (Li et al., arXiv 2509.06040) as released: "
                          + _conv.source_of("branch-grpo") + "; THEORY.md §6.3.8")
SOURCES["mixgrpo"] = ("MixGRPO (Li et al., arXiv 2507.21802) as released: "
                      + _conv.source_of("mixgrpo"))
for _name, _paper in (("vgg-flow", "VGG-Flow, pruned (Liu et al., NeurIPS 2025) as released"),
                      ("residual-ndb", "Residual nabla-DB, pruned (Nabla-GFlowNet, Liu et al., ICLR "
                                       "2025) as released"),
                      ("sqdf", "SQDF without consistency model / replay buffer (Kang et al., ICLR "
                               "2026) as released"),
                      ("adjoint-matching", "Adjoint Matching, lean adjoint (Domingo-Enrich et al. "
                                           "2024) as released"),
                      ("draft", "DRaFT-K (Clark et al. 2024; no official code) as AlignProp's "
                                "script releases it")):
    SOURCES[_name] = f"{_paper}: {_conv.source_of(_name)}; " + SOURCES[_name].split("; ")[-1]
for _name in _conv.UNVERIFIED:
    SOURCES[_name] += "; " + _conv.source_of(_name)

PRESETS: dict[str, Preset] = {name: Preset(name=name, source=SOURCES[name], **options)
                              for name, options in _PRESETS.items()}


def names() -> list[str]:
    """The preset names."""
    return sorted(PRESETS)


def get(name: str, **overrides: Any) -> Preset:
    """The preset `name` with overrides applied (unknown names and options are errors)."""
    if not isinstance(name, str) or name not in PRESETS:
        hint = suggest(name, PRESETS) if isinstance(name, str) else ""
        raise ValueError(f"unknown method {name!r}{hint}; known: {names()}")
    return PRESETS[name].replace(**overrides)
