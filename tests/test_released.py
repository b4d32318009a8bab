"""Method fidelity (DESIGN §4, issue 15): each preset named after a published method gives, on
the same rollout, the parameter gradient of that method's RELEASED training code in its default
configuration, float64, relative error <= 1e-9.

The oracles below are written in numpy from the formulas of the released scripts (read, not
copied; sources in rsm.conventions.SOURCES), independently of rsm's coefficients: their own
sampler step (the released `*_step_with_logprob` mean and std), their own log-probabilities
(per-element means), advantages (their stat trackers, batch-level statistics, zero-std rules,
ddof, epsilon), their KL form and denominator, which steps they train and their loss reduction.
Only the network is rsm's: outputs u = policy(x, t) and the chain to the parameters through
the model's VJP (checked against finite differences in test_mlp_grad.py). The gradient in u is
analytic here (no finite differences), so the comparison holds to rounding."""
import numpy as np
import pytest

import rsm
from toy_models import make_models, reward_failing_on_call

RTOL = 1e-9


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def move_policy(policy, seed, scale=0.02):
    """A later inner epoch: theta != theta_old, so ratios leave 1 and some rows clip."""
    np.from_dlpack(policy.params)[:] += scale * np.random.default_rng(seed).standard_normal(policy.num_params)


def fwd(model, x, t):
    return np.from_dlpack(model.forward(np.ascontiguousarray(x), float(t)))


def chain(policy, blocks):
    """sum over blocks (x, t, dL/du) of the policy's VJP: the parameter gradient."""
    g = np.zeros(policy.num_params)
    for x, t, cot in blocks:
        _, dp = policy.vjp(np.ascontiguousarray(x), float(t), np.ascontiguousarray(cot))
        g += np.from_dlpack(dp)
    return g


def ppo_cotangent(adv, x_next, mean, mean_old, std, dmean_du, clip):
    """d/du of max(-A rho, -A clip(rho, 1 -+ clip)) per row, rho = exp(lp - lp_old) with the
    released per-element-mean Gaussian log-prob, mean = (terms in x) + dmean_du * u. At a tie
    torch.maximum splits the gradient, which sums to the unclipped branch's inside the range."""
    d = x_next.shape[1]
    lp = np.mean(-((x_next - mean) ** 2) / (2 * std**2), axis=1)
    lp_old = np.mean(-((x_next - mean_old) ** 2) / (2 * std**2), axis=1)
    rho = np.exp(lp - lp_old)
    unclipped, clipped = -adv * rho, -adv * np.clip(rho, 1 - clip, 1 + clip)
    inside = (rho >= 1 - clip) & (rho <= 1 + clip)
    dl_drho = np.where((unclipped > clipped) | inside, -adv, 0.0)
    dlp_du = (x_next - mean) * dmean_du / (std**2 * d)
    return (dl_drho * rho)[:, None] * dlp_du


def reward_recorder(fn):
    calls = []

    def reward(x0, cond):
        r = fn(np.from_dlpack(x0))
        calls.append(np.asarray(r, dtype=np.float64).copy())
        return r
    return rsm.Reward(reward), calls


# ---- Flow-GRPO (yifan123/flow_grpo, scripts/train_sd3.py, config/grpo.py geneval_sd3) ----------

def sd3_grid(steps, shift=3.0, T=1000):
    """diffusers' FlowMatchEulerDiscreteScheduler with SD3.5's shift: its sigma_min is the
    shifted 1/T of the training table; set_timesteps(steps) spaces linearly from 1 to sigma_min
    and shifts again, then appends sigma = 0."""
    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)
    sigma_min = shifted(1.0 / T)
    return np.concatenate([shifted(np.linspace(1.0, sigma_min, steps)), [0.0]])


