"""The training conventions of the peers' released code, as explicit, validated preset options
(issue 15): one name per convention across presets, the released scripts as the defaults of the
presets that carry their names, rsm's earlier (RSM-paper) form as a named value.

    adv_std        "group"   the std of the sample's own group (or tracker buffer)
                   "batch"   the std of every valid reward of the rollout batch (Flow-GRPO's
                             `sample.global_std = True`)
    adv_ddof       0 (population std, numpy's default) or 1 (torch.std's unbiased default)
    adv_eps        added to the std before dividing
    adv_tracker    None          group statistics of this batch only (GRPO)
                   "per_prompt"  DDPO's PerPromptStatTracker: a buffer of the last
                                 `adv_buffer_size` rewards per prompt (condition), kept across
                                 iterations; with fewer than `adv_min_count` rewards buffered
                                 the whole batch's mean and std are used instead
    zero_std       what happens to samples that carry no signal:
                   "mask"  rsm's masked mean (THEORY.md §9.2.3): zero-std groups get A = 0, no
                           policy term and no place in the normaliser; their KL rows still count
                   "drop"  Flow-GRPO: every sample whose advantage is exactly 0 (all samples of a
                           zero-std group, and any sample exactly at its group's mean) is removed
                           from the batch, KL rows and normaliser included
                   "keep"  DDPO / DanceGRPO: no special case, A = (r - mean) / (std + eps) and
                           every sample is a row of the mean
    kl_denominator "exact"     the Gaussian KL of the step, |mu - mu_ref|^2 / (2 std^2),
                               std^2 = s~^2 dt (rsm's form, THEORY.md §11)
                   "released"  Flow-GRPO's train_sd3.py: |mu - mu_ref|^2 / (2 s~^2), s~ = std /
                               sqrt(dt), i.e. dt times the exact KL (its beta is 10x rsm's on a
                               10-step grid for the same pull)
                   "std2"      SQDF's sd_pipeline.py: mean_d |mu - mu_ref|^2 / std^2 (no 2; with
                               alpha it is 2 alpha times the exact per-element KL)
    timestep_subset with a fractional train_steps f (ignored otherwise):
                   "per_rollout"  one random subset of max(1, round(f (S - 1))) of the steps
                                  0..S-2, shared by the rollout's samples (rsm's earlier form)
                   "per_sample"   DanceGRPO: every sample its own random int(f (S - 1)) steps
                                  among 0..S-2 (a per-sample permutation, its first entries)
                   "trunks"       Nabla-GFlowNet's low_var_subsampling: the S steps cut into
                                  n = int(f S) equal trunks; per sample the last step S-1 and one
                                  uniformly random step of each trunk (n + 1 rows; the last step
                                  can be drawn twice and then counts twice)
                   "trunks_min1"  VGG-Flow's: the same, step 0 (t = 1) replaced by step 1
                                  (its perms.clamp(min=1))
                   "one_per_sample"  SQDF: per sample one uniformly random step among all S
                                  (f is ignored)
                   "stratified"   Adjoint Matching's sample_time_indices: per rollout k =
                                  max(2, round(f S)) of the trained steps (train_steps itself: f
                                  of them), k // 2 among the first 60% and the rest among the
                                  last 40%, shared by the rollout's samples
    am_loss        Adjoint Matching's regression: "released" (soc-fine-tuning-sd's am_trainer:
                   per trained step |(mu - mu_ref)/std + std a|^2 summed over dimensions, a the
                   lean adjoint of -r/alpha: (K/std)^2 |u - u_ref - std^2 a~ / K|^2 with a~ = -a;
                   on the memoryless flow SDE |dt| times "rsm") or "rsm" (rsm's earlier form:
                   g(t)^2 |s - s_ref - a~|^2 in score units, THEORY.md §6.3.11)
    am_adjoint     which lean adjoint a step's regression reads: "state" (the release and the
                   paper: a~_k at the step's own state x_k) or "next" (a~_{k+1}, at the next
                   state: std^2 E[a~_{k+1} | x_k] is the tilted discrete chain's optimal mean
                   shift exactly, where a~_k = J_k^T a~_{k+1} carries an O(dt) bias J_k^T)
    reward_reduce  SQDF's per-sample loss alpha KL - gamma_d Q(x'): "sum" (released: Q is one
                   scalar per sample, its gradient not divided by the dimensions while the KL is
                   a per-element mean; and at the last step Q(x') = r(x'), x' the sample itself,
                   as sd_pipeline.py's timestep_gamma == 0 mask) or "mean" (rsm's earlier form:
                   the whole row loss a per-element mean, the reward term divided by D, Q by the
                   Tweedie jump at every step)
    sde_sigma      the flow SDE's noise s~: "flow-grpo" (a sqrt(t / (1 - t)), Flow-GRPO's) or
                   "constant" (s~ = a = noise_level at every t, DanceGRPO's eta: sampler
                   "sde-const")
    refl_sampler   ReFL's rollout down to its late step: "stochastic" (the released ReFL: the
                   path's ancestral sampler, DDPMScheduler.step on VP) or "deterministic" (ODE /
                   DDIM, rsm's earlier form)
    reward_hinge   ReFL's loss: None (-lambda r) or h (the released lambda relu(h - r), h = 2 on
                   ImageReward's scale: samples with r >= h carry no gradient)
    vp_schedule    the VPPath schedule a Trainer builds when it is given no path ("linear": rsm's
                   continuous VP; "scaled_linear": SD1.x's discrete table, DDPO's base model)
    adv_zero_tol   tree rollouts (Branch-GRPO): a (root, depth) group whose std is below this
                   carries no signal (A = 0); the released script calls std < 1e-6 zero, rsm's
                   earlier form only std == 0 (0.0)
    zero_std "keep" on tree rollouts: the zero-signal transitions stay rows of the mean (the
                   released Branch-GRPO divides every transition's loss by the same count),
                   "mask" leaves them out of the normaliser (rsm's earlier form)
    split_steps    tree rollouts: the listed split steps (Branch-GRPO's --tree_split_points) or
                   None (`split` evenly spaced steps, rsm's earlier form)
    split_noise_scale tree rollouts: a split step's children are drawn with this times the
                   step's std while their density keeps the step's std (Branch-GRPO's
                   tree_split_noise_scale, 4.0 in its script; 1.0: rsm's earlier form)
    mix_window     MixGRPO's sliding SDE window (rsm.conventions.mix_window): None (every step
                   stochastic) or its size W; the window [b, min(b + W, S - 2)) is SDE, every other
                   step the Euler ODE, and only the window is trained; b moves by `mix_stride`
                   steps every `mix_interval` iterations and rolls back to 0 past S - 2

SOURCES records, per preset, the repository, commit and files whose defaults it follows. The keys
are options of rsm.methods.Preset, validated there (values and contradictions, naming both
keys); this module holds their numerics."""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

