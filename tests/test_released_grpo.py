"""Method fidelity for the GRPO family (issue 15): Branch-GRPO and MixGRPO give, on the same
rollout, the parameter gradient of their RELEASED training scripts in the default configuration,
float64, relative error <= 1e-9; the presets without a release (TempFlow-GRPO, GRPO-Guard,
PCPO) say so in the methods table.

The oracles are numpy from the formulas of the released scripts (read, not copied; sources in
rsm.conventions.SOURCES), independent of rsm's coefficients and of its tree bookkeeping: the
tree's nodes are found here from the leaf-resolution trajectory (leaves that share a state at a
depth share the node), node rewards, depth advantages, the window schedule, the sampler step
(checked against the recorded states), the per-element-mean log-probabilities and the loss. Only
the network is rsm's (outputs and VJP; finite-difference checked in test_mlp_grad.py). Helpers
shared with the first released-code tests come from test_released.py."""
import numpy as np
import pytest

import rsm
from test_released import (RTOL, chain, convention_effects, dance_grid, dance_step,
                           flow_grpo_step, fwd, move_policy, ppo_cotangent, quantised,
                           rel_err, reward_recorder)
from toy_models import make_models


def smooth(x0):
    return -((x0[:, 0] - 0.5) ** 2) + 0.3 * x0[:, 1]


def tree_ties(x0):
    """+-1 rewards: on the trees of branch_case one root's leaves all score -1 (a zero-std group
    at every depth), the other's split into both values."""
    return np.sign(x0[:, 1])


# ---- Branch-GRPO (Fredreic1849/BranchGRPO, fastvideo/train_branchgrpo_flux.py + the 8-GPU script)

def released_tree(xs, roots):
    """The nodes of the released tree from the leaf-resolution states xs[d] [leaves, D]: at each
    depth, the leaves of one root that hold the same state are one node (children of a split
    draw their own noise, the steps between splits keep one child). Returns per depth the list
    of leaf-index arrays (root-major)."""
    leaves = xs[0].shape[0]
    per_root = leaves // roots
    depths = []
    for x in xs:
        nodes = []
        for r in range(roots):
            idx = np.arange(r * per_root, (r + 1) * per_root)
            _, first, inverse = np.unique(x[idx], axis=0, return_index=True, return_inverse=True)
            for k in np.argsort(first):     # in leaf order
                nodes.append(idx[inverse.reshape(-1) == k])
        depths.append(nodes)
    return depths