def flow_grpo_step(sigmas, j, x, noise_level):
    """sde_step_with_logprob: (x coefficient of the mean, d mean / d v, std, std_dev_t, dt)."""
    sigma, sigma_prev, sigma_max = sigmas[j], sigmas[j + 1], sigmas[1]
    dt = sigma_prev - sigma
    std_dev_t = np.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * noise_level
    cx = 1 + std_dev_t**2 / (2 * sigma) * dt
    cv = (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return cx, cv, std_dev_t * np.sqrt(-dt), std_dev_t, dt


def flow_grpo_released_grad(policy, ref, states, u_old, rewards, prompts, sigmas, cfg):
    """The gradient of one optimizer step of train_sd3.py on one epoch's samples."""
    n = rewards.shape[0]
    S = len(sigmas) - 1
    # PerPromptStatTracker(global_std=True), cleared every epoch
    adv = np.empty(n)
    for p in np.unique(prompts):
        sel = prompts == p
        adv[sel] = (rewards[sel] - np.mean(rewards[sel])) / (np.std(rewards) + 1e-4)
    keep = adv != 0                       # samples whose advantage is 0 everywhere are dropped
    adv = np.clip(adv, -5.0, 5.0)[keep]
    T = int(S * 0.99)                     # timestep_fraction 0.99: the first T steps
    blocks = []
    for j in range(T):
        x, x_next, t = states[j][keep], states[j + 1][keep], sigmas[j]
        cx, cv, std, std_dev_t, dt = flow_grpo_step(sigmas, j, x, cfg["noise_level"])
        u, u_r = fwd(policy, x, t), fwd(ref, x, t)
        mean, mean_old = cx * x + cv * u, cx * x + cv * u_old[j][keep]
        cot = ppo_cotangent(adv, x_next, mean, mean_old, std, cv, cfg["clip_eps"])
        # kl_loss = mean_d (mean - mean_ref)^2 / (2 std_dev_t^2), beta kl, mean over samples
        cot += cfg["kl"] * cv * (mean - (cx * x + cv * u_r)) / (std_dev_t**2 * x.shape[1])
        # torch.mean over the kept samples, accumulated over T steps (accelerate divides by T)
        blocks.append((x, t, cot / (keep.sum() * T)))
    return chain(policy, blocks), keep


def quantised(x0):
    """A reward with ties: many groups of 3 have zero std, some samples sit at their group mean."""
    return np.clip(np.round(x0[:, 0]), -1.0, 1.0)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_flow_grpo_gradient_equals_released_train_sd3(perturb):
    policy, ref = make_models(0)
    reward, calls = reward_recorder(quantised)
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=6, group_size=3, sampler_steps=6,
                          clip_eps=0.05, seed=3)
    cfg = trainer.cfg
    assert (cfg["adv_std"], cfg["zero_std"], cfg["kl_denominator"]) == ("batch", "drop", "released")
    assert cfg["kl"] == 0.04 and cfg["adv_eps"] == 1e-4 and cfg["adv_ddof"] == 0
    np.testing.assert_allclose(trainer.ts, sd3_grid(6), rtol=0, atol=1e-15)
    batch = trainer.rollout()
    states = batch["states"]
    u_old = [fwd(policy, states[j], trainer.ts[j]) for j in range(6)]
    rewards = calls[-1]
    prompts = np.arange(18) // 3
    if perturb:
        move_policy(policy, 7)
    g_rsm, _ = trainer.loss_and_grad(batch)
    g_rel, keep = flow_grpo_released_grad(policy, ref, states, u_old, rewards, prompts, trainer.ts, cfg)
    # the case is not trivial: some groups have zero std, some samples sit at their group mean,
    # and others carry signal
    stds = np.array([rewards[prompts == p].std() for p in range(6)])
    assert (stds == 0).any() and (stds > 0).any() and 0 < keep.sum() < 18
    at_mean = [(rewards[prompts == p] == rewards[prompts == p].mean()).any() for p in range(6)]
    assert any(a and s > 0 for a, s in zip(at_mean, stds))
    assert rel_err(g_rsm, g_rel) <= RTOL, rel_err(g_rsm, g_rel)