ADV_STD = ("group", "batch")
ZERO_STD = ("mask", "drop", "keep")
KL_DENOMINATOR = ("exact", "released", "std2")
AM_LOSS = ("released", "rsm")
AM_ADJOINT = ("state", "next")
REWARD_REDUCE = ("sum", "mean")
TIMESTEP_SUBSET = ("per_rollout", "per_sample", "trunks", "trunks_min1", "one_per_sample",
                   "stratified")
ADV_TRACKER = (None, "per_prompt")
SDE_SIGMA = ("flow-grpo", "constant")
VP_SCHEDULES = ("linear", "cosine", "scaled_linear", "ddpm_linear")
REFL_SAMPLER = ("deterministic", "stochastic")

# The convention keys and rsm's earlier (RSM-paper) values, which every zeroth-order preset
# without a released counterpart keeps.
RSM_DEFAULTS: dict[str, Any] = {
    "adv_std": "group", "adv_ddof": 0, "adv_tracker": None, "adv_buffer_size": 16,
    "adv_min_count": 16, "zero_std": "mask", "kl_denominator": "exact",
    "timestep_subset": "per_rollout", "mix_window": None, "mix_interval": 25, "mix_stride": 1,
}

FLOW_GRPO = "github.com/yifan123/flow_grpo@ac4c86e8cae021841f1fde853d340e0db67690dd"
DDPO = "github.com/kvablack/ddpo-pytorch@1958463f020112c9a7bc85768d296daacc2e1b4b"
DANCE_GRPO = "github.com/XueZeyue/DanceGRPO@15cc71d53cc2e6e18a68ee607d5fb6ba9a99e344"
REFL = "github.com/THUDM/ImageReward@c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb"
BRANCH_GRPO = "github.com/Fredreic1849/BranchGRPO@19fbb9fc92ad1857212f3b664d6e9ff80c8b3804"
MIXGRPO = "github.com/Tencent-Hunyuan/MixGRPO@e5cdd6a427778d8c8b2e7a48ce16972141adbe7c"

