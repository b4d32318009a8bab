"""Image datasets (digits, procedural shapes) and image rewards (JPEG, scikit-learn classifier,
GenEval-like checker, rsm classifier, contrast): shapes, ranges, determinism, the checker against
the drawn attributes, reward orderings, and differentiable rewards against finite differences."""
import numpy as np
import pytest

import rsm
from rsm import image_datasets as D
from rsm import image_rewards as R
from rsm.rewards import RewardError

pytest.importorskip("sklearn")
pytest.importorskip("PIL")


# ---- datasets --------------------------------------------------------------------------------

def test_digits_shapes_ranges_split():
    train, test, full = D.digits("train"), D.digits("test"), D.digits("all")
    assert full.images.shape == (1797, 1, 8, 8) and full.images.dtype == np.float32
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.2) < 0.01
    assert full.images.min() == -1.0 and full.images.max() == 1.0
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert train.flat().shape == (len(train), 64) and train.dim == 64
    # disjoint and covering: every image of the full set is in exactly one split
    key = lambda ds: {x.tobytes() + bytes([int(y)]) for x, y in zip(ds.images, ds.labels)}  # noqa: E731
    assert not (key(train) & key(test))
    again = D.digits("train")
    assert np.array_equal(again.images, train.images) and np.array_equal(again.labels, train.labels)
    assert not np.array_equal(D.digits("train", seed=1).labels, train.labels)


def test_image_modules_reachable_from_datasets_and_rewards():
    assert rsm.datasets.digits is D.digits and rsm.datasets.shapes is D.shapes
    assert rsm.rewards.geneval is R.geneval and rsm.rewards.jpeg_compressibility is R.jpeg_compressibility
    with pytest.raises(AttributeError, match="no_such"):
        rsm.rewards.no_such


def test_shapes_deterministic_and_in_range():
    a, b, c = D.shapes(40, seed=3), D.shapes(40, seed=3), D.shapes(40, seed=4)
    assert a.images.shape == (40, 3, 16, 16) and a.images.dtype == np.float32
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0
    table = D.shape_prompts(16)
    assert a.num_classes == len(table) == 3 * 3 * 2 * 2
    assert a.cond.shape == (40, 8)
    for i in range(40):
        p = a.attributes[i]["prompt"]
        assert table[a.labels[i]] == p and len(a.attributes[i]["objects"]) == p.count
        assert np.array_equal(a.cond[i], D.prompt_vector(p, 16))
    big = D.shapes(5, size=32, seed=0)
    assert big.images.shape == (5, 3, 32, 32) and big.num_classes == 3 * 3 * 3 * 2


def test_checker_recovers_procedural_attributes():
    """The checker finds exactly the drawn shapes: strict accuracy 1 on clean images."""
    checker = R.ShapeChecker()
    for size, n in ((16, 144), (32, 54)):
        ds = D.shapes(n, size=size, seed=11)
        prompts = [a["prompt"] for a in ds.attributes]
        assert checker.score(ds.images, prompts, strict=True).mean() == 1.0
        for img, attr in zip(ds.images[:10], ds.attributes[:10]):
            found = checker.detect(img)
            assert len(found) == attr["prompt"].count
            assert {o["shape"] for o in found} == {attr["prompt"].shape}


def test_checker_scores_are_discrete_and_reward_path():
    ds = D.shapes(36, seed=2)
    reward = R.geneval(16)
    x = rsm.from_dlpack(ds.flat())
    r, grad, valid = reward(x, ds.labels)
    assert grad is None and valid.all() and np.all(r == 1.0)
    # a wrong prompt fails some checks: scores stay on the grid {0, 1/4, ..., 1}
    wrong = (ds.labels + 1) % ds.num_classes
    r_wrong, _, _ = reward(x, wrong)
    assert np.all(np.isin(r_wrong, [0.0, 0.25, 0.5, 0.75, 1.0])) and r_wrong.mean() < 1.0
    blank = np.full_like(ds.flat(), -1.0)
    assert np.all(reward(rsm.from_dlpack(blank), ds.labels)[0] == 0.0)   # nothing found: no check passes
    with pytest.raises(ValueError, match="geneval.*class ids"):
        reward(x, np.full(36, ds.num_classes))
    with pytest.raises(ValueError, match="geneval.*cond"):
        reward(x, None)


def test_dataset_bad_inputs():
    with pytest.raises(ValueError, match="split"):
        D.digits("val")
    with pytest.raises(ValueError, match="size"):
        D.shapes(4, size=20)
    with pytest.raises(ValueError, match="seed"):
        D.shapes(4, seed=-1)
    with pytest.raises(ValueError, match="n must"):
        D.shapes(0)
    with pytest.raises(ValueError, match="not drawable"):
        D.shapes(2, prompts=[D.ShapePrompt("square", "red", 3, "left")])   # 2 cells per half at 16


# ---- rewards ---------------------------------------------------------------------------------

def test_jpeg_flat_compresses_better_than_noise():
    rng = np.random.default_rng(0)
    flat = np.zeros((3, 3 * 16 * 16), np.float32)
    noise = rng.uniform(-1, 1, (3, 3 * 16 * 16)).astype(np.float32)
    comp, incomp = R.jpeg_compressibility((3, 16, 16)), R.jpeg_incompressibility((3, 16, 16))
    r_flat, r_noise = comp(rsm.from_dlpack(flat))[0], comp(rsm.from_dlpack(noise))[0]
    assert np.all(r_flat > r_noise) and np.all(r_flat < 0)
    assert np.array_equal(incomp(rsm.from_dlpack(noise))[0], -r_noise)
    assert np.all(R.jpeg_size_kb(np.zeros((1, 1, 8, 8))) < R.jpeg_size_kb(rng.uniform(-1, 1, (1, 1, 8, 8))))