def convention_effects(method, variants, reward_fn, seed_models=0, **common):
    """Relative change of the gradient on one fixed rollout when one convention of `method` is
    switched to another value (the same seed: the same trajectories and rewards)."""
    policy, ref = make_models(seed_models)
    reward, _ = reward_recorder(reward_fn)
    trainers = [rsm.Trainer(policy, ref, reward, method, **common, **opts) for opts in [{}] + variants]
    batches = [t.rollout() for t in trainers]
    for b in batches[1:]:
        np.testing.assert_array_equal(b["states"], batches[0]["states"])
    move_policy(policy, 7)
    grads = [t.loss_and_grad(b)[0] for t, b in zip(trainers, batches)]
    return [rel_err(g, grads[0]) for g in grads[1:]]


def test_flow_grpo_each_released_convention_changes_the_gradient():
    """Each released convention matters on this rollout; rsm's earlier forms stay available as
    named values (and together as the variant preset flow-grpo-exact)."""
    variants = [{"adv_std": "group"}, {"zero_std": "mask"}, {"kl_denominator": "exact", "kl": 0.04},
                {"train_steps": "all"}]
    effects = convention_effects("flow-grpo", variants, quantised, batch_size=6, group_size=3,
                                 sampler_steps=6, clip_eps=0.05, seed=3)
    assert all(e > 1e-3 for e in effects), effects
    exact = rsm.methods.get("flow-grpo-exact")
    assert (exact["adv_std"], exact["zero_std"], exact["kl_denominator"], exact["kl"]) == \
        ("group", "mask", "exact", 0.004)


# ---- DDPO (kvablack/ddpo-pytorch, scripts/train.py, config/dgx.py compressibility) -------------

def sd_alphas_cumprod(T=1000, b0=0.00085, b1=0.012):
    betas = np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def ddpo_step(abar, k, k_prev, eta=1.0):
    """ddim_step_with_logprob (epsilon prediction, no sample clipping): mean = cx x + ce eps."""
    a, a_prev = abar[k], abar[max(k_prev, 0)]
    var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    std = eta * np.sqrt(var)
    # mean = sqrt(a_prev) (x - sqrt(1 - a) eps) / sqrt(a) + sqrt(1 - a_prev - std^2) eps
    cx = np.sqrt(a_prev / a)
    ce = -np.sqrt(a_prev) * np.sqrt(1 - a) / np.sqrt(a) + np.sqrt(1 - a_prev - std**2)
    return cx, ce, std


class DDPOTracker:
    """ddpo_pytorch/stat_tracking.py's PerPromptStatTracker (deque buffers, min_count)."""

    def __init__(self, buffer_size, min_count):
        self.buffer_size, self.min_count, self.stats = buffer_size, min_count, {}

    def update(self, prompts, rewards):
        adv = np.empty_like(rewards)
        for p in np.unique(prompts):
            r = rewards[prompts == p]
            buf = self.stats.setdefault(p, [])
            buf.extend(r.tolist())
            del buf[: max(0, len(buf) - self.buffer_size)]
            if len(buf) < self.min_count:
                mean, std = np.mean(rewards), np.std(rewards) + 1e-6
            else:
                mean, std = np.mean(buf), np.std(buf) + 1e-6
            adv[prompts == p] = (r - mean) / std
        return adv