SOURCES: dict[str, dict[str, Any]] = {
    "flow-grpo": {
        "repository": "yifan123/flow_grpo", "commit": FLOW_GRPO.split("@")[1],
        "files": ["scripts/train_sd3.py", "config/grpo.py (geneval_sd3)", "config/base.py",
                  "flow_grpo/stat_tracking.py", "flow_grpo/diffusers_patch/sd3_sde_with_logprob.py"],
        "notes": "SD3.5 FlowMatchEuler grid (shift 3, 10 steps), s~ = 0.7 sqrt(t/(1-t)) (t_max = "
                 "sigmas[1] at t = 1); timestep_fraction 0.99 -> the first int(0.99 S) = S - 1 "
                 "steps; PerPromptStatTracker(global_std=True): group mean, std of the whole "
                 "batch (ddof 0) + 1e-4, cleared every epoch; samples with A == 0 dropped; PPO "
                 "clip 1e-4 on the per-element-mean log-prob, advantages clamped to +-5; KL "
                 "mean_d|mu - mu_ref|^2 / (2 s~^2), beta 0.04; loss = mean over samples, "
                 "accumulated over steps and micro-batches (mean over rows); lr 3e-4, weight "
                 "decay 1e-4, grad-norm clip 1.0, EMA on. Not reproduced: two optimizer steps "
                 "per epoch (gradient_accumulation_steps = num_batches_per_epoch / 2) and the "
                 "padding of the kept samples to a multiple of num_batches_per_epoch.",
    },
    "ddpo": {
        "repository": "kvablack/ddpo-pytorch", "commit": DDPO.split("@")[1],
        "files": ["scripts/train.py", "config/base.py", "config/dgx.py (compressibility)",
                  "ddpo_pytorch/stat_tracking.py", "ddpo_pytorch/diffusers_patch/ddim_with_logprob.py"],
        "notes": "SD1.x DDIMScheduler: scaled_linear betas (0.00085, 0.012, 1000), 'leading' "
                 "spacing with steps_offset 1, final alpha_bar = alpha_bar[0]; 50 steps, eta = "
                 "1 (DDPM's posterior std), every step stochastic and trained; PerPromptStatTracker"
                 "(buffer_size=16, min_count=16): std ddof 0 + 1e-6, batch statistics while a "
                 "prompt has fewer than min_count rewards; no zero-std special case; PPO clip "
                 "1e-4 on the per-element-mean log-prob, advantages clamped to +-5; no KL; loss "
                 "= mean over rows; lr 3e-4, weight decay 1e-4, grad-norm clip 1.0.",
    },
    "dance-grpo": {
        "repository": "XueZeyue/DanceGRPO", "commit": DANCE_GRPO.split("@")[1],
        "files": ["fastvideo/train_grpo_flux.py", "scripts/finetune/finetune_flux_grpo.sh"],
        "notes": "grid shift(linspace(1, 0, S + 1)) with shift 3 (16 steps in the script); "
                 "flux_step: s~ = eta = 0.3 constant, std = eta sqrt(dt), the same SDE mean as "
                 "Flow-GRPO's; the last step never trained; per sample a random permutation of "
                 "steps 0..S-2, its first int(0.6 (S - 1)); group advantages with torch.std "
                 "(ddof 1) + 1e-8, no zero-std special case; one initial noise per group "
                 "(init_same_noise); PPO clip 1e-4, advantages clamped to +-5; no KL; loss = "
                 "mean over rows; lr 1e-5, weight decay 1e-4, grad-norm clip 1.0.",
    },
    "refl": {
        "repository": "THUDM/ImageReward", "commit": REFL.split("@")[1],
        "files": ["ImageReward/ReFL.py", "scripts/train_refl.sh"],
        "notes": "SD1.4 DDPMScheduler (scaled_linear, 'leading' + steps_offset 1, fixed_small "
                 "variance: DDPM's posterior std), set_timesteps(40); per batch a random step "
                 "mid in 30..39: ancestral steps 0..mid-1 without gradient, then one network "
                 "call at timesteps[mid] and its pred_original_sample (Tweedie); loss "
                 "relu(2 - r).mean() * grad_scale (1e-3); lr 1e-5, grad-norm clip 1, EMA. The "
                 "hinge at 2 is on ImageReward's score scale.",
    },
}

