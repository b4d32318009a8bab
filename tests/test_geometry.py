"""The batch geometry (conditions x group size x trained timesteps x inner epochs x gradient
accumulation) as one validated object, rsm.BatchGeometry: counts, impossible combinations
rejected before any work with the conflicting numbers named, and gradient accumulation that
really accumulates (k micro-batches = one batch of the same rows)."""
import numpy as np
import pytest

import rsm
from toy_models import make_models, reward_failing_on_call


def test_geometry_counts():
    g = rsm.BatchGeometry.from_method(rsm.methods.get("flow-grpo", accumulate=2, inner_epochs=3), 4, 8)
    assert (g.conditions, g.group_size, g.timesteps, g.accumulate, g.inner_epochs) == (4, 8, 9, 2, 3)
    assert g.rows_per_rollout == 4 * 8 * 9 and g.rows_per_update == 2 * 4 * 8 * 9
    assert g.samples_per_rollout == 32 and g.optimizer_steps == 3
    zo = rsm.BatchGeometry.from_method(rsm.methods.get("rsm-zo", budget="lowsnr2"), 3, 8)   # 6 6 8 10
    assert zo.timesteps == 4 and zo.rows_per_rollout == 3 * 30
    zo = rsm.BatchGeometry.from_method(rsm.methods.get("rsm-zo"), 3, 8)   # default: 4 4 4 4 4 3 3 2 2
    assert zo.timesteps == 9 and zo.rows_per_rollout == 3 * 30
    tree = rsm.BatchGeometry.from_method(rsm.methods.get("branch-grpo-rsm"), 2, 8)
    # 10 steps, splits at 0, 3, 6, the step into t = 0 untrained: 2 2 2 4 4 4 8 8 8 rows per root
    assert tree.timesteps == 9 and tree.rows_per_rollout == 2 * (3 * 2 + 3 * 4 + 3 * 8)
    policy, ref = make_models()
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0, 0]), "ddpo", batch_size=2,
                          group_size=3, steps=6, vp_schedule="linear")
    assert trainer.geometry.timesteps == 5     # VP's last step into t = 0 is deterministic
    assert "2 conditions x 3 samples x 5 timesteps" in str(trainer.geometry)
    # DDPO's released SD1.x table (the preset's default): abar(0) = abar[0] < 1, every step
    # stochastic and trained
    trainer = rsm.Trainer(policy, ref, rsm.rewards.quadratic([0, 0]), "ddpo", batch_size=2,
                          group_size=3, steps=6)
    assert trainer.path.schedule == "scaled_linear" and trainer.geometry.timesteps == 6


def never_called(x, cond):
    raise AssertionError("the reward must not be called for an invalid geometry")


@pytest.mark.parametrize("method,kwargs,message", [
    ("branch-grpo-rsm", {"group_size": 6}, r"branch=2 \*\* split=3 = 8 leaves per root, but group_size=6"),
    ("branch-grpo-rsm", {"split": 5, "steps": 4, "group_size": 32}, r"split=5 .*steps=4"),
    ("branch-grpo", {"group_size": 8}, r"branch=2 \*\* split=4 = 16 leaves per root, but group_size=8"),
    ("refl", {"late_steps": 40}, r"late_steps=40 .*steps - 1 = 39"),
    ("draft", {"truncation": 60}, r"truncation=60 exceeds the steps=50"),
    ("refl", {"inner_epochs": 2}, r"inner_epochs=2 must be 1"),
    ("flow-grpo", {"train_steps": [0, 7], "steps": 5}, r"train_steps=\[0, 7\] .*steps=5"),
    ("dance-grpo", {"train_steps": 1.5}, r"train_steps=1.5 must be a fraction"),
    ("flow-grpo", {"accumulate": 0}, r"accumulate=0 must be a positive int"),
    ("flow-grpo", {"group_size": 1}, r"group_size=1 must be >= 2"),
    ("rsm-zo", {"budget": [4] * 12}, r"budget has 12 entries but the grid has steps=10"),
])
def test_impossible_geometry_is_rejected_before_any_work(method, kwargs, message):
    policy, ref = make_models(1)
    before = np.from_dlpack(policy.params).copy()
    kwargs = dict(kwargs)
    group = kwargs.pop("group_size", 8)
    with pytest.raises(ValueError, match=message):
        rsm.Trainer(policy, ref, rsm.Reward(never_called, differentiable=True), method,
                    batch_size=2, group_size=group, **kwargs)
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)


