"""rsm.rewards.RayPool on a local Ray (2 CPUs, loopback): the same rewards (and gradients) as
in-process and in the original order, a killed actor replaced without losing or duplicating a
row, a factory that raises reported with the reward's name, and a trainer step through the pool
equal to the in-process one."""
import os
import sys

import numpy as np
import pytest

import rsm

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.multiprocess
from ray import cloudpickle  # noqa: E402  (Ray's own copy pickles the actors' arguments)

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the factories below travel by value


def quadratic_factory():
    def fn(x, cond):
        x = np.from_dlpack(x)
        return -np.sum((x - 0.5) ** 2, axis=1), -2.0 * (x - 0.5)
    return fn


def plain_factory():
    def fn(x, cond):
        x = np.from_dlpack(x)
        return np.sum(x, axis=1) * (1.0 if cond is None else np.asarray(cond, dtype=np.float64))
    return fn


def dying_factory(marker):
    def factory():
        def fn(x, cond):
            try:                                 # the first actor to score dies, once
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return np.sum(np.from_dlpack(x), axis=1)
            os._exit(1)
        return fn
    return factory


def broken_factory():
    raise RuntimeError("the scorer weights are missing")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_pool_scores_like_in_process(local_ray):
    x = np.random.default_rng(0).normal(size=(13, 3))
    with rsm.rewards.RayPool(quadratic_factory, num_workers=2, differentiable=True, timeout=120) as pool:
        r, g, ok = pool(rsm.from_dlpack(x))
        r0, g0, _ = rsm.Reward(quadratic_factory(), differentiable=True)(rsm.from_dlpack(x))
        assert np.array_equal(r, r0) and np.array_equal(g, g0) and ok.all()
    cond = np.arange(13)
    with rsm.rewards.RayPool(plain_factory, num_workers=2, timeout=120) as pool:
        r, _, _ = pool(rsm.from_dlpack(x), cond)
        assert np.array_equal(r, plain_factory()(rsm.from_dlpack(x), cond))


def test_killed_actor_is_replaced(local_ray, tmp_path):
    x = np.random.default_rng(1).normal(size=(10, 2))
    with rsm.rewards.RayPool(dying_factory(str(tmp_path / "died")), num_workers=2, timeout=120) as pool:
        r, _, ok = pool(rsm.from_dlpack(x))
        assert pool.restarts == 1
        assert np.array_equal(r, x.sum(axis=1)) and ok.all()   # every row once, in order


def test_factory_error_names_the_reward(local_ray):
    with pytest.raises(rsm.rewards.RewardError, match=r"(?s)reward .broken_factory.*factory raised.*weights are missing"):
        rsm.rewards.RayPool(broken_factory, num_workers=1, timeout=120)


def test_trainer_step_through_the_pool(local_ray):
    rows = {}
    for where in ("local", "ray"):
        policy = rsm.MLP(2, 8, 1, seed=0, temb_dim=4, dtype="float64")
        reward = (rsm.rewards.RayPool(plain_factory, num_workers=2, timeout=120) if where == "ray"
                  else rsm.Reward(plain_factory()))
        trainer = rsm.Trainer(policy, policy.copy(), reward, "flow-grpo", batch_size=2, group_size=4,
                              seed=0, kl_every=0, sampler_steps=4)
        rows[where] = trainer.step()
        if where == "ray":
            reward.close()
        rows[where + "_params"] = np.array(np.from_dlpack(policy.params))
    assert rows["local"]["reward_mean"] == rows["ray"]["reward_mean"]
    assert np.array_equal(rows["local_params"], rows["ray_params"])


def failing_factory():
    def fn(x, cond):
        raise RuntimeError("scorer out of memory")
    return fn


def test_failing_reward_leaves_the_trainer_untouched(local_ray):
    policy = rsm.MLP(2, 8, 1, seed=0, temb_dim=4, dtype="float64")
    before = np.array(np.from_dlpack(policy.params))
    with rsm.rewards.RayPool(failing_factory, num_workers=1, retries=1, timeout=120) as pool:
        trainer = rsm.Trainer(policy, policy.copy(), pool, "flow-grpo", batch_size=2, group_size=2,
                              seed=0, kl_every=0, sampler_steps=3)
        with pytest.raises(rsm.rewards.RewardError, match=r"(?s)reward 'failing_factory' failed on rows \[0, 4\) after 1 retries.*out of memory"):
            trainer.step()
        assert pool.restarts == 1
    assert np.array_equal(np.from_dlpack(policy.params), before)
    assert trainer.iteration == 0 and trainer.optimizer.step_count == 0 and len(trainer.history) == 0
