"""Classifier-free guidance (rsm.Guided, csrc/nn/guided.c), condition dropout in pretraining, and
conditional fine-tuning (conditions= per group), on the MLP with condition vectors / class ids."""
import numpy as np
import pytest

import rsm
from rsm.rewards import RewardError

F32, F64 = np.float32, np.float64


def _model(dtype="float64", cond_dim=2, seed=1, scale=0.4):
    m = rsm.MLP(3, 16, 2, cond_dim=cond_dim, seed=seed, dtype=dtype)
    p = np.from_dlpack(m.params)
    p[...] = np.random.default_rng(seed).standard_normal(p.shape) * scale   # non-zero output layer
    return m


def _inputs(n=4, dtype=F64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3)).astype(dtype), rng.uniform(0.1, 0.9, n).astype(dtype),
            rng.standard_normal((n, 2)).astype(dtype), rng.standard_normal((n, 3)).astype(dtype))


def test_guided_forward_is_the_cfg_combination():
    m = _model()
    x, t, c, _ = _inputs()
    u_c = np.from_dlpack(m.forward(x, t, c))
    u_u = np.from_dlpack(m.forward(x, t, np.zeros_like(c)))
    for w in (0.0, 1.0, 2.5, -0.5):
        u = np.from_dlpack(rsm.Guided(m, w).forward(x, t, c))
        assert np.allclose(u, u_u + w * (u_c - u_u), rtol=1e-13, atol=1e-13)
    assert np.array_equal(np.from_dlpack(rsm.Guided(m, 0.0).forward(x, t, c)), u_u)   # unconditional
    assert np.array_equal(np.from_dlpack(rsm.Guided(m, 1.0).forward(x, t, c)), u_c)   # conditional
    null = np.array([0.5, -1.0])
    u_null = np.from_dlpack(m.forward(x, t, np.tile(null, (4, 1))))
    assert np.array_equal(np.from_dlpack(rsm.Guided(m, 0.0, null_cond=null).forward(x, t, c)), u_null)


def test_guided_backward_matches_finite_differences():
    m = _model()
    g = rsm.Guided(m, 2.5)
    x, t, c, cot = _inputs()
    dx, dparams = g.vjp(x, t, cot, c)
    dparams = np.from_dlpack(dparams)
    params = np.from_dlpack(m.params)
    p0 = params.copy()
    rng = np.random.default_rng(3)
    v, vx, h = rng.standard_normal(p0.shape), rng.standard_normal(x.shape), 1e-6

    def f(xx):
        return float((np.from_dlpack(g.forward(xx, t, c)) * cot).sum())

    params[...] = p0 + h * v
    fp = f(x)
    params[...] = p0 - h * v
    fm = f(x)
    params[...] = p0
    num = (fp - fm) / (2 * h)
    assert abs(num - dparams @ v) / abs(num) < 1e-6
    num_x = (f(x + h * vx) - f(x - h * vx)) / (2 * h)
    assert abs(num_x - (dx * vx).sum()) / abs(num_x) < 1e-6
    # the check can fail: the conditional pass alone (cotangent not sent to both) is wrong
    _, dp_cond_only = m.vjp(x, t, 2.5 * cot, c)
    assert abs(num - np.from_dlpack(dp_cond_only) @ v) / abs(num) > 1e-3
    # forward_keep / backward and forward_and_vjp give the same numbers as vjp
    u = np.from_dlpack(g.forward(x, t, c))
    u_k, token = g.forward_keep(x, t, c)
    assert np.array_equal(np.from_dlpack(u_k), u)
    dx_k, dp_k = g.backward(cot, token)
    assert np.array_equal(dx_k, dx) and np.array_equal(np.from_dlpack(dp_k), dparams)
    u_f, dx_f, dp_f = g.forward_and_vjp(x, t, cot, c)
    assert np.array_equal(np.from_dlpack(u_f), u) and np.array_equal(dx_f, dx)


def test_guidance_combine_and_split_in_c():
    rng = np.random.default_rng(0)
    for dtype in (F32, F64):
        u2 = rng.standard_normal((6, 5)).astype(dtype)
        out = np.from_dlpack(rsm._C.guidance_combine(u2, 3.0))
        assert out.dtype == dtype and np.allclose(out, u2[3:] + 3.0 * (u2[:3] - u2[3:]), rtol=1e-6)
        d = np.from_dlpack(rsm._C.guidance_split(u2[:3], 3.0))
        assert np.allclose(d, np.concatenate([3.0 * u2[:3], -2.0 * u2[:3]]), rtol=1e-6)
    with pytest.raises(ValueError, match="guidance_combine.*even"):
        rsm._C.guidance_combine(np.zeros((3, 2)), 1.0)


