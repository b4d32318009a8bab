"""The small float64 policy / reference pair of the preset-equivalence and batch-geometry tests:
random weights (non-trivial outputs; rsm zero-initialises the output layer) and a reference
moved slightly away, so KL terms are non-zero; a reward that fails on one call (the
failed-step tests)."""
import numpy as np

import rsm


def make_models(seed=0):
    policy = rsm.MLP(2, 16, 2, seed=seed, dtype="float64")
    p = np.from_dlpack(policy.params)
    p[:] = np.random.default_rng(seed).standard_normal(p.shape) * 0.25
    ref = policy.copy()
    np.from_dlpack(ref.params)[:] += 0.05 * np.random.default_rng(seed + 1).standard_normal(p.shape)
    return policy, ref


def reward_failing_on_call(k, message="reward server down"):
    """-|x|^2, raising RuntimeError(message) on its k-th call (1-based) only."""
    calls = []

    def reward(x, cond):
        calls.append(1)
        if len(calls) == k:
            raise RuntimeError(message)
        return -np.sum(np.from_dlpack(x) ** 2, axis=1)
    return reward