SOURCES["branch-grpo"] = {
    "repository": "Fredreic1849/BranchGRPO", "commit": BRANCH_GRPO.split("@")[1],
    "files": ["fastvideo/train_branchgrpo_flux.py", "scripts/finetune/finetune_flux_branchgrpo_8gpus.sh"],
    "notes": "grid shift(linspace(1, 0, S + 1)) with shift 3, 20 steps; flux_step_with_split: the "
             "SDE mean with a constant s~ = eta = 0.3, std = eta sqrt(dt) (sampler sde-const); split "
             "points 0,3,6,9 (2 children each: 16 leaves per prompt), the split children drawn "
             "with tree_split_noise_scale 4.0 times the std their log-probability assumes "
             "(split_noise_scale); every transition of the "
             "tree trained, the last step included (ignore_last and timestep_fraction are parsed "
             "but unused by the tree path); node reward = mean of its descendant leaves "
             "(tree_prob_weighted off); advantages per (tree, depth): (r - mean) / (torch.std "
             "(ddof 1) + 1e-8), A = 0 when std < 1e-6, every transition kept in the loss; PPO "
             "clip 1e-3 on the per-element-mean log-prob, advantages clamped to +-5; no KL; per "
             "transition loss / (gradient_accumulation_steps x floor(transitions / trees)); lr "
             "1e-5, weight decay 1e-4, grad-norm clip 1.0; no depth or width pruning. Not "
             "reproduced: an optimizer step every 12 shuffled transitions (rsm: one step over "
             "the rollout, the mean over its transitions), the network's time input "
             "int(1000 sigma) / 1000 (rsm calls it at sigma).",
}
SOURCES["mixgrpo"] = {
    "repository": "Tencent-Hunyuan/MixGRPO", "commit": MIXGRPO.split("@")[1],
    "files": ["fastvideo/train_grpo_flux.py", "fastvideo/utils/grpo_states.py",
              "fastvideo/utils/sampling_utils.py", "scripts/finetune/finetune_flux_grpo_MixGRPO.sh"],
    "notes": "grid shift(linspace(1, 0, S + 1)) with shift 3, 25 steps; --flow_grpo_sampling: "
             "Flow-GRPO's SDE, s~ = 0.7 sqrt(t/(1-t)) (t_max = sigmas[1] at t = 1), inside the "
             "window, Euler ODE x + v dt outside; training_strategy 'part' with "
             "GRPOTrainingStates('progressive', group_size 4, iters_per_group 25, "
             "prog_overlap_step 1, roll_back, max_timesteps S - 2): window [b, min(b + 4, S - 2)), "
             "b = (iteration // 25) mod (S - 1); only the window's steps trained; one initial "
             "noise per prompt (init_same_noise); group advantages (r - mean) / (torch.std "
             "(ddof 1) + 1e-8), no zero-std case, clamped to +-5; PPO clip 1e-4 on the per-"
             "element-mean log-prob; kl_coeff 0; loss = mean over samples and window steps; lr "
             "1e-5, weight decay 1e-4, grad-norm clip 1.0. Not reproduced: an optimizer step "
             "every 3 samples (gradient_accumulation_steps 3), the network's time input "
             "int(1000 sigma) / 1000, multi-reward advantage sums (one reward here: the same), "
             "the DPM-solver variants (dpm_algorithm_type 'null' by default).",
}

VGG_FLOW = "github.com/lzzcd001/vggflow@978f1fb1daeec258e029ecfc6e72fd14399f382c"
NABLA_GFN = "github.com/lzzcd001/nabla-gfn@6b74d4cede0d06ffa844cb776acf060e50ec44ea"
SQDF = "github.com/Shin-woocheol/SQDF@68861b22afb96e991949c0f968af291924cee753"
ADJOINT_MATCHING = "github.com/microsoft/soc-fine-tuning-sd@489f904a824fa3f6f2700f3b9a36826318f4d2ac"
ALIGNPROP = "github.com/mihirp1998/AlignProp@b22918afd53f254f2ba66eb1233d94121aade5fc"


def _source(url: str, files: list[str], notes: str) -> dict[str, Any]:
    repository, commit = url[len("github.com/"):].split("@")
    return {"repository": repository, "commit": commit, "files": files, "notes": notes}


