"""The C rollout engines (csrc/train/rollout.h) and their reward callback: the branch rollout
equals the composition of sampler calls it replaces, bitwise; the reward is called once per batch
from inside the C call, with an rsm.Tensor of the terminal samples, with the interpreter lock
released during the sampling; what the callable raises comes out unchanged; nothing leaks and the
model stays usable (also from inside the callback)."""
import sys
import threading
import time

import numpy as np
import pytest

import rsm
from rsm import _C
from rsm.sampling import _sampler_kind


def model(dtype="float64", cond_dim=0, seed=0):
    m = rsm.MLP(2, 16, 2, cond_dim=cond_dim, seed=seed, dtype=dtype)
    p = np.from_dlpack(m.params)
    p[:] = (np.random.default_rng(seed).standard_normal(p.shape) * 0.3).astype(p.dtype)
    return m


def composed(policy, path, ts, budget, roots, det, sto, seed, seeds, pcpo, cond, noise_level=0.7):
    """The branch rollout written as separate rsm.sample calls (what rsm.Trainer did before the
    C engine): root trajectory, then per transition the repeated root states, one stochastic
    step (window (0, 1)) and the deterministic rest."""
    root = rsm.sample(policy, roots, path, det, ts=ts, cond=cond, seed=seed, return_trajectory=True)
    parts = {k: [] for k in ("x_next", "outputs", "noises", "log_probs", "x0")}
    nfe = root.nfe
    for i, k in enumerate(budget):
        if k == 0:
            continue
        c = None if cond is None else np.repeat(cond, k, axis=0)
        tr = rsm.sample(policy, roots * k, path, sto, ts=ts[i:], noise_level=noise_level,
                        sde_window=(0, 1), x_init=np.repeat(root.xs[i], k, axis=0), cond=c,
                        seed=int(seeds[i]), return_trajectory=True, pcpo_weight=pcpo)
        parts["x_next"].append(tr.xs[1])
        parts["outputs"].append(tr.outputs[0])
        parts["noises"].append(tr.noises[0])
        parts["log_probs"].append(tr.log_probs[0])
        parts["x0"].append(tr.x)
        nfe += tr.nfe
    return root.xs, {k: np.concatenate(v) for k, v in parts.items()}, nfe


@pytest.mark.parametrize("case", ["flow", "vp-pcpo", "flow-cond-f32"])
def test_branch_rollout_equals_the_composed_sampler_calls(case):
    dtype = "float32" if case.endswith("f32") else "float64"
    cond_dim = 3 if "cond" in case else 0
    policy = model(dtype, cond_dim)
    if case == "vp-pcpo":
        path, det, sto, pcpo = rsm.VPPath("linear"), "ddim", "ddpm", 4.5
        ts, budget = rsm.time_grid(10, path), [3, 0, 2, 0, 3, 0, 0, 0, 0, 0]
    else:
        path, det, sto, pcpo = rsm.FlowPath(), "ode", "sde", 0.0
        ts, budget = rsm.time_grid(8, path, "sd3"), [2, 4, 0, 3, 0, 0, 0, 0]
    roots = 3
    cond = (np.random.default_rng(1).standard_normal((roots, cond_dim)).astype(dtype)
            if cond_dim else None)
    seeds = np.array([11 + 7 * i for i in range(len(budget))], dtype=np.uint64)
    calls = []
    dk, de = _sampler_kind(det, None)
    sk, se = _sampler_kind(sto, None)
    out = _C.branch_rollout(policy._core, path._core, ts, roots, dk, sk,
                            np.array(budget, dtype=np.int64), seeds, seed=5, root_eta=de,
                            branch_eta=se, noise_level=0.7, pcpo_weight=pcpo, cond=cond,
                            reward=lambda x0: calls.append(np.from_dlpack(x0).copy()) or "scored")
    root_xs, want, nfe = composed(policy, path, ts, budget, roots, det, sto, 5, seeds, pcpo, cond)
    np.testing.assert_array_equal(np.from_dlpack(out["root_xs"]), root_xs)
    for k, v in want.items():
        np.testing.assert_array_equal(np.from_dlpack(out[k]), v.astype(dtype), err_msg=k)
    assert out["nfe"] == nfe
    # the reward: once, on every branch end, and its return value comes back
    assert len(calls) == 1 and out["reward"] == "scored"
    np.testing.assert_array_equal(calls[0], want["x0"])


def test_branch_rollout_checks_its_arguments():
    policy, path = model(), rsm.FlowPath()
    ts = rsm.time_grid(4, path)
    args = dict(model=policy._core, path=path._core, ts=ts, roots=2, root_sampler="euler",
                branch_sampler="sde", budget=np.array([2, 0, 2, 0], dtype=np.int64),
                branch_seeds=np.arange(4, dtype=np.uint64))
    _C.branch_rollout(**args)
    for change, match in (({"budget": np.zeros(4, dtype=np.int64)}, "no branch"),
                          ({"budget": np.array([2, -1, 0, 0], dtype=np.int64)}, r"budget\[1\]"),
                          ({"budget": np.array([2, 2], dtype=np.int64)}, "budget"),
                          ({"branch_seeds": np.arange(3, dtype=np.uint64)}, "branch_seeds"),
                          ({"root_sampler": "sde"}, "deterministic"),
                          ({"roots": 0}, "roots"),
                          ({"reward": 3}, "reward must be callable")):
        with pytest.raises((ValueError, TypeError), match=match):
            _C.branch_rollout(**{**args, **change})