def test_guided_sampling_uses_the_guided_model():
    m = _model(dtype="float32")
    _, _, c, _ = _inputs(8, F32)
    path = rsm.FlowPath()
    plain = np.from_dlpack(rsm.sample(m, 8, path, "ode", steps=6, cond=c, seed=4))
    same = np.from_dlpack(rsm.sample(rsm.Guided(m, 1.0), 8, path, "ode", steps=6, cond=c, seed=4))
    assert np.array_equal(plain, same)
    guided = rsm.Guided(m, 3.0)
    traj = rsm.sample(guided, 8, path, "sde", steps=6, cond=c, seed=4, return_trajectory=True)
    assert not np.array_equal(traj.x, plain)
    assert np.array_equal(traj.log_prob_under(guided, path, cond=c), traj.log_probs)
    # one Euler step by hand with the guided output
    x1 = traj.xs[0]
    ts = traj.ts
    ode = rsm.sample(guided, 8, path, "ode", ts=ts[:2], cond=c, x_init=x1)
    u = np.from_dlpack(guided.forward(x1, ts[0], c))
    assert np.allclose(np.from_dlpack(ode), x1 + (ts[1] - ts[0]) * u, atol=1e-6)


def _labelled(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (np.stack([2.0 * y - 1.0, np.zeros(n)], 1) + 0.3 * rng.standard_normal((n, 2))).astype(F32)
    return x, y


def _class_model(seed=0):
    m = rsm.MLP(2, 64, 2, cond_dim=1, seed=seed)
    m.num_classes = 2            # class ids 0, 1; 2 is the null class of CFG
    return m


@pytest.mark.slow
def test_pretrain_with_class_ids_and_condition_dropout():
    """One model learns the conditional and (null class) unconditional flows; guidance sharpens."""
    x, y = _labelled()
    path = rsm.FlowPath()
    m = _class_model()
    rsm.pretrain(m, x, path, steps=500, batch_size=128, lr=3e-3, cond=y, cond_dropout=0.2, progress=False)
    means = {k: np.from_dlpack(rsm.sample(m, 400, path, "heun", steps=15, cond=np.full(400, k), seed=1)).mean(0)
             for k in (0, 1, 2)}
    assert means[0][0] < -0.7 and means[1][0] > 0.7           # conditional: the class's mode
    assert abs(means[2][0]) < 0.4                               # null class: the mixture of both
    # guidance sharpens toward the class: w = 3 moves the mean further than w = 1
    g3 = np.from_dlpack(rsm.sample(rsm.Guided(m, 3.0), 400, path, "heun", steps=15,
                                   cond=np.full(400, 1), seed=1)).mean(0)
    assert g3[0] > means[1][0]


def test_condition_dropout_is_deterministic_and_means_the_null_class():
    x, y = _labelled(500)
    path = rsm.FlowPath()

    def trained(steps, **kwargs):
        m = _class_model()
        rsm.pretrain(m, x, path, steps=steps, batch_size=64, lr=3e-3, progress=False, **kwargs)
        return np.from_dlpack(m.params).copy()

    a = trained(20, cond=y, cond_dropout=0.5)
    assert np.array_equal(a, trained(20, cond=y, cond_dropout=0.5))      # same seed, same draws
    assert not np.array_equal(a, trained(20, cond=y, cond_dropout=0.0))  # the draws matter
    # cond_dropout = 1 trains the null condition only: the same as passing all-null labels
    assert np.array_equal(trained(10, cond=y, cond_dropout=1.0), trained(10, cond=np.full(len(y), 2)))
    # an explicit null condition is used as given
    assert np.array_equal(trained(10, cond=y, cond_dropout=1.0, null_cond=[0.0]),
                          trained(10, cond=np.zeros(len(y), dtype=np.int64)))


def test_pretrain_condition_bad_inputs():
    x, y = _labelled(50)
    path = rsm.FlowPath()
    m = _class_model()
    before = np.from_dlpack(m.params).copy()
    for kwargs, match in [(dict(cond=y, cond_dropout=1.5), "cond_dropout"),
                          (dict(cond=y, cond_dropout=-0.1), "cond_dropout"),
                          (dict(cond=np.full(50, 3)), "class id"),
                          (dict(cond=y[:49]), "cond"),
                          (dict(cond=y, cond_dropout=0.1, null_cond=[1.0, 2.0]), "null_cond")]:
        with pytest.raises(ValueError, match=match):
            rsm.pretrain(m, x, path, steps=2, batch_size=8, progress=False, **kwargs)
    with pytest.raises(ValueError, match="conditional"):
        rsm.pretrain(rsm.MLP(2, 8, 1), x, path, steps=2, progress=False, cond_dropout=0.1)
    assert np.array_equal(np.from_dlpack(m.params), before)


def test_guided_bad_inputs():
    with pytest.raises(ValueError, match="conditional"):
        rsm.Guided(rsm.MLP(3, 8, 1), 2.0)
    m = _model()
    with pytest.raises(ValueError, match="null_cond"):
        rsm.Guided(m, 2.0, null_cond=[0.0])
    with pytest.raises((ValueError, TypeError), match="scale"):
        rsm.Guided(m, float("nan"))
    with pytest.raises(TypeError, match="already guided"):
        rsm.Guided(rsm.Guided(m, 2.0), 2.0)
    g = rsm.Guided(m, 2.0)
    x, t, c, _ = _inputs()
    with pytest.raises(ValueError, match="forward.*cond"):
        g.forward(x, t)
    with pytest.raises(ValueError, match="cond"):
        g.forward(x, t, c[:3])
    cm = _class_model()
    with pytest.raises(ValueError, match="class id"):
        rsm.Guided(cm, 2.0).forward(np.zeros((2, 2), F32), 0.5, np.array([0, 5]))
    with pytest.raises(ValueError, match="sample.*class id"):
        rsm.sample(cm, 2, rsm.FlowPath(), cond=np.array([0, 3]))


def _class_pretrained():
    x, y = _labelled()
    m = _class_model()
    rsm.pretrain(m, x, rsm.FlowPath(), steps=400, batch_size=128, lr=3e-3, cond=y, cond_dropout=0.2,
                 progress=False)
    return m


def _class_up_down(x0, cond):
    """Condition-dependent reward: class 0 wants x[1] near +1, class 1 near -1."""
    x0 = np.from_dlpack(x0)
    assert cond.dtype == np.int64 and cond.shape == (x0.shape[0],)   # class ids reach the reward
    return -(x0[:, 1] - np.where(cond == 0, 1.0, -1.0)) ** 2


@pytest.fixture(scope="module")
def class_base():
    return _class_pretrained()


@pytest.mark.slow  # a convergence check; the fast tests cover its code paths
@pytest.mark.parametrize("guided", [False, True])
def test_conditional_finetuning_raises_condition_dependent_reward(guided, class_base):
    base = class_base
    policy, ref = base.copy(), base.copy()
    policy.num_classes = ref.num_classes = 2
    if guided:                                       # guided rollouts and guided losses (§9)
        policy, ref = rsm.Guided(policy, 1.5), rsm.Guided(ref, 1.5)
    path = rsm.FlowPath()

    def score(model):
        out = {}
        for k in (0, 1):
            s = np.from_dlpack(rsm.sample(model, 300, path, "ode", steps=10, cond=np.full(300, k), seed=9))
            out[k] = float(_class_up_down(rsm.from_dlpack(s), np.full(300, k, dtype=np.int64)).mean())
        return out

    before = score(policy)
    run = rsm.finetune(policy, ref, _class_up_down, method="flow-grpo", iterations=12, batch_size=4,
                       group_size=6, conditions=[0, 1], progress=False, lr=1e-3)
    after = score(run.policy)
    assert after[0] > before[0] + 0.1 and after[1] > before[1] + 0.1   # both classes, opposite ways
    assert run.history[-1]["reward_mean"] > run.history[0]["reward_mean"]


def test_conditions_cycle_and_group_per_condition():
    base = _model(dtype="float32")
    seen = []

    def reward(x0, cond):
        seen.append(np.asarray(cond).copy())
        return np.from_dlpack(x0)[:, 0].astype(np.float64)

    conds = np.arange(6, dtype=F32).reshape(3, 2)
    trainer = rsm.Trainer(base.copy(), base, reward, "flow-grpo", batch_size=2, group_size=3,
                          conditions=conds)
    for _ in range(3):
        trainer.step()
    # iteration k uses conditions (2k, 2k+1) mod 3, each repeated over its group of 3
    expect = [[0, 1], [2, 0], [1, 2]]
    for got, idx in zip(seen, expect):
        assert np.array_equal(got, np.repeat(conds[idx], 3, axis=0))


def test_zero_std_groups_from_a_discrete_reward():
    """A discrete reward that gives every sample of a group the same score: no advantage, no policy
    gradient; the step runs and only the KL anchor is left (zero at theta = theta_ref)."""
    base = _model(dtype="float32")
    policy = base.copy()
    trainer = rsm.Trainer(policy, base, lambda x, c: np.where(c[:, 0] > 0, 1.0, 0.0), "flow-grpo",
                          batch_size=2, group_size=4, conditions=np.array([[1.0, 0.0], [-1.0, 0.0]], F32))
    batch = trainer.rollout()
    assert not batch["mask"].any() and np.all(batch["adv"] == 0)
    grads, _ = trainer.loss_and_grad(batch)
    assert np.all(grads == 0)
    row = trainer.step()
    assert np.isfinite(row["loss"]) and row["reward_std"] > 0          # across groups, not within


def test_conditional_finetune_bad_inputs():
    m = _model(dtype="float32")
    r = lambda x, c: np.zeros(x.shape[0])  # noqa: E731
    with pytest.raises(ValueError, match="conditional.*conditions="):
        rsm.Trainer(m.copy(), m, r, "flow-grpo", batch_size=2, group_size=2)
    with pytest.raises(ValueError, match="unconditional"):
        u = rsm.MLP(3, 8, 1)
        rsm.Trainer(u.copy(), u, r, "flow-grpo", batch_size=2, group_size=2, conditions=[0, 1])
    with pytest.raises(ValueError, match="conditions"):
        rsm.Trainer(m.copy(), m, r, "flow-grpo", batch_size=2, group_size=2, conditions=np.zeros((2, 3)))
    cm = _class_model()
    with pytest.raises(ValueError, match="class id"):
        rsm.Trainer(cm, cm.copy(), r, "flow-grpo", batch_size=2, group_size=2, conditions=[0, 7])
    # a reward that returns the wrong shape changes nothing
    policy = cm.copy()
    policy.num_classes = 2
    before = np.from_dlpack(policy.params).copy()
    trainer = rsm.Trainer(policy, cm, lambda x, c: np.zeros(3), "flow-grpo", batch_size=2,
                          group_size=2, conditions=[0, 1])
    with pytest.raises(RewardError, match="shape"):
        trainer.step()
    assert np.array_equal(np.from_dlpack(policy.params), before)


@pytest.mark.parametrize("method", rsm.methods.names())
def test_every_preset_runs_on_a_class_conditional_model(method):
    """Every preset's rollout, estimator and loss carry the condition: the model gets its own
    layout, the reward gets int64 class ids [n] that match each sample's group (a preset that
    drops the condition anywhere fails the assertion inside the reward or in the model's
    conditional-input check)."""
    cfg = rsm.methods.get(method)
    path = rsm.VPPath() if cfg["path"] == "vp" else rsm.FlowPath()
    base = _class_model()
    base.num_classes = 2
    calls = []

    def reward(x0, cond):
        x = np.from_dlpack(x0).astype(np.float64)
        assert cond.dtype == np.int64 and cond.shape == (x.shape[0],)
        assert set(np.unique(cond)) <= {0, 1}
        calls.append(cond.copy())
        target = np.where(cond == 0, 1.0, -1.0)
        r = -(x[:, 1] - target) ** 2
        if cfg["family"] == "zeroth-order":
            return r
        g = np.zeros_like(x)
        g[:, 1] = -2.0 * (x[:, 1] - target)
        return r, g

    fn = rsm.Reward(reward, differentiable=cfg["family"] != "zeroth-order")
    policy = base.copy()
    before = np.from_dlpack(policy.params).copy()
    # a Branch-GRPO tree has branch ** split leaves per root (16 as released)
    group = cfg["branch"] ** cfg["split"] if cfg["rollout"] == "tree" else 8
    trainer = rsm.Trainer(policy, base, fn, method, path=path, batch_size=2, group_size=group,
                          conditions=np.array([0, 1]))
    row = trainer.step()
    assert np.isfinite(row["loss"]) and calls
    assert not np.array_equal(np.from_dlpack(policy.params), before)   # it trained
    # the first reward call scores the rollout: both classes appear
    assert set(np.unique(calls[0])) == {0, 1}