SOURCES.update({
    "vgg-flow": _source(VGG_FLOW, ["train_vggflow.py", "config/default_config.py", "run.sh"],
        "SD3-medium's FlowMatchEuler grid (shift 3), 20 Euler (ODE) steps; g = grad r at x0_hat "
        "= x + (sigma_last - sigma) sg(v) (identity Jacobian), target v_ref - lambda eta(sigma) g "
        "with eta_mode 'quad' (1 - sigma)^2 (run.sh sets 'linear'); loss mean over elements, "
        "accumulated over the trained steps and micro-batches; timestep_fraction 0.25 with "
        "low_var_subsampling: the last step and one random step in each of int(0.25 S) trunks, "
        "indices clamped to >= 1; lr 1e-3 (run.sh), weight decay 1e-4, grad-norm clip 1.0. Not "
        "reproduced: the value network g_phi and its consistency / terminal losses (rsm's preset "
        "is the pruned method; rsm.auxiliary adds g_phi), the clipping of |g| at the previous "
        "epoch's 0.8-quantile, reward_scale 1e4 (the aesthetic score's scale; 1 on the toy)."),
    "residual-ndb": _source(NABLA_GFN, ["train_nablagfn.py", "config/default_config.py",
                                        "lib/diffusion/inference_step.py", "README.md (command)"],
        "SD1.5's DDIMScheduler with eta 1 (scaled_linear table, leading + steps_offset 1, final "
        "alpha_bar = alpha_bar[0]), 50 steps; forward residual score_pf - (score_pf_ref + lambda "
        "alpha_bar(t') grad_{x'} r(x0_hat_policy(x'))) with score_pf = -(x' - mu)/std^2 "
        "(reward_adaptive_mode 'squared'), the gradient through the policy network at t' = t - "
        "dt clamped to 0; loss mean over elements + unet_reg_scale mean|eps - eps_old|^2; "
        "timestep_fraction 0.1 with low_var_subsampling (last step + one per trunk); lr 1e-3, "
        "weight decay 1e-4, grad-norm clip 1. reward_scale 1e4 and unet_reg_scale 2e3 (README): "
        "lambda 1 and reg 0.2 on the toy (their ratio). Not reproduced: the residual log-flow "
        "network and the reverse (backward) loss (rsm's preset is the pruned method)."),
    "sqdf": _source(SQDF, ["T2I/sd_pipeline.py", "T2I/alignprop_trainer.py",
                           "T2I/config/alignprop_config.py", "T2I/aesthetic.sh"],
        "SD1.5's DDIM with eta 1, 50 steps; per sample one uniformly random step i of the 50, "
        "earlier steps without gradient; x' = mu_theta + std z, Q(x') = r(x0_hat_ref(x')) "
        "through the reference network at t_{i+1} (r(x') itself at the last step); loss per "
        "sample -(gamma^(S-1-i) Q - alpha mean_d |mu_ref - mu|^2 / std^2), mean over samples; "
        "gamma 0.9, alpha 2.0 (aesthetic.sh), lr 1e-3, weight decay 1e-4, grad-norm clip 1. Not "
        "reproduced: the consistency model for Q and the replay buffer (use_consistency_model, "
        "use_buffer), the mask rewards > 0 (always 1 on the aesthetic score)."),
    "adjoint-matching": _source(ADJOINT_MATCHING, ["src/trainers/am_trainer.py",
                                                   "src/trainers/soc_trainer.py",
                                                   "src/SOC_DDIM_scheduler.py",
                                                   "configs/single_prompt_993.yaml"],
        "lean adjoint a_S = -reward_multiplier grad r(x0), a_k = a_{k+1} + J_x(mu_ref(x_k) - "
        "x_k)^T a_{k+1} (the reference sampler's mean map, noise 0); loss per trained step "
        "sum_d ((mu_theta - mu_ref)/std + std a)^2, mean over samples and steps; 4 steps per "
        "batch (num_timesteps_to_load_train), 2 among the first round(0.6 S) and 2 after, shared "
        "by the batch; gradient_clip 0 (none). reward_multiplier 100 is 1/alpha on ImageReward's "
        "scale (alpha 1 on the toy). Not reproduced: the path (SD1.5's DDIM with eta 1 on its own "
        "betas 0.002..0.009, 'trailing' grid, final alpha_bar (1 + alpha_bar[t_last]) / 2: the "
        "preset keeps the paper's memoryless flow SDE, where the released loss is |dt| times "
        "the paper's), the per-sample quantile clipping of the loss (0.9, EMA threshold), lr "
        "1e-5 with AdamW betas (0.9, 0.95) and warm-up."),
    "draft": _source(ALIGNPROP, ["main.py", "sd_pipeline.py", "alignprop_trainer.py",
                                 "config/alignprop_config.py", "aesthetic_k1.sh"],
        "DRaFT (Clark et al.) has no official release; AlignProp's script with backprop_strategy "
        "'fixed' (value 49: the last of 50 steps, aesthetic_k1.sh) is DRaFT-1. SD1.5's DDIM with "
        "eta 1 (the noises of the stochastic steps held fixed), scaled_linear, leading grid; the "
        "network outputs of the earlier steps detached; loss mean over samples of -r times "
        "loss_coeff 0.01 (and grad_scale 1); lr 1e-3, weight decay 1e-4, grad-norm clip 1. Not "
        "reproduced: loss_coeff 0.01 (a scale for the aesthetic score; reward_scale 1 here), "
        "AlignProp's own default truncation (random, gaussian mean 42 std 5)."),
})