def branch_released_advantages(depths, rewards, roots):
    """compute_node_rewards_from_leaves (mean of the descendant leaves, tree_prob_weighted off)
    and compute_hierarchical_advantages_by_depth: per tree and depth, torch.std (ddof 1); below
    1e-6 every advantage is 0, else (r - mean) / (std + 1e-8). Returns {(d, first leaf): A}."""
    per_root = rewards.shape[0] // roots
    adv = {}
    for d, nodes in enumerate(depths):
        for r in range(roots):
            mine = [L for L in nodes if L[0] // per_root == r]
            node_r = np.array([rewards[L].mean() for L in mine])
            if len(mine) <= 1:
                a = np.zeros(len(mine))
            else:
                std = np.std(node_r, ddof=1)
                a = np.zeros(len(mine)) if std < 1e-6 else (node_r - node_r.mean()) / (std + 1e-8)
            for L, v in zip(mine, a):
                adv[(d, int(L[0]))] = v
    return adv


def branch_released_grad(policy, xs, u_old_of, rewards, roots, sigmas, eta, clip, adv_clip=5.0,
                         grad_accum=12):
    """The gradient of train_one_step_tree's loss over all transitions of one rollout: every
    (parent -> child) edge, its child's clamped advantage, PPO on the per-element-mean log-prob
    with the split step's own std. Each transition's loss is divided by grad_accum x
    floor(transitions / trees) in the release; returned: (gradient of that sum, the released
    denominator, the number of transitions)."""
    depths = released_tree(xs, roots)
    adv = branch_released_advantages(depths, rewards, roots)
    edges = []    # (step, parent state, child state, advantage)
    for i in range(len(xs) - 1):
        for L in depths[i + 1]:
            edges.append((i, xs[i][L[0]], xs[i + 1][L[0]], adv[(i + 1, int(L[0]))]))
    T = len(edges)
    denom = grad_accum * max(1, T // roots)
    blocks = []
    for i in range(len(xs) - 1):
        mine = [e for e in edges if e[0] == i]
        x = np.array([e[1] for e in mine])
        x_next = np.array([e[2] for e in mine])
        a = np.clip(np.array([e[3] for e in mine]), -adv_clip, adv_clip)
        cx, cv, std = dance_step(sigmas, i, eta)
        mean = cx * x + cv * fwd(policy, x, sigmas[i])
        mean_old = cx * x + cv * u_old_of(i, x)
        cot = ppo_cotangent(a, x_next, mean, mean_old, std, cv, clip)
        blocks.append((x, sigmas[i], cot / denom))
    return chain(policy, blocks), denom, T, depths


def branch_case(reward_fn, perturb, roots=2, steps=20, seed=3):
    policy, ref = make_models(0)
    reward, calls = reward_recorder(reward_fn)
    trainer = rsm.Trainer(policy, ref, reward, "branch-grpo", batch_size=roots, group_size=16,
                          seed=seed)
    cfg = trainer.cfg
    assert (cfg["steps"], cfg["split_steps"], cfg["branch"], cfg["noise_level"], cfg["split_noise_scale"]) \
        == (20, [0, 3, 6, 9], 2, 0.3, 4.0)
    assert (cfg["adv_ddof"], cfg["adv_eps"], cfg["adv_zero_tol"], cfg["zero_std"], cfg["clip_eps"]) \
        == (1, 1e-8, 1e-6, "keep", 1e-3)
    np.testing.assert_allclose(trainer.ts, dance_grid(steps), rtol=0, atol=1e-15)
    batch = trainer.rollout()
    # the rollout's leaf-resolution states (each leaf's path from its root)
    xs = [np.asarray(x) for x in batch["tree"]["states"]]
    np.testing.assert_array_equal(xs[-1], np.from_dlpack(batch.x0))
    old = policy.copy()
    if perturb:
        move_policy(policy, 7)
    g_rsm, _ = trainer.loss_and_grad(batch)
    g_rel, denom, T, depths = branch_released_grad(
        policy, xs, lambda i, x: fwd(old, x, trainer.ts[i]), calls[-1], roots, trainer.ts, 0.3, 1e-3)
    return g_rsm, g_rel, denom, T, depths, calls[-1], trainer.normalizer(batch)


@pytest.mark.parametrize("reward_fn", [tree_ties, smooth], ids=["ties", "smooth"])
@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_branch_grpo_gradient_equals_released_train_branchgrpo_flux(reward_fn, perturb):
    g_rsm, g_rel, denom, T, depths, rewards, normalizer = branch_case(reward_fn, perturb)
    # the tree as released: 2 roots, splits at 0,3,6,9 -> 2, 4, 8, 16 nodes per root; every
    # transition of the 20 steps trained: 3*2 + 3*4 + 3*8 + 11*16 = 218 per root
    assert [len(n) for n in depths[:11]] == [2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32]
    assert T == 2 * 218 and denom == 12 * 218 and normalizer == T
    # one rsm step is the mean over the rollout's transitions; the release divides each by
    # grad_accum x floor(T / trees) and steps every 12 transitions (SOURCES: not reproduced)
    assert rel_err(g_rsm, g_rel * denom / T) <= RTOL, rel_err(g_rsm, g_rel * denom / T)
    adv = branch_released_advantages(depths, rewards, 2)
    assert np.linalg.norm(g_rel) > 0 and any(v != 0 for v in adv.values())
    if reward_fn is tree_ties:   # zero-std depth groups exist and stay in the mean
        assert sum(v == 0 for (d, _), v in adv.items() if d > 0) > 0


def test_branch_grpo_split_children_are_drawn_with_the_released_noise_scale():
    """flux_step_with_split: a split child is mean + 4 z std (tree_split_noise_scale 4.0), any
    other child mean + z std, z standard normal; the density (the log-probabilities of the rows)
    keeps the step's std. Checked on the rollout's states: the deviations from the released mean,
    in units of the step's std, have an empirical std near 4 at the split steps and 1 elsewhere
    (600 roots: 2400 values at each split step, the bound 15%), and the recorded log-probability
    is the unscaled Gaussian's."""
    policy, ref = make_models(0)
    roots = 600
    trainer = rsm.Trainer(policy, ref, rsm.Reward(lambda x, c: smooth(np.from_dlpack(x))),
                          "branch-grpo", batch_size=roots, group_size=16, seed=9,
                          sampler_steps=8, split_steps=[0, 3, 4, 6])
    batch = trainer.rollout()
    xs, ts = [np.asarray(x) for x in batch["tree"]["states"]], trainer.ts
    leaves = xs[0].shape[0]
    for i in range(8):
        cx, cv, std = dance_step(ts, i, 0.3)
        per = leaves // len(np.unique(xs[i + 1], axis=0))      # one leaf per child node
        x, x_next = xs[i][::per], xs[i + 1][::per]
        z = (x_next - cx * x - cv * fwd(policy, x, ts[i])) / std
        expected = 4.0 if i in (0, 3, 4, 6) else 1.0
        assert abs(z.std() / expected - 1) < 0.15, (i, z.std())
        row = next(r for r in batch["rows"] if r["step"] == i)
        lp = -0.5 * np.sum(z**2, axis=1) - 2 * np.log(std) - np.log(2 * np.pi)
        np.testing.assert_allclose(row["log_prob"], lp, rtol=1e-10)


def test_branch_grpo_zero_tolerance_silences_tiny_reward_spreads():
    """compute_hierarchical_advantages_by_depth calls a depth's std below 1e-6 zero: rewards that
    differ by ~1e-8 give no gradient as released (adv_zero_tol 1e-6, the oracle agrees), and a
    full-size normalised one with adv_zero_tol = 0 (rsm's earlier rule: only std == 0)."""
    tiny = lambda x0: 1e-8 * smooth(x0)
    g_rsm, g_rel, denom, T, depths, rewards, _ = branch_case(tiny, True)
    assert np.linalg.norm(g_rel) == 0 and np.linalg.norm(g_rsm) == 0
    effect = convention_effects("branch-grpo", [{"adv_zero_tol": 0.0}], tiny, batch_size=2,
                                group_size=16, seed=3)
    assert effect[0] > 1.0   # relative to a zero gradient


def test_branch_grpo_rsm_keeps_the_earlier_form():
    p = rsm.methods.get("branch-grpo-rsm")
    assert (p["steps"], p["grid"], p["split"], p["split_steps"], p["adv_ddof"], p["adv_eps"],
            p["zero_std"], p["clip_eps"], p["train_steps"], p["sde_sigma"]) == \
        (10, "sd3", 3, None, 0, 1e-4, "mask", 1e-4, "no_last", "flow-grpo")


# ---- MixGRPO (Tencent-Hunyuan/MixGRPO, fastvideo/train_grpo_flux.py, utils/grpo_states.py) ----

def released_window(iteration, steps, size=4, every=25, stride=1):
    """GRPOTrainingStates('progressive', prog_overlap, roll_back, max_timesteps = S - 2) stepped
    `iteration` times (its update follows get_current_timesteps each iteration)."""
    cur, in_group, top = 0, 0, steps - 2
    for _ in range(iteration):
        in_group += 1
        if in_group >= every:
            in_group, cur = 0, cur + stride
        if cur > top:
            cur, in_group = 0, 0
    return list(range(cur, min(cur + size, top)))


def test_mix_window_is_the_released_schedule():
    cfg = rsm.methods.get("mixgrpo")
    for steps in (8, 25):
        for stride in (1, 2):
            c = dict(cfg, mix_stride=stride)
            for it in range(0, 40 * 25, 7):
                b, e = rsm.conventions.mix_window(c, steps, it)
                assert list(range(b, e)) == released_window(it, steps, stride=stride), (steps, it)


def test_mixgrpo_influence_counts_the_window_over_its_cycle():
    """influence(): MixGRPO's rows per step are the released window's, averaged over the
    positions b = 0..S-2 it takes for mix_interval iterations each."""
    from rsm.finetune import influence

    S = 8
    rows = influence("mixgrpo", steps=S)["rows_per_root"]
    cycle = [released_window(k * 25, S) for k in range(S - 1)]
    assert np.allclose(rows, [sum(i in w for w in cycle) / (S - 1) for i in range(S)])
    assert rows[-1] == rows[-2] == 0 and rows[3] == 4 / 7


def mix_released_grad(policy, states, u_old, rewards, G, sigmas, window, clip, eta=0.7):
    """train_one_step ('part'): group advantages (torch.std ddof 1, + 1e-8), clamped to +-5; PPO
    on the window's steps, torch.mean over the sample / (gradient_accumulation_steps x
    len(window)), accumulated over the samples: a mean over (sample, window step)."""
    n = rewards.shape[0]
    adv = np.empty(n)
    for g in range(n // G):
        r = rewards[g * G:(g + 1) * G]
        adv[g * G:(g + 1) * G] = (r - r.mean()) / (np.std(r, ddof=1) + 1e-8)
    adv = np.clip(adv, -5.0, 5.0)
    blocks = []
    for j in window:
        x, x_next, t = states[j], states[j + 1], sigmas[j]
        cx, cv, std, _, _ = flow_grpo_step(sigmas, j, x, eta)
        mean, mean_old = cx * x + cv * fwd(policy, x, t), cx * x + cv * u_old[j]
        cot = ppo_cotangent(adv, x_next, mean, mean_old, std, cv, clip)
        blocks.append((x, t, cot / (n * len(window))))
    return chain(policy, blocks)


@pytest.mark.parametrize("iteration", [0, 60, 130], ids=["window@0", "window@2", "window@5-tail"])
@pytest.mark.parametrize("perturb", [False, True], ids=["theta=theta_old", "theta!=theta_old"])
def test_mixgrpo_gradient_equals_released_train_grpo_flux(iteration, perturb):
    S, G = 8, 4
    policy, ref = make_models(0)
    reward, calls = reward_recorder(smooth)
    trainer = rsm.Trainer(policy, ref, reward, "mixgrpo", batch_size=3, group_size=G,
                          sampler_steps=S, clip_eps=0.05, seed=3)
    cfg = trainer.cfg
    assert (cfg["mix_window"], cfg["mix_interval"], cfg["mix_stride"], cfg["noise_level"]) == (4, 25, 1, 0.7)
    assert (cfg["adv_ddof"], cfg["adv_eps"], cfg["zero_std"], cfg["kl"], cfg["shared_noise"]) == \
        (1, 1e-8, "keep", 0.0, True)
    np.testing.assert_allclose(trainer.ts, dance_grid(S), rtol=0, atol=1e-15)
    trainer.iteration = iteration
    window = released_window(iteration, S)
    batch = trainer.rollout()
    states, ts = batch["states"], trainer.ts
    assert [r["step"] for r in batch["rows"]] == window
    u_old = [fwd(policy, states[j], ts[j]) for j in range(S)]
    # init_same_noise: one initial noise per prompt; the Euler ODE outside the window, the
    # released flow_grpo_step inside it
    for g in range(3):
        assert (states[0][g * G:(g + 1) * G] == states[0][g * G]).all()
    for j in range(S):
        if j in window:
            cx, cv, std, _, _ = flow_grpo_step(ts, j, states[j], 0.7)
            row = batch["rows"][window.index(j)]
            np.testing.assert_allclose(states[j + 1], cx * states[j] + cv * u_old[j] + std * row["noise"],
                                       rtol=0, atol=1e-12)
        else:
            np.testing.assert_allclose(states[j + 1], states[j] + (ts[j + 1] - ts[j]) * u_old[j],
                                       rtol=0, atol=1e-12)
    if perturb:
        move_policy(policy, 7)
    g_rsm, _ = trainer.loss_and_grad(batch)
    g_rel = mix_released_grad(policy, states, u_old, calls[-1], G, ts, window, 0.05)
    assert rel_err(g_rsm, g_rel) <= RTOL, rel_err(g_rsm, g_rel)


@pytest.mark.parametrize("parallel", [False, True], ids=["single", "data-parallel world 1"])
def test_mixgrpo_empty_window_trains_nothing(parallel):
    """At b = S - 2 the released window is empty: an all-ODE rollout, no loss term, and its
    optimizer (parameters without a gradient) leaves the weights and moments alone."""
    policy, ref = make_models(0)
    kw = {"comm": rsm.distributed.Communicator(), "dp_tiles": 2} if parallel else {}
    trainer = rsm.Trainer(policy, ref, rsm.Reward(lambda x, c: smooth(np.from_dlpack(x))),
                          "mixgrpo", batch_size=2, group_size=4, sampler_steps=8, seed=1, **kw)
    trainer.step()
    before = np.from_dlpack(policy.params).copy()
    state = trainer.optimizer.state_dict()
    trainer.iteration = 6 * 25     # b = 6 = S - 2
    row = trainer.step()
    assert row["rows"] == 0 and row["loss"] == 0.0
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)
    after = trainer.optimizer.state_dict()
    np.testing.assert_array_equal(after["m"], state["m"])


# ---- each convention's effect on the gradient (reported in docs/RELEASED.md) ----------------

BRANCH_VARIANTS = [{"adv_ddof": 0}, {"adv_eps": 1e-4}, {"zero_std": "mask"},
                   {"adv_zero_tol": 0.0}, {"clip_eps": 1e-4}]   # the rollout stays the same
MIX_VARIANTS = [{"adv_ddof": 0}, {"adv_eps": 1e-4}, {"zero_std": "mask"}]


def branch_effects(reward_fn):
    return convention_effects("branch-grpo", BRANCH_VARIANTS, reward_fn, batch_size=2,
                              group_size=16, seed=3)


def mix_effects(reward_fn):
    return convention_effects("mixgrpo", MIX_VARIANTS, reward_fn, batch_size=3, group_size=4,
                              sampler_steps=8, seed=3)


def test_branch_grpo_released_conventions_change_the_gradient():
    ties, smooth_ = branch_effects(tree_ties), branch_effects(smooth)
    # ddof and the mean over every transition matter; eps 1e-8 vs 1e-4 is small; the 1e-6
    # tolerance only matters for stds in (0, 1e-6) (none here); clip 1e-3 vs 1e-4 on a moved policy
    assert ties[0] > 1e-3 and ties[2] > 1e-3 and smooth_[0] > 1e-3 and ties[4] > 1e-3, (ties, smooth_)
    assert ties[3] == 0.0 and smooth_[2] == 0.0, (ties, smooth_)


def test_mixgrpo_released_conventions_change_the_gradient():
    ties, smooth_ = mix_effects(quantised), mix_effects(smooth)
    assert ties[0] > 1e-3 and smooth_[0] > 1e-3 and ties[2] > 1e-3, (ties, smooth_)


# ---- refused combinations, the table -----------------------------------------------------------

def test_contradictory_grpo_options_are_refused_naming_both():
    policy, ref = make_models(0)
    cases = [
        ("branch-grpo", {"zero_std": "drop"}, r"zero_std='drop' contradicts rollout='tree'"),
        ("branch-grpo", {"adv_std": "batch"}, r"adv_std='batch' contradicts rollout='tree'"),
        ("branch-grpo", {"split_steps": [0, 3, 6]}, r"split_steps=.* contradicts split=4"),
        ("branch-grpo", {"split_steps": [0, 3, 6, 25]}, r"split_steps=\[0, 3, 6, 25\] must be split=4 distinct"),
        ("flow-grpo", {"adv_zero_tol": 1e-6}, r"'flow-grpo' has no hyper-parameter\(s\) \['adv_zero_tol'\]"),
        ("branch-grpo", {"mix_window": 4}, r"mix_window=4 contradicts rollout='tree'"),
        ("rsm-zo", {"mix_window": 2}, r"mix_window=2 contradicts rollout='branch'"),
        ("mixgrpo", {"train_steps": "no_last"}, r"mix_window=4 contradicts train_steps='no_last'"),
        ("branch-grpo", {"split_noise_scale": 0.0}, r"split_noise_scale=0.0 must be a finite number > 0"),
        ("mixgrpo", {"mix_window": 0}, r"mix_window=0"),
        ("mixgrpo", {"mix_interval": 0}, r"mix_interval=0"),
        ("mixgrpo", {"sampler_steps": 2}, r"mix_window needs steps >= 3"),
    ]
    before = np.from_dlpack(policy.params).copy()
    for method, opts, message in cases:
        with pytest.raises(ValueError, match=message):
            tr = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0.0, 0.0]), method, batch_size=2,
                             group_size=16 if method == "branch-grpo" else 4, **opts)
            tr.rollout()
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)


def test_table_shows_sources_and_unverified_presets():
    rows = {r["method"]: r for r in rsm.methods.table(with_influence=False)}
    assert "Fredreic1849/BranchGRPO@19fbb9fc92ad: fastvideo/train_branchgrpo_flux.py" in rows["branch-grpo"]["source"]
    assert "Tencent-Hunyuan/MixGRPO@e5cdd6a42777: fastvideo/train_grpo_flux.py" in rows["mixgrpo"]["source"]
    for name in ("tempflow-grpo", "grpo-guard", "pcpo", "pcpo-base", "pcpo-diffusion"):
        assert "unverified" in rows[name]["source"], name
        assert name in rsm.conventions.UNVERIFIED
    assert "branch-grpo" not in rsm.conventions.UNVERIFIED
    for key in ("split_steps", "adv_zero_tol", "zero_std", "adv_ddof"):
        assert key in rows["branch-grpo"], key
    for key in ("mix_window", "mix_interval", "mix_stride"):
        assert key in rows["mixgrpo"], key
