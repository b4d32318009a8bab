"""The small float64 policy / reference pair of the preset-equivalence and batch-geometry tests:
random weights (non-trivial outputs; rsm zero-initialises the output layer) and a reference
moved slightly away, so KL terms are non-zero."""
import numpy as np

import rsm


def make_models(seed=0):
    policy = rsm.MLP(2, 16, 2, seed=seed, dtype="float64")
    p = np.from_dlpack(policy.params)
    p[:] = np.random.default_rng(seed).standard_normal(p.shape) * 0.25
    ref = policy.copy()
    np.from_dlpack(ref.params)[:] += 0.05 * np.random.default_rng(seed + 1).standard_normal(p.shape)
    return policy, ref