# Presets named after published methods whose released code could not be read here (recorded
# so the table says so rather than implying fidelity).
UNVERIFIED: dict[str, str] = {
    "tempflow-grpo": "searched (find_repos TempFlow, code search 'TempFlow-GRPO noise-aware "
                     "weighting'): Shredded-Pork/TempFlow-GRPO@afe6d339d480 and fusiming3/"
                     "TempFlow-GRPO@bfeb7d42 hold the README / paper only (no training code; "
                     "the ICLR 2026 notes at papernotes.org list 'Code: TBD'): the preset "
                     "follows the paper (arXiv 2508.04324) as written in THEORY.md §6.3.9",
    "grpo-guard": "searched (find_repos GRPO-Guard / GRPOGuard, code search 'GRPO-Guard "
                  "RatioNorm'): hxm2023/GRPO-Guard is an unrelated project, ADZzuKi/FlowSE-"
                  "GRPOGUARD a third party's speech-enhancement adaptation; no release by the "
                  "authors (project page jingw193.github.io/GRPO-Guard has no code link; the CVPR "
                  "2026 notes at papernotes.org: 'Code: Not released'): the preset follows the "
                  "paper (arXiv 2510.22319) as written in THEORY.md §6.3.10",
    "pcpo": "the authors' release github.com/jaylee2000/pcpo (named in arXiv 2509.25774) is not "
            "in the index (fetch refused, find_files empty; also searched find_repos PCPO, "
            "find_string 'Proportional Credit Policy Optimization'); the preset follows the "
            "paper as written in THEORY.md §6.3.7, whose reweighting (zeta dt, zeta = "
            "4.3152134639895925) is the one of the RSM paper's reimplementation by the same "
            "first author, jaylee2000/rsm@0bed514ac6ec sd35_zeroth_order/flow_grpo/"
            "sd3_train_shared.py (which runs it, like grpo-guard and tempflow-grpo, on "
            "Flow-GRPO's sampler configuration, config/sd3_matrix.py)",
    "pcpo-base": "the PCPO release is not in the index (see pcpo): follows the paper "
                 "(THEORY.md §6.3.5)",
    "pcpo-diffusion": "the PCPO release is not in the index (see pcpo): follows the paper "
                      "(THEORY.md §6.3.6) and the RSM paper's sd15_zeroth_order reimplementation "
                      "('uw-sigma', jaylee2000/rsm@0bed514ac6ec)",
}


def source_of(name: str) -> str:
    """'repository@commit: files' of a preset that follows released code, else '-'."""
    s = SOURCES.get(name)
    if s is None:
        return "unverified: " + UNVERIFIED[name] if name in UNVERIFIED else "-"
    return f"{s['repository']}@{s['commit'][:12]}: {', '.join(f.split(' ')[0] for f in s['files'])}"


def is_legacy(cfg: dict) -> bool:
    """True when the preset's advantage conventions are rsm's earlier ones (the C
    rsm_group_advantages path, bitwise as before)."""
    return (cfg.get("adv_std", "group") == "group" and cfg.get("adv_ddof", 0) == 0
            and cfg.get("adv_tracker") is None and cfg.get("zero_std", "mask") == "mask")


def _std(x: np.ndarray, ddof: int) -> float:
    """numpy's std with ddof; one value and ddof 1 gives NaN in torch, 0 here (no signal)."""
    if x.size <= ddof:
        return 0.0
    return float(np.std(x, ddof=ddof))


def assign_advantages(batches: list, adv: np.ndarray, mask: np.ndarray, pending: Any,
                      start: int = 0) -> None:
    """Hand batch-level advantages back to the rollout batches they were computed over: the
    batches' rows are consecutive in adv/mask from `start` (a data-parallel rank's first global
    row, else 0); each keeps its slice (mask also by its own validity), the tracker's pending
    update goes to the first batch only, so it is committed once."""
    for j, b in enumerate(batches):
        n = len(b.rewards)
        b.adv, b.mask = adv[start:start + n], mask[start:start + n] & b.valid
        b["tracker_update"] = pending if j == 0 else None
        start += n