@pytest.mark.parametrize("where", ["sample", "branch"])
def test_reward_exception_comes_out_unchanged_and_the_model_stays_usable(where):
    policy, path = model(), rsm.FlowPath()
    ts = rsm.time_grid(4, path)
    error = KeyError("scorer down")

    def raiser(x0):
        raise error

    with pytest.raises(KeyError) as info:
        if where == "sample":
            rsm.sample(policy, 4, path, "sde", ts=ts, reward=raiser)
        else:
            _C.branch_rollout(policy._core, path._core, ts, 2, "euler", "sde",
                              np.array([2, 0, 2, 0], dtype=np.int64), np.arange(4, dtype=np.uint64),
                              reward=raiser)
    assert info.value is error
    # the model's lock was given back: it samples and runs forward again
    x = rsm.sample(policy, 3, path, "ode", ts=ts)
    assert np.from_dlpack(x).shape == (3, 2)
    with pytest.raises(TypeError, match="reward must be callable"):
        rsm.sample(policy, 4, path, "sde", ts=ts, reward="not callable")


def test_reward_may_use_the_model_it_was_sampled_with():
    """The C rollout lets go of the model's lock before calling the reward: a reward that runs
    the same model (e.g. a Tweedie jump of its own) does not deadlock."""
    policy, path = model(), rsm.FlowPath()
    ts = rsm.time_grid(5, path)

    def uses_model(x0):
        return np.from_dlpack(policy.forward(x0, np.zeros(x0.shape[0]))).sum()

    x, value = rsm.sample(policy, 6, path, "sde", ts=ts, seed=3, reward=uses_model)
    u = np.from_dlpack(policy.forward(np.from_dlpack(x), np.zeros(6)))
    assert value == pytest.approx(u.sum(), rel=1e-12)


def test_the_rollout_releases_the_interpreter_lock_until_the_callback():
    """With a 1 s switch interval a thread gets the interpreter lock only when its holder lets go
    of it: another thread counts while the C rollout samples, so the C loop ran without it, and
    the count is read inside the callback, so the callback ran with it."""
    policy = rsm.MLP(2, 256, 3, seed=0)
    path = rsm.FlowPath()
    ts = rsm.time_grid(40, path)
    count, entered, stop = [0], threading.Event(), threading.Event()

    def counter():
        entered.wait()
        while not stop.is_set():
            count[0] += 1
            time.sleep(0.0005)

    seen = {}

    def reward(x0):
        seen["count"] = count[0]
        return None

    old = sys.getswitchinterval()
    worker = threading.Thread(target=counter)
    worker.start()
    try:
        sys.setswitchinterval(1.0)
        entered.set()
        start = time.perf_counter()
        rsm.sample(policy, 4096, path, "sde", ts=ts, reward=reward)
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        sys.setswitchinterval(old)
        worker.join()
    assert elapsed > 0.05, elapsed   # long enough for the counter to run many times
    assert seen["count"] >= 5, (seen, elapsed)


def test_reward_callbacks_keep_reference_counts_flat():
    policy, path = model(), rsm.FlowPath()
    ts = rsm.time_grid(4, path)
    result = object()

    def reward(x0):
        return result

    for _ in range(3):
        rsm.sample(policy, 4, path, "sde", ts=ts, reward=reward)
    refs = (sys.getrefcount(reward), sys.getrefcount(result))
    for _ in range(50):
        _, got = rsm.sample(policy, 4, path, "sde", ts=ts, reward=reward)
        assert got is result
        del got
        _C.branch_rollout(policy._core, path._core, ts, 2, "euler", "sde",
                          np.array([2, 0, 2, 0], dtype=np.int64), np.arange(4, dtype=np.uint64),
                          reward=reward)
    assert (sys.getrefcount(reward), sys.getrefcount(result)) == refs


@pytest.mark.parametrize("method,calls", [("flow-grpo", 1), ("rsm-zo", 1), ("branch-grpo-rsm", 1),
                                          ("rsm-fo", 1), ("vgg-flow", 2)])
def test_trainer_calls_the_reward_once_per_batch_from_the_rollout(method, calls):
    """Trainer.step: the reward is called by the C rollout, once per rollout micro-batch (VGG-Flow
    adds its one Tweedie-point call), with an rsm.Tensor of every terminal sample."""
    policy = model("float32")
    seen = []
    good = rsm.rewards.quadratic([0.5, 0.0])

    def reward(x0, cond):
        seen.append((type(x0), x0.shape))
        return good(x0, cond)[:2]

    trainer = rsm.Trainer(policy, policy.copy(), rsm.Reward(reward, differentiable=True), method,
                          batch_size=2, group_size=8, accumulate=2, kl_every=0)
    row = trainer.step()
    assert row["reward_calls"] == len(seen) == 2 * calls
    assert all(t is rsm.Tensor for t, _ in seen)