def ddpo_released_grad(policy, states, u_old, adv, ks, abar, cfg):
    n, S = adv.shape[0], len(ks)
    adv = np.clip(adv, -5.0, 5.0)
    T = 1000
    blocks = []
    for j in range(S):          # timestep_fraction 1.0: every step
        x, x_next, t = states[j], states[j + 1], ks[j] / T
        cx, ce, std = ddpo_step(abar, ks[j], ks[j] - T // S)
        u = fwd(policy, x, t)
        cot = ppo_cotangent(adv, x_next, cx * x + ce * u, cx * x + ce * u_old[j], std, ce,
                            cfg["clip_eps"])
        blocks.append((x, t, cot / (n * S)))    # mean over the batch, accumulated over steps
    return chain(policy, blocks)


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_ddpo_gradient_equals_released_train_py_with_tracker_buffers(perturb):
    policy, ref = make_models(1)
    reward, calls = reward_recorder(lambda x: -np.sum((x - 0.3) ** 2, axis=1))
    S = 5
    trainer = rsm.Trainer(policy, ref, reward, "ddpo", batch_size=2, group_size=4, sampler_steps=S,
                          clip_eps=0.05, seed=5)
    cfg = trainer.cfg
    assert trainer.path.schedule == "scaled_linear" and cfg["grid"] == "leading"
    assert (cfg["adv_tracker"], cfg["adv_buffer_size"], cfg["adv_min_count"]) == ("per_prompt", 16, 16)
    assert cfg["adv_eps"] == 1e-6 and cfg["zero_std"] == "keep" and cfg["kl"] == 0.0
    ks = (np.arange(S)[::-1] * (1000 // S) + 1)          # 'leading' + steps_offset 1
    np.testing.assert_allclose(trainer.ts, np.concatenate([ks / 1000, [0.0]]), rtol=0, atol=0)
    trainer.step()                         # iteration 0: 8 rewards, the buffer below min_count
    batch = trainer.rollout()              # iteration 1: 16 buffered: the buffer's statistics
    states = batch["states"]
    u_old = [fwd(policy, states[j], trainer.ts[j]) for j in range(S)]
    if perturb:
        move_policy(policy, 8)
    g_rsm, _ = trainer.loss_and_grad(batch)
    tracker = DDPOTracker(16, 16)
    prompts = np.zeros(8, dtype=int)       # an unconditional model: one prompt
    adv0 = tracker.update(prompts, calls[0])
    adv1 = tracker.update(prompts, calls[1])
    np.testing.assert_allclose(adv0, (calls[0] - calls[0].mean()) / (calls[0].std() + 1e-6), rtol=1e-14)
    both = np.concatenate(calls[:2])
    np.testing.assert_allclose(adv1, (calls[1] - both.mean()) / (both.std() + 1e-6), rtol=1e-14)
    g_rel = ddpo_released_grad(policy, states, u_old, adv1, ks, sd_alphas_cumprod(), cfg)
    assert len(batch["rows"]) == S          # every step trained (stochastic into t = 0)
    assert rel_err(g_rsm, g_rel) <= RTOL, rel_err(g_rsm, g_rel)


def test_ddpo_tracker_keys_prompts_by_condition():
    """A conditional model: each condition is a prompt with its own buffer across iterations."""
    policy = rsm.MLP(2, 16, 2, cond_dim=1, seed=0, dtype="float64")
    np.from_dlpack(policy.params)[:] = 0.25 * np.random.default_rng(0).standard_normal(policy.num_params)
    ref = policy.copy()
    reward, calls = reward_recorder(lambda x: x[:, 0] - x[:, 1] ** 2)
    trainer = rsm.Trainer(policy, ref, reward, "ddpo", batch_size=2, group_size=3, sampler_steps=3,
                          conditions=np.array([0, 1, 2]), adv_buffer_size=4, adv_min_count=4)
    tracker = DDPOTracker(4, 4)
    for it in range(3):
        batch = trainer.rollout()
        ids = (it * 2 + np.arange(2)) % 3
        prompts = np.repeat(ids, 3)
        expected = tracker.update(prompts, calls[-1])
        np.testing.assert_allclose(np.clip(expected, -5, 5), batch["adv"], rtol=1e-13, atol=1e-13)
        trainer.step()
        calls.pop()   # the step's own rollout: the same draws as `batch`
    assert trainer.tracker.state() == {k: list(v) for k, v in tracker.stats.items()}


# ---- DanceGRPO (XueZeyue/DanceGRPO, fastvideo/train_grpo_flux.py, finetune_flux_grpo.sh) --------

def dance_grid(steps, shift=3.0):
    s = np.linspace(1.0, 0.0, steps + 1)
    return shift * s / (1 + (shift - 1) * s)


def dance_step(sigmas, i, eta):
    """flux_step with sde_solver: mean = x + dsigma v - (eta^2 / 2) score dsigma, score from
    x0_hat = x - sigma v; std = eta sqrt(sigma - sigma')."""
    sigma, dsigma = sigmas[i], sigmas[i + 1] - sigmas[i]
    # x + dsigma v + 0.5 eta^2 (x + (1 - sigma) v) / sigma * dsigma, collected in x and v
    cx = 1 + 0.5 * eta**2 * dsigma / sigma
    cv = dsigma * (1 + 0.5 * eta**2 * (1 - sigma) / sigma)
    return cx, cv, eta * np.sqrt(-dsigma)


def dance_released_grad(policy, states, u_old, rewards, G, pairs, sigmas, cfg):
    n = rewards.shape[0]
    adv = np.empty(n)
    for g in range(n // G):                  # use_group: torch.std (unbiased) + 1e-8
        r = rewards[g * G:(g + 1) * G]
        adv[g * G:(g + 1) * G] = (r - r.mean()) / (r.std(ddof=1) + 1e-8)
    adv = np.clip(adv, -5.0, 5.0)
    T = len(pairs[0])
    blocks = []
    for s in range(n):
        for i in pairs[s]:
            x, x_next, t = states[i][s:s + 1], states[i + 1][s:s + 1], sigmas[i]
            cx, cv, std = dance_step(sigmas, i, cfg["noise_level"])
            u = fwd(policy, x, t)
            cot = ppo_cotangent(adv[s:s + 1], x_next, cx * x + cv * u, cx * x + cv * u_old[i][s:s + 1],
                                std, cv, cfg["clip_eps"])
            blocks.append((x, t, cot / (n * T)))   # / (gradient_accumulation_steps * T), per sample
    return chain(policy, blocks), adv


@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_dance_grpo_gradient_equals_released_train_grpo_flux(perturb):
    policy, ref = make_models(2)
    reward, calls = reward_recorder(lambda x: np.sin(2 * x[:, 0]) + x[:, 1])
    S, G = 8, 4
    trainer = rsm.Trainer(policy, ref, reward, "dance-grpo", batch_size=3, group_size=G, sampler_steps=S,
                          clip_eps=0.05, seed=2)
    cfg = trainer.cfg
    assert cfg["sde_sigma"] == "constant" and cfg["noise_level"] == 0.3 and cfg["grid"] == "shift"
    assert cfg["adv_ddof"] == 1 and cfg["adv_eps"] == 1e-8 and cfg["zero_std"] == "keep"
    assert cfg["timestep_subset"] == "per_sample" and cfg["train_steps"] == 0.6
    np.testing.assert_allclose(trainer.ts, dance_grid(S), rtol=0, atol=1e-15)
    batch = trainer.rollout()
    states = batch["states"]
    u_old = [fwd(policy, states[j], trainer.ts[j]) for j in range(S)]
    n = 3 * G
    # per-sample subsets: int(0.6 (S - 1)) distinct steps among 0..S-2 for every sample
    pairs = [[] for _ in range(n)]
    for r in batch["rows"]:
        for s in r["traj"]:
            pairs[s].append(r["step"])
    T = int(0.6 * (S - 1))
    assert all(len(p) == T and len(set(p)) == T and max(p) <= S - 2 for p in pairs)
    assert len({tuple(sorted(p)) for p in pairs}) > 1
    if perturb:
        move_policy(policy, 9)
    g_rsm, _ = trainer.loss_and_grad(batch)
    g_rel, adv = dance_released_grad(policy, states, u_old, calls[-1], G, pairs, trainer.ts, cfg)
    np.testing.assert_allclose(batch["adv"], adv, rtol=1e-13, atol=1e-13)
    assert rel_err(g_rsm, g_rel) <= RTOL, rel_err(g_rsm, g_rel)


# ---- batch-level conventions over an iteration's micro-batches (accumulate > 1) -------------

def test_batch_std_and_tracker_span_the_iterations_micro_batches():
    """The released scripts normalise over an epoch's samples at once (Flow-GRPO's global std
    over every gathered reward; DDPO's tracker updated once with all of them): with accumulate =
    2 the two micro-batches' advantages are those of their concatenation, and step() commits
    the tracker once."""
    policy, ref = make_models(0)
    reward, calls = reward_recorder(quantised)
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=3, group_size=3, sampler_steps=4,
                          accumulate=2, seed=4)
    batches = [trainer.rollout(micro=j) for j in range(2)]
    trainer.batch_advantages(batches)
    r = np.concatenate(calls[-2:])
    prompts = np.arange(18) // 3
    adv = np.empty(18)
    for p in range(6):
        sel = prompts == p
        adv[sel] = (r[sel] - r[sel].mean()) / (r.std() + 1e-4)
    got = np.concatenate([b["adv"] for b in batches])
    np.testing.assert_allclose(got, np.clip(adv, -5, 5), rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), adv != 0)
    # DDPO: one prompt, buffer 16, min_count 12: 2 x 8 = 16 rewards reach min_count together
    reward, calls = reward_recorder(lambda x: -np.sum((x - 0.3) ** 2, axis=1))
    trainer = rsm.Trainer(policy, ref, reward, "ddpo", batch_size=2, group_size=4, sampler_steps=3,
                          accumulate=2, adv_min_count=12, seed=4)
    trainer.step()
    tracker = DDPOTracker(16, 12)
    prompts = np.zeros(16, dtype=int)
    expected = tracker.update(prompts, np.concatenate(calls[-2:]))
    both = np.concatenate(calls[-2:])
    np.testing.assert_allclose(expected, (both - both.mean()) / (both.std() + 1e-6), rtol=1e-14)
    assert trainer.tracker.state() == {0: list(tracker.stats[0])}
    batches = [trainer.rollout(micro=j) for j in range(2)]
    trainer.batch_advantages(batches)
    expected = tracker.update(prompts, np.concatenate(calls[-2:]))
    np.testing.assert_allclose(np.concatenate([b["adv"] for b in batches]), np.clip(expected, -5, 5),
                               rtol=1e-13, atol=1e-13)


def test_contradictory_or_unknown_conventions_are_refused_naming_them():
    policy, ref = make_models(0)
    cases = [
        ("ddpo", {"adv_std": "batch"}, r"adv_std='batch' contradicts adv_tracker='per_prompt'"),
        ("ddpo", {"zero_std": "drop"}, r"zero_std='drop' contradicts adv_tracker='per_prompt'"),
        ("flow-grpo", {"adv_std": "global"}, r"adv_std='global' must be one of"),
        ("flow-grpo", {"adv_ddof": 2}, r"adv_ddof=2"),
        ("flow-grpo", {"kl_denominator": "approx"}, r"kl_denominator='approx'"),
        ("flow-grpo", {"zero_std": "skip"}, r"zero_std='skip'"),
        ("flow-grpo", {"adv_eps": -1.0}, r"adv_eps=-1.0"),
        ("dance-grpo", {"timestep_subset": "per_step"}, r"timestep_subset='per_step'"),
        ("dance-grpo", {"sde_sigma": "linear"}, r"sde_sigma='linear'"),
        ("ddpo", {"adv_buffer_size": 0}, r"adv_buffer_size=0"),
        ("ddpo", {"vp_schedule": "quadratic"}, r"vp_schedule='quadratic'"),
        ("rsm-zo", {"zero_std": "drop"}, r"zero_std='drop' contradicts rollout='branch'"),
        ("reinforce-kl", {"adv_tracker": "per_prompt", "zero_std": "keep"},
         r"advantage='center' contradicts adv_tracker='per_prompt'"),
        ("dance-grpo", {"train_steps": 0.1, "sampler_steps": 8}, r"int\(0.1 x 7\) = 0 steps"),
    ]
    before = np.from_dlpack(policy.params).copy()
    for method, opts, message in cases:
        with pytest.raises(ValueError, match=message):
            rsm.Trainer(policy, ref, rsm.rewards.quadratic([0.0, 0.0]), method, batch_size=2,
                        group_size=4, **opts)
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)


def test_methods_table_and_get_show_the_conventions_and_their_source():
    rows = {r["method"]: r for r in rsm.methods.table(with_influence=False)}
    assert "yifan123/flow_grpo@ac4c86e8cae0: scripts/train_sd3.py" in rows["flow-grpo"]["source"]
    assert "kvablack/ddpo-pytorch@1958463f0201: scripts/train.py" in rows["ddpo"]["source"]
    assert "XueZeyue/DanceGRPO@15cc71d53cc2: fastvideo/train_grpo_flux.py" in rows["dance-grpo"]["source"]
    assert "THUDM/ImageReward@c1392c6dd0fd: ImageReward/ReFL.py" in rows["refl"]["source"]
    assert "exact form" in rows["flow-grpo-exact"]["source"]
    assert "unverified" in rows["tempflow-grpo"]["source"]
    for key in ("adv_std", "adv_ddof", "adv_eps", "adv_tracker", "zero_std", "kl_denominator",
                "timestep_subset", "sde_sigma"):
        assert key in rows["flow-grpo"], key
    assert (rows["flow-grpo"]["zero_std"], rows["ddpo"]["adv_tracker"], rows["dance-grpo"]["sde_sigma"]) \
        == ("drop", "per_prompt", "constant")
    assert rsm.methods.get("dance-grpo")["source"] == rows["dance-grpo"]["source"]
    assert rsm.conventions.SOURCES["flow-grpo"]["commit"] == "ac4c86e8cae021841f1fde853d340e0db67690dd"


def test_sde_const_sampler_is_dance_grpos_step():
    """The 'sde-const' sampler's recorded means and stds are DanceGRPO's flux_step."""
    policy, _ = make_models(2)
    ts = dance_grid(6)
    traj = rsm.sample(policy, 5, rsm.FlowPath(), "sde-const", ts=ts, noise_level=0.3, seed=1,
                      return_trajectory=True)
    for i in range(6):
        cx, cv, std = dance_step(ts, i, 0.3)
        x = traj.xs[i]
        np.testing.assert_allclose(traj.means[i], cx * x + cv * fwd(policy, x, ts[i]), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(traj.stds[i], std, rtol=1e-13)


# ---- ReFL (THUDM/ImageReward, ImageReward/ReFL.py, scripts/train_refl.sh) ----------------------

def test_refl_gradient_equals_released_refl_py():
    """ReFL.py: SD1.x's DDPMScheduler with set_timesteps(S) ('leading', steps_offset 1), a random
    step mid among the last late_steps, ancestral steps before it, one network call at
    timesteps[mid], pred_original_sample = (x - sqrt(1 - abar) eps) / sqrt(abar), loss
    relu(2 - r).mean() * scale. The gradient in u: -scale 1[r < 2] (-sqrt(1 - abar) /
    sqrt(abar)) g / n, chained through the VJP."""
    policy, ref = make_models(3)
    scale = 0.7
    def fn(x, c):
        x = np.from_dlpack(x)
        return (2.0 + 0.1 * (x[:, 0] + 18.0) - 0.001 * x[:, 1] ** 2,
                np.stack([np.full(len(x), 0.1), -0.002 * x[:, 1]], axis=1))
    reward = rsm.Reward(fn, differentiable=True)
    S, late = 8, 3
    trainer = rsm.Trainer(policy, ref, reward, "refl", batch_size=4, group_size=3, sampler_steps=S,
                          late_steps=late, reward_scale=scale, seed=1)
    cfg = trainer.cfg
    assert trainer.path.schedule == "scaled_linear" and cfg["grid"] == "leading"
    assert cfg["refl_sampler"] == "stochastic" and cfg["reward_hinge"] == 2.0
    assert rsm.methods.get("refl")["steps"] == 40 and rsm.methods.get("refl")["late_steps"] == 10
    ks = np.arange(S)[::-1] * (1000 // S) + 1
    np.testing.assert_allclose(trainer.ts[:-1], ks / 1000, rtol=0, atol=0)
    batch = trainer.rollout()
    (row,) = batch["rows"]
    mid = row["step"]
    assert S - late <= mid <= S - 1
    x = row["x"]
    abar = sd_alphas_cumprod()[ks[mid]]
    u = fwd(policy, x, trainer.ts[mid])
    x0_hat = (x - np.sqrt(1 - abar) * u) / np.sqrt(abar)
    r, g = fn(x0_hat, None)
    assert (r < 2).any() and (r >= 2).any()           # the hinge is active for some samples only
    cot = -scale * (r < 2)[:, None] * (-np.sqrt(1 - abar) / np.sqrt(abar)) * g / len(r)
    g_rel = chain(policy, [(x, trainer.ts[mid], cot)])
    g_rsm, stats = trainer.loss_and_grad(batch)
    assert rel_err(g_rsm, g_rel) <= RTOL, rel_err(g_rsm, g_rel)
    assert stats["loss"] == pytest.approx(scale * np.maximum(2 - r, 0).mean(), rel=1e-12)
    # the mid step is uniform among the last late_steps, redrawn per iteration
    mids = set()
    for it in range(12):
        trainer.iteration = it
        mids.add(trainer.rollout()["rows"][0]["step"])
    assert mids == set(range(S - late, S))


def test_failed_step_leaves_the_tracker_unchanged():
    """The tracker's buffers change only when a step succeeds (the reward raising at iteration 1
    leaves the buffers of iteration 0, the policy and the optimizer as they were)."""
    policy, ref = make_models(1)
    reward = reward_failing_on_call(2)
    trainer = rsm.Trainer(policy, ref, reward, "ddpo", batch_size=2, group_size=4, sampler_steps=3)
    trainer.step()
    state, params = trainer.tracker.state(), np.from_dlpack(policy.params).copy()
    with pytest.raises(RuntimeError, match="reward server down"):
        trainer.step()
    assert trainer.tracker.state() == state and len(state[0]) == 8
    np.testing.assert_array_equal(np.from_dlpack(policy.params), params)
    trainer.step()                       # the next step goes on from the same buffers
    assert len(trainer.tracker.state()[0]) == 16


def test_tracker_buffers_survive_save_and_load(tmp_path):
    """Trainer.save / Trainer.load keep DDPO's buffers: the resumed run continues bitwise."""
    policy, ref = make_models(1)
    reward = rsm.rewards.quadratic([0.3, -0.2])
    trainer = rsm.Trainer(policy, ref, reward, "ddpo", batch_size=2, group_size=4, sampler_steps=3,
                          kl_every=0)
    trainer.step()
    trainer.save(tmp_path / "run.safetensors")
    resumed = rsm.Trainer.load(tmp_path / "run.safetensors", ref, reward)
    assert resumed.tracker.state() == trainer.tracker.state() and len(trainer.tracker.state()[0]) == 8
    a, b = trainer.step(), resumed.step()
    assert a["loss"] == b["loss"] and a["reward_mean"] == b["reward_mean"]
    np.testing.assert_array_equal(np.from_dlpack(trainer.policy.params),
                                  np.from_dlpack(resumed.policy.params))