def group_advantages(rewards: np.ndarray, keys: np.ndarray, valid: np.ndarray, cfg: dict,
                     tracker: "PromptTracker | None" = None,
                     prompts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Any]:
    """Advantages A and the signal mask of one rollout batch under the preset's conventions
    (float64). rewards[n], keys[n] (group ids), valid[n]; invalid rewards take no part in any
    statistic and get A = 0, mask False. With adv_tracker='per_prompt', `tracker` holds the
    buffers and prompts[n] the prompt ids; the tracker is NOT changed: the returned pending
    update is committed by PromptTracker.commit once the step succeeds.
    Returns (A clipped to +-adv_clip (0: no clip), mask, pending tracker update or None)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    n = rewards.shape[0]
    valid = np.asarray(valid, dtype=bool)
    ddof, eps = int(cfg.get("adv_ddof", 0)), float(cfg["adv_eps"])
    adv = np.zeros(n)
    pending = None
    if cfg.get("adv_tracker") == "per_prompt":
        if tracker is None or prompts is None:
            raise ValueError("group_advantages(): adv_tracker='per_prompt' needs a tracker and prompts")
        adv_v, pending = tracker.advantages(np.asarray(prompts)[valid], rewards[valid], eps, ddof)
        adv[valid] = adv_v
    else:
        keys = np.asarray(keys)
        batch_std = _std(rewards[valid], ddof) if cfg.get("adv_std", "group") == "batch" else None
        for k in np.unique(keys[valid]):
            sel = valid & (keys == k)
            r = rewards[sel]
            std = _std(r, ddof) if batch_std is None else batch_std
            adv[sel] = (r - np.mean(r)) / (std + eps)
    zero = cfg.get("zero_std", "mask")
    if zero == "drop":
        mask = valid & (adv != 0.0)
    elif zero == "keep":
        mask = valid.copy()
    else:  # "mask": zero-std groups carry no signal
        mask = valid.copy()
        keys = np.asarray(keys)
        for k in np.unique(keys[valid]):
            sel = valid & (keys == k)
            if np.all(rewards[sel] == rewards[sel][0]):
                mask[sel] = False
                adv[sel] = 0.0
    clip = float(cfg.get("adv_clip", 0.0))
    if clip > 0:
        adv = np.clip(adv, -clip, clip)
    return adv, mask, pending


class PromptTracker:
    """DDPO's per-prompt statistics (ddpo_pytorch/stat_tracking.py, read not copied): for each
    prompt a buffer of its last `buffer_size` rewards, kept across iterations. A batch's
    advantages: each prompt's rewards are appended to its buffer (in batch order); with at least
    `min_count` buffered, A = (r - mean(buffer)) / (std(buffer) + eps), else the batch's mean and
    std (over all prompts) are used."""

    def __init__(self, buffer_size: int, min_count: int) -> None:
        self.buffer_size, self.min_count = int(buffer_size), int(min_count)
        self.buffers: dict[Any, deque] = {}

    def advantages(self, prompts: np.ndarray, rewards: np.ndarray, eps: float,
                   ddof: int = 0) -> tuple[np.ndarray, dict]:
        """(A[n], pending buffers) without changing the tracker."""
        adv = np.zeros(rewards.shape[0])
        pending = {}
        for p in np.unique(prompts):
            sel = prompts == p
            key = p.item() if hasattr(p, "item") else p
            buf = deque(self.buffers.get(key, ()), maxlen=self.buffer_size)
            buf.extend(rewards[sel].tolist())
            pending[key] = rewards[sel].tolist()
            if len(buf) < self.min_count:
                mean, std = np.mean(rewards), _std(rewards, ddof)
            else:
                values = np.asarray(buf, dtype=np.float64)
                mean, std = np.mean(values), _std(values, ddof)
            adv[sel] = (rewards[sel] - mean) / (std + eps)
        return adv, pending

    def commit(self, pending: dict | None) -> None:
        """Append an iteration's rewards (the pending update of `advantages`, computed over all
        its micro-batches by Trainer.batch_advantages) to the buffers, in batch order."""
        for key, values in (pending or {}).items():
            self.buffers.setdefault(key, deque(maxlen=self.buffer_size)).extend(values)

    def state(self) -> dict:
        """A copy of the buffers (prompt -> list of rewards)."""
        return {k: list(v) for k, v in self.buffers.items()}


def hinge_active(cfg: dict, rewards: np.ndarray) -> np.ndarray:
    """1.0 where ReFL's hinge relu(h - r) has a gradient (r < h), else 0.0; all 1.0 without."""
    h = cfg.get("reward_hinge")
    if h is None:
        return np.ones(len(rewards))
    return (np.asarray(rewards) < h).astype(np.float64)


def hinge_loss(cfg: dict, rewards: np.ndarray) -> np.ndarray:
    """Per-sample ReFL loss before the scale: relu(h - r), or -r without a hinge."""
    h = cfg.get("reward_hinge")
    r = np.asarray(rewards, dtype=np.float64)
    return -r if h is None else np.maximum(h - r, 0.0)


