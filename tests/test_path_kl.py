"""Trainer.path_kl and the history column "kl_path": the KL between the path measures of the
policy and the reference under one fixed SDE (THEORY.md §2.3, §11), the same for every preset.

The sampler coefficients are written here independently (THEORY.md §2.1 DDPM, §2.2 Flow-GRPO SDE)
and checked against the means the C sampler records, then the KL is recomputed from the recorded
states with both models' forwards."""
import numpy as np
import pytest

import rsm
from sde_oracle import flow_sde_step
from rsm import auxiliary as aux

REWARD = rsm.rewards.quadratic([1.0, 0.0])


def make_models(seed=0, cond_dim=0):
    """A float64 reference with random weights (non-trivial outputs) and a policy near it."""
    ref = rsm.MLP(2, 16, 2, cond_dim=cond_dim, seed=seed, dtype="float64")
    p = np.from_dlpack(ref.params)
    p[:] = np.random.default_rng(seed).standard_normal(p.shape) * 0.25
    policy = ref.copy()
    np.from_dlpack(policy.params)[:] += 0.05 * np.random.default_rng(seed + 1).standard_normal(p.shape)
    return policy, ref


def ddpm_step(path, ts, i):
    """DDPM (DDIM, eta = 1) step (THEORY.md §2.1): mu = sqrt(ab'/ab) x - (c1 - c2) eps."""
    ab, ab_next = path.coef(ts[i])["alpha_bar"], path.coef(ts[i + 1])["alpha_bar"]
    var = (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
    c1 = np.sqrt((1 - ab) * ab_next / ab)
    c2 = np.sqrt(1 - ab_next - var)
    return np.sqrt(ab_next / ab), c1 - c2, np.sqrt(var)


def step_of(trainer, i, ts=None, a=None):
    ts = trainer.kl_grid if ts is None else ts
    if trainer.path.kind == "flow":
        return flow_sde_step(ts, i, trainer.kl_noise_level if a is None else a)[:3]   # (cx, cu, std)
    return ddpm_step(trainer.path, ts, i)


def numpy_path_kl(trainer, n, cond=None):
    """Per-step KL terms from the recorded states of the trainer's evaluation trajectories."""
    ts = trainer.kl_grid
    traj = rsm.sample(trainer.policy, n, trainer.path, "sde" if trainer.path.kind == "flow" else "ddpm",
                      ts=ts, noise_level=trainer.kl_noise_level, seed=trainer.kl_seed, cond=cond,
                      return_trajectory=True)
    terms = np.zeros(len(ts) - 1)
    for i in range(len(ts) - 1):
        cx, cu, std = step_of(trainer, i)
        x = traj.xs[i]
        u_pol = np.from_dlpack(trainer.policy.forward(x, ts[i], cond))
        u_ref = np.from_dlpack(trainer.ref.forward(x, ts[i], cond))
        mean_pol, mean_ref = cx * x - cu * u_pol, cx * x - cu * u_ref
        # the test's coefficients are the sampler's: its recorded means and stds
        np.testing.assert_allclose(mean_pol, traj.means[i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(std, traj.stds[i], rtol=1e-12, atol=1e-15)
        if std > 0:
            terms[i] = np.mean(((mean_pol - mean_ref) ** 2).sum(1) / (2 * std**2))
    return terms


@pytest.mark.parametrize("method", ["flow-grpo", "rsm-zo", "ddpo", "rsm-fo"])
def test_zero_at_the_reference(method):
    _, ref = make_models()
    trainer = rsm.Trainer(ref.copy(), ref, REWARD, method, batch_size=2, group_size=4)
    assert trainer.path_kl() == 0.0
    assert np.all(trainer.path_kl(per_step=True) == 0.0)
    row = trainer.step()
    assert row["kl_path"] == 0.0   # taken on the parameters before the update
    assert trainer.path_kl() > 0.0


@pytest.mark.parametrize("method,cond_dim,overrides", [
    ("flow-grpo", 0, {}), ("ddpo", 0, {}), ("ddpo", 0, {"vp_schedule": "linear", "steps": 20}),
    ("rsm-zo", 2, {})], ids=["flow-grpo", "ddpo", "ddpo-linear-vp", "rsm-zo"])
def test_matches_an_independent_numpy_computation(method, cond_dim, overrides):
    policy, ref = make_models(3, cond_dim)
    conditions = None if cond_dim == 0 else np.array([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5]])
    trainer = rsm.Trainer(policy, ref, REWARD, method, batch_size=3, group_size=4,
                          conditions=conditions, **overrides)
    n = 40
    cond = None if conditions is None else conditions[np.arange(n) % 3]
    want = numpy_path_kl(trainer, n, cond)
    got = trainer.path_kl(n, per_step=True)
    assert want.sum() > 1e-4
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    assert abs(trainer.path_kl(n) - want.sum()) <= 1e-10 * want.sum()
    if trainer.path.kind == "vp" and not trainer.path.discrete:
        # DDPM into t = 0 on the continuous schedule (abar(0) = 1) is deterministic: no term
        assert got[-1] == 0.0 and trainer.sde[-1]["std"] == 0.0
    elif trainer.path.kind == "vp":
        # DDPO's SD1.x table: abar(0) = abar[0] < 1, the last step is stochastic too
        assert got[-1] > 0.0 and trainer.sde[-1]["std"] > 0.0


@pytest.mark.parametrize("method", ["flow-grpo", "adjoint-matching", "ddpo"])
def test_closed_form_for_a_constant_output_shift(method):
    """Outputs that differ by a constant c at every state: KL = sum_i K_i^2 |c|^2 / (2 std_i^2)
    exactly, whatever the states (no Monte-Carlo error)."""
    _, ref = make_models(5)
    policy = ref.copy()
    c = np.array([0.3, -0.2])
    policy.named_params()["output.bias"][:] += c
    trainer = rsm.Trainer(policy, ref, REWARD, method, batch_size=2, group_size=4)
    want = np.zeros(len(trainer.kl_grid) - 1)
    for i in range(len(want)):
        _, cu, std = step_of(trainer, i)
        want[i] = cu**2 * (c @ c) / (2 * std**2) if std > 0 else 0.0
    np.testing.assert_allclose(trainer.path_kl(17, per_step=True), want, rtol=1e-10, atol=0)
    # another grid and noise level on the same trainer
    ts = rsm.sampling.time_grid(7, trainer.path, "uniform")
    a = 1.3
    want = [(step_of(trainer, i, ts, a)[1] / step_of(trainer, i, ts, a)[2]) ** 2 * (c @ c) / 2
            for i in range(7) if step_of(trainer, i, ts, a)[2] > 0]
    got = trainer.path_kl(5, ts=ts, noise_level=a)
    assert abs(got - sum(want)) <= 1e-10 * sum(want)


def test_same_value_for_every_preset_with_the_same_parameters():
    """The column is a function of the parameters only: the flow presets on the SD3 grid (SDE,
    branch and tree rollouts alike), the VP presets (PCPO's own sampler std included), and
    first-order presets evaluated on the same grid agree bitwise; the train-time "kl" does not."""
    policy, ref = make_models(7)
    params = np.array(np.from_dlpack(policy.params))

    def value(method, **kw):
        p = policy.copy()
        np.from_dlpack(p.params)[:] = params
        trainer = rsm.Trainer(p, ref, REWARD, method, batch_size=2, group_size=8, seed=11, **kw)
        return trainer.path_kl(), trainer

    base, flow = value("flow-grpo")
    assert base > 0
    for method in ("rsm-zo", "tempflow-grpo", "branch-grpo-rsm", "grpo-guard", "pcpo",
                   "flow-grpo-exact"):
        assert value(method)[0] == base, method
    # dance-grpo rolls out on its own grid with a constant-s~ SDE; its kl_path is Flow-GRPO's
    # SDE at a = 0.7 (the default for a constant-s~ preset), here on the SD3 grid
    for method in ("rsm-fo", "draft-rsm", "adjoint-matching", "dance-grpo"):
        assert value(method, kl_grid=flow.ts, kl_noise_level=0.7)[0] == base, method
    assert value("dance-grpo", kl_grid=flow.ts)[0] == base
    # ddpo's released default is SD1.x's table on the leading grid: compare on rsm's linear VP
    vp, _ = value("ddpo", vp_schedule="linear", grid="uniform", steps=20)
    assert vp > 0 and value("ddpo")[0] != vp
    for method in ("pcpo-diffusion", "rsm-zo-diffusion", "rsm-fo-diffusion"):
        assert value(method)[0] == vp, method
    # the train-time column sums different rows for the two methods (rsm-zo with the lowsnr2
    # budget trains 4 of the 9 steps; its default "tapered" budget trains all 9, other rows)
    kl_train = []
    for method, kw in (("flow-grpo", {}), ("rsm-zo", {"budget": "lowsnr2"}), ("rsm-zo", {})):
        _, trainer = value(method, **kw)
        kl_train.append(trainer.loss_and_grad(trainer.rollout())[1]["kl"])
    assert kl_train[0] > 2 * kl_train[1] > 0
    assert kl_train[2] > 0 and kl_train[2] != kl_train[0]


@pytest.mark.parametrize("method", ["flow-grpo", "rsm-zo", "rsm-fo", "ddpo"])
def test_reporting_does_not_change_the_run(method):
    _, ref = make_models(9)
    runs = [rsm.finetune(ref.copy(), ref, REWARD, method, iterations=3, batch_size=2, group_size=4,
                         seed=4, progress=False, kl_every=every) for every in (1, 2, 0)]
    params = [np.from_dlpack(r.policy.params) for r in runs]
    np.testing.assert_array_equal(params[0], params[2])
    np.testing.assert_array_equal(params[1], params[2])
    eval_keys = {"kl_path", "eval_nfe", "eval_seconds", "seconds"}
    for k in range(3):
        rows = [r.history[k] for r in runs]
        assert rows[0].keys() == rows[2].keys()
        for key in rows[0].keys() - eval_keys:
            assert rows[0][key] == rows[2][key], key
        assert rows[0]["nfe"] == rows[2]["nfe"]   # evaluation is not training compute
    trainer = runs[0].trainer
    steps = len(trainer.kl_grid) - 1
    stochastic = sum(1 for i in range(steps) if step_of(trainer, i)[2] > 0)
    n = trainer.kl_samples
    assert n == 8
    kl = [r.history.column("kl_path") for r in runs]
    eval_nfe = [r.history.column("eval_nfe") for r in runs]
    assert kl[0][0] == 0.0 and np.all(kl[0][1:] > 0)
    np.testing.assert_array_equal(eval_nfe[0], n * (steps + stochastic))
    # kl_every = 2: iterations 0 and 2, the same values (same parameters, same noise)
    assert np.isnan(kl[1][1]) and eval_nfe[1][1] == 0
    np.testing.assert_array_equal(kl[1][[0, 2]], kl[0][[0, 2]])
    assert np.all(np.isnan(kl[2])) and np.all(eval_nfe[2] == 0)


def test_row_value_is_path_kl_before_the_update_on_fixed_noise():
    """Row k holds path_kl of the parameters that roll out iteration k, with the same evaluation
    noise at every iteration (common random numbers)."""
    policy, ref = make_models(2)
    trainer = rsm.Trainer(policy, ref, REWARD, "flow-grpo", batch_size=2, group_size=4,
                           kl_every=1)
    for _ in range(3):
        before = trainer.path_kl()
        assert trainer.path_kl() == before
        row = trainer.step()
        assert row["kl_path"] == before and trainer.path_kl() != before


def test_aux_trainer_reports_it_too():
    _, ref = make_models(4)
    trainer = aux.AuxTrainer(ref.copy(), ref, REWARD, "vgg-flow", batch_size=2, group_size=4,
                             kl_every=1)
    rows = [trainer.step() for _ in range(2)]
    assert rows[0]["kl_path"] == 0.0 and rows[1]["kl_path"] > 0.0
    assert rows[1]["eval_nfe"] > 0 and rows[1]["nfe"] == rows[1]["rollout_nfe"] + rows[1]["train_nfe"] + rows[1]["aux_nfe"]


@pytest.mark.parametrize("name,bad", [
    ("kl_every", -1), ("kl_every", 1.5), ("kl_every", True), ("kl_every", "2"), ("kl_every", None),
    ("kl_samples", 0), ("kl_samples", 2.0), ("kl_samples", False),
    ("kl_grid", [0.5]), ("kl_grid", [0.0, 1.0]), ("kl_grid", [[1.0, 0.0]]), ("kl_grid", [1.5, 0.0]),
    ("kl_grid", [1.0, np.nan, 0.0]), ("kl_grid", "fine"),
    ("kl_noise_level", 0.0), ("kl_noise_level", -1.0), ("kl_noise_level", np.inf), ("kl_noise_level", "a"),
])
def test_bad_settings_raise_naming_the_argument(name, bad):
    _, ref = make_models()
    with pytest.raises(ValueError, match=name):
        rsm.Trainer(ref.copy(), ref, REWARD, "flow-grpo", batch_size=2, group_size=4, **{name: bad})
    with pytest.raises(ValueError, match=name):
        rsm.finetune(ref.copy(), ref, REWARD, "flow-grpo", iterations=1, batch_size=2, group_size=4,
                     progress=False, **{name: bad})


def test_bad_path_kl_arguments_raise():
    policy, ref = make_models()
    trainer = rsm.Trainer(policy, ref, REWARD, "flow-grpo", batch_size=2, group_size=4)
    before = np.array(np.from_dlpack(policy.params))
    for kw, name in [({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"seed": -1}, "seed"),
                     ({"seed": 2**64}, "seed"), ({"ts": [0.2, 0.5]}, "ts"),
                     ({"noise_level": 0.0}, "noise_level")]:
        with pytest.raises(ValueError, match=name):
            trainer.path_kl(**kw)
    with pytest.raises(ValueError, match="sampler"):
        rsm.kl.path_kl(policy, ref, trainer.path, trainer.ts, 4, sampler="ode")
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)