def split_batch(batch, parts):
    """Split an SDE-rollout batch into `parts` micro-batches of consecutive conditions (rows of
    one group stay together, so group advantages are unchanged)."""
    n = len(batch["rewards"])
    size = n // parts
    out = []
    for p in range(parts):
        sel = np.arange(p * size, (p + 1) * size)
        micro = {k: batch[k][sel] for k in ("x0", "rewards", "valid", "adv", "mask")}
        micro["rows"] = [{**{k: v[sel] if isinstance(v, np.ndarray) and v.shape[:1] == (n,) else v
                             for k, v in r.items()}, "traj": np.arange(size)} for r in batch["rows"]]
        out.append(micro)
    return out


def test_accumulating_two_micro_batches_equals_one_batch_of_the_same_rows():
    policy, ref = make_models(2)
    reward = rsm.rewards.quadratic([1.0, -0.5])
    common = dict(group_size=4, steps=4, grid="uniform", clip_eps=0.05, kl=0.1, inner_epochs=2)
    big_trainer = rsm.Trainer(policy.copy(), ref, reward, "flow-grpo", batch_size=4, **common)
    acc_trainer = rsm.Trainer(policy.copy(), ref, reward, "flow-grpo", batch_size=2, accumulate=2, **common)
    half_trainer = rsm.Trainer(policy.copy(), ref, reward, "flow-grpo", batch_size=2, **common)
    big = big_trainer.rollout()
    assert len(big["rewards"]) == 16 and len(big["rows"][0]["traj"]) == 16
    micro = split_batch(big, 2)
    big_trainer.update([big])
    acc_trainer.update(micro)
    half_trainer.update(micro[:1])
    p_big = np.from_dlpack(big_trainer.policy.params)
    p_acc = np.from_dlpack(acc_trainer.policy.params)
    p_half = np.from_dlpack(half_trainer.policy.params)
    start = np.from_dlpack(policy.params)
    assert big_trainer.optimizer.step_count == acc_trainer.optimizer.step_count == 2
    np.testing.assert_allclose(p_acc - start, p_big - start, rtol=1e-9, atol=1e-15)
    assert not np.allclose(p_half - start, p_big - start, rtol=1e-3)   # one half alone differs


def test_step_with_accumulation_runs_k_rollouts_and_one_optimizer_step_per_epoch():
    policy, ref = make_models(3)
    reward = rsm.rewards.quadratic([0.5, 0.5])
    one = rsm.Trainer(policy.copy(), ref, reward, "flow-grpo", batch_size=2, group_size=4, steps=4)
    acc = rsm.Trainer(policy.copy(), ref, reward, "flow-grpo", batch_size=2, group_size=4, steps=4,
                      accumulate=3)
    row_one, row_acc = one.step(), acc.step()
    assert acc.optimizer.step_count == one.optimizer.step_count == 1
    assert row_acc["rows"] == 3 * row_one["rows"] and row_acc["rollout_nfe"] == 3 * row_one["rollout_nfe"]
    assert row_acc["reward_calls"] == 3
    x0 = [acc.rollout(micro=j)["x0"] for j in range(3)]           # each micro-batch its own draw
    assert not np.array_equal(x0[0], x0[1]) and not np.array_equal(x0[1], x0[2])
    np.testing.assert_array_equal(acc.rollout(micro=1)["x0"], x0[1])   # and reproducible


def test_a_failing_micro_batch_changes_nothing():
    policy, ref = make_models(4)
    flaky = reward_failing_on_call(2)
    trainer = rsm.Trainer(policy, ref, flaky, "flow-grpo", batch_size=2, group_size=4, steps=4,
                          accumulate=2)
    before = np.from_dlpack(policy.params).copy()
    with pytest.raises(RuntimeError, match="reward server down"):
        trainer.step()
    np.testing.assert_array_equal(np.from_dlpack(policy.params), before)
    assert trainer.optimizer.step_count == 0 and trainer.iteration == 0 and len(trainer.history) == 0