def test_sklearn_classifier_probability_on_real_digits():
    clf = R.digit_classifier()
    assert clf.test_accuracy_ > 0.94
    test = D.digits("test")
    r, _, _ = R.digit_probability()(rsm.from_dlpack(test.flat()), test.labels)
    assert r.shape == (len(test),) and np.all((r >= 0) & (r <= 1))
    assert r.mean() > 0.85                                    # the true digit is likely
    wrong, _, _ = R.digit_probability()(rsm.from_dlpack(test.flat()), (test.labels + 3) % 10)
    assert wrong.mean() < 0.05
    r_col, _, _ = R.digit_probability()(rsm.from_dlpack(test.flat()), test.labels[:, None])
    assert np.array_equal(r, r_col)                           # ids [n, 1] (the model layout) too


def test_rsm_classifier_trains_and_gradient_matches_finite_differences():
    train, test = D.digits("train"), D.digits("test")
    clf = R.RSMClassifier(64, 10, hidden=48, depth=1, seed=0)
    losses = clf.fit(train.flat(), train.labels, steps=150, seed=0)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    assert clf.accuracy(test.flat(), test.labels) > 0.85
    # float64 twin with the trained weights: exact gradient of log p(y | x) vs central differences
    twin = R.RSMClassifier(64, 10, hidden=48, depth=1, seed=0, dtype="float64")
    np.from_dlpack(twin.model.params)[...] = np.from_dlpack(clf.model.params)
    reward = R.digit_log_probability(twin)
    x = test.flat()[:5].astype(np.float64)
    y = test.labels[:5]
    r, g, _ = reward(rsm.from_dlpack(x), y)
    assert np.all(r <= 0)
    v = np.random.default_rng(1).standard_normal(x.shape)
    h = 1e-6
    num = (twin.log_prob(x + h * v, y, grad=False)[0] - twin.log_prob(x - h * v, y, grad=False)[0]) / (2 * h)
    ana = (g * v).sum(1)
    assert np.max(np.abs(num - ana) / np.maximum(np.abs(ana), 1e-3)) < 1e-6
    # the check can fail: a gradient off by 0.1 % is caught at the same tolerance
    assert np.max(np.abs(num - 1.001 * ana) / np.maximum(np.abs(ana), 1e-3)) > 1e-6
    logp, _ = twin.log_prob(x, y, grad=False)
    assert np.allclose(logp, r, rtol=1e-12)


def test_contrast_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (4, 3 * 8 * 8))
    reward = R.contrast((3, 8, 8), scale=2.0)
    r, g, _ = reward(rsm.from_dlpack(x))
    assert np.allclose(r, 2.0 * x.std(axis=1))
    v = rng.standard_normal(x.shape)
    h = 1e-6
    num = (reward.fn(x + h * v)[0] - reward.fn(x - h * v)[0]) / (2 * h)
    assert np.max(np.abs(num - (g * v).sum(1)) / np.abs(num)) < 1e-6
    flat = np.zeros((1, 3 * 8 * 8))
    r0, g0, _ = reward(rsm.from_dlpack(flat))
    assert r0[0] == 0 and np.all(g0 == 0)                     # std 0: gradient defined as 0


def test_image_reward_bad_inputs():
    comp = R.jpeg_compressibility((1, 8, 8))
    with pytest.raises(ValueError, match=r"jpeg_compressibility.*\[n, 64\]"):
        comp(rsm.from_dlpack(np.zeros((2, 65), np.float32)))
    with pytest.raises(ValueError, match="image_shape"):
        R.contrast((2, 8, 8))
    with pytest.raises(ValueError, match="digit_probability.*class ids"):
        R.digit_probability()(rsm.from_dlpack(np.zeros((2, 64), np.float32)), np.array([0, 10]))
    # a reward returning the wrong shape or NaN fails in the shared validation path
    bad_shape = rsm.Reward(lambda x, c: np.zeros(3))
    with pytest.raises(RewardError, match="shape"):
        bad_shape(rsm.from_dlpack(np.zeros((2, 64), np.float32)))
    nan = rsm.Reward(lambda x, c: np.full(2, np.nan))
    with pytest.raises(RewardError, match="non-finite"):
        nan(rsm.from_dlpack(np.zeros((2, 64), np.float32)))


def test_checker_reward_in_the_trainer_zero_std_groups():
    """The GenEval-like reward on an untrained image model: every sample scores the same, so every
    group has zero std; the Trainer masks them (no advantage) and the step still runs."""
    model = rsm.MLP(3 * 16 * 16, 32, 1, cond_dim=8, seed=0)
    table = D.shape_prompts(16)
    prompts = [table[0], table[7]]
    conditions = np.stack([D.prompt_vector(p, 16) for p in prompts])
    seen = []

    def reward(x0, cond):          # condition vectors reach the reward: map back to class ids
        ids = np.array([[np.array_equal(c, v) for v in conditions].index(True) for c in cond])
        seen.append(ids)
        return R.geneval(16).fn(x0, np.array([table.index(prompts[i]) for i in ids]))

    trainer = rsm.Trainer(model.copy(), model, reward, "flow-grpo", batch_size=2, group_size=3,
                          conditions=conditions)
    batch = trainer.rollout()
    assert np.all(batch["rewards"] == batch["rewards"][0]) and not batch["mask"].any()
    row = trainer.step()
    assert row["reward_std"] == 0.0 and np.isfinite(row["loss"])
    assert np.array_equal(seen[0], [0, 0, 0, 1, 1, 1])