def mix_window(cfg: Any, steps: int, iteration: int) -> tuple[int, int] | None:
    """MixGRPO's stochastic window at `iteration` (counted from 0) of an S = `steps` grid, or None
    without one (mix_window None): GRPOTrainingStates('progressive', prog_overlap, roll_back) of
    the release read as a formula. Its start b takes the positions 0, s, 2s, ... <= S - 2
    (s = mix_stride), each for mix_interval iterations, then rolls back to 0; the window is
    [b, min(b + W, S - 2)) (W = mix_window): steps S - 2 and S - 1 are never stochastic, and at
    b = S - 2 the window is empty (an all-ODE rollout that trains nothing, as released)."""
    size = cfg.get("mix_window")
    if size is None:
        return None
    last = steps - 2
    if last < 1:
        raise ValueError(f"finetune(): mix_window needs steps >= 3 (its window ends before step "
                         f"S - 2), got steps={steps}")
    stride, every = int(cfg["mix_stride"]), int(cfg["mix_interval"])
    begin = stride * ((int(iteration) // every) % (last // stride + 1))
    return begin, min(begin + int(size), last)


def kl_factor(cfg: dict, dt: float) -> float:
    """The factor on the exact step KL that gives the preset's KL term: 1 ("exact") or dt
    ("released": Flow-GRPO divides by 2 s~^2 = 2 std^2 / dt)."""
    return float(dt) if cfg.get("kl_denominator", "exact") == "released" else 1.0


def subset_count(fraction: float, steps: int, per_sample: bool) -> int:
    """Trained steps per sample (or rollout) of a fractional train_steps among 0..S-2."""
    if per_sample:   # DanceGRPO: int(len(timesteps) * timestep_fraction)
        return int((steps - 1) * fraction)
    return max(1, int(round(fraction * (steps - 1))))


def trunk_counts(u: np.ndarray, steps: int, fraction: float, min_step: int = 0) -> np.ndarray:
    """Nabla-GFlowNet's / VGG-Flow's low-variance step subsampling (read in
    lzzcd001/nabla-gfn train_nablagfn.py and lzzcd001/vggflow train_vggflow.py): the steps
    0..S-1 cut into n = int(f S) trunks of S / n consecutive steps; each sample trains the last
    step and one uniformly random step of every trunk (their first 1 + n permuted indices).
    u[N, n]: uniform draws in [0, 1). Steps below min_step are moved to min_step (VGG-Flow's
    clamp(min=1)). Returns int counts [N, S] (a step drawn twice is trained twice)."""
    n_trunks = trunk_number(fraction, steps)
    size = steps // n_trunks
    rows = u.shape[0]
    counts = np.zeros((rows, steps), dtype=np.int64)
    counts[:, steps - 1] += 1
    for k in range(n_trunks):
        pick = k * size + np.minimum((u[:, k] * size).astype(np.int64), size - 1)
        np.add.at(counts, (np.arange(rows), np.maximum(pick, min_step)), 1)
    return counts


def trunk_number(fraction: float, steps: int) -> int:
    """int(f S) trunks, which must divide S (the released scripts assert both)."""
    n = int(steps * fraction)
    if n < 1 or steps % n:
        raise ValueError(f"finetune(): train_steps={fraction} with steps={steps} cuts the steps into "
                         f"int({fraction} x {steps}) = {n} trunks; it must be >= 1 and divide steps "
                         "(timestep_subset 'trunks', the released low_var_subsampling)")
    return n


def stratified_steps(u: np.ndarray, candidates: list[int], count: int) -> list[int]:
    """Adjoint Matching's sample_time_indices (microsoft/soc-fine-tuning-sd am_trainer.py): of
    the candidate steps, count // 2 distinct ones among the first round(0.6 m) and the rest
    among the others, one draw per rollout. u: uniform draws, one per candidate (a random
    permutation of each part by argsort)."""
    m = len(candidates)
    middle = int(round(m * 0.6))
    first, second = count // 2, count - count // 2
    if first > middle or second > m - middle:
        raise ValueError(f"finetune(): {count} stratified steps do not fit the {m} trained steps "
                         f"({middle} in the first 60%, {m - middle} after); lower train_steps")
    lo = np.argsort(u[:middle], kind="stable")[:first]
    hi = middle + np.argsort(u[middle:m], kind="stable")[:second]
    return sorted(candidates[int(i)] for i in np.concatenate([lo, hi]))


def stratified_count(fraction: float, steps: int) -> int:
    """Adjoint Matching's num_timesteps_to_load_train as a fraction f of the S steps:
    max(2, round(f S))."""
    return max(2, int(round(fraction * steps)))


def expected_rows(rule: Any, fraction: float, steps: int) -> list[float] | None:
    """Expected trained rows per sample at each step under the per-sample / stratified subset
    rules (rsm.methods.influence); None for the rules that are not these."""
    if rule == "one_per_sample":
        return [1.0 / steps] * steps
    if rule in ("trunks", "trunks_min1"):
        size = steps // trunk_number(fraction, steps)
        rows = [1.0 / size] * steps
        rows[-1] += 1.0
        if rule == "trunks_min1":
            rows[1], rows[0] = rows[1] + rows[0], 0.0
        return rows
    if rule == "stratified":
        count, middle = stratified_count(fraction, steps), int(round(0.6 * steps))
        first, second = count // 2, count - count // 2
        return [first / middle if i < middle else second / (steps - middle) for i in range(steps)]
    return None
