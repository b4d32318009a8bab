"""The fine-tuning update in C (csrc/train/update.h, rsm._C.train_update): the objective of every
training row, the backward and the inner-epoch optimizer steps in one call. Checked against the
same computation composed from the public pieces (model forward, rsm.objective, model VJP,
AdamW), its all-or-nothing failure, its argument errors, and the guided model's C backward."""
import numpy as np
import pytest

import rsm
from rsm import _C
from rsm.objective import objective, row_coefficients

F64 = np.float64


def _mlp(seed=1, dtype="float64", cond_dim=0, scale=0.3):
    m = rsm.MLP(2, 16, 2, cond_dim=cond_dim, seed=seed, dtype=dtype)
    p = np.from_dlpack(m.params)
    p[...] = np.random.default_rng(seed).standard_normal(p.shape) * scale
    return m


def _block(form, n=6, seed=0, t=0.6, dim=2, dtype=F64, cond=None, **coef_fields):
    """The keyword arguments of one _C.UpdateBlock (_blocks builds them)."""
    rng = np.random.default_rng(seed)
    coef = row_coefficients(n, **({"adv": rng.standard_normal(n), "w": 1.3, "clip_eps": 0.2,
                                   "kl": 0.1, "weight": rng.uniform(0.5, 1.5, n)}
                                  if form != "score_matching" else
                                  {"conv": -0.7, "c1": 0.8, "gamma": 1.1, "c2": 0.3, "kl": 0.0,
                                   "weight": rng.uniform(0.5, 1.5, n)}) | coef_fields)
    return {"form": form, "t": t, "x": rng.standard_normal((n, dim)).astype(dtype),
            "cond": cond, "coef": coef,
            "u_old": rng.standard_normal((n, dim)).astype(dtype) * 0.1,
            "psi": rng.standard_normal((n, dim)).astype(dtype) if form == "score_matching" else None,
            "noise": rng.standard_normal((n, dim)).astype(dtype) if form != "score_matching" else None,
            "u_ref": np.empty((n, dim), dtype), "ref_ready": False, "anchor_current": False,
            "kl_report": 0.25}


def _blocks(fields):
    return [_C.UpdateBlock(**f) for f in fields]


def _composed(policy, ref, blocks, normalizer, mean_over_dims=False):
    """The same gradient from the public pieces, one block at a time."""
    grads = np.zeros(policy.num_params)
    loss = []
    for b in blocks:
        n = b["x"].shape[0]
        u = np.from_dlpack(policy.forward(b["x"], np.full(n, b["t"]), b["cond"]))
        u_ref = np.from_dlpack(ref.forward(b["x"], np.full(n, b["t"]), b["cond"]))
        out = objective(b["form"], u, b["coef"], u_old=b["u_old"],
                            u_ref=u if b["anchor_current"] else u_ref, psi=b["psi"],
                            noise=b["noise"], normalizer=normalizer, mean_over_dims=mean_over_dims)
        _, dp = policy.vjp(b["x"], np.full(n, b["t"]), out["cotangent"], b["cond"])
        grads += np.from_dlpack(dp)
        loss.append(out["loss"])
    return grads, np.array(loss)


@pytest.mark.parametrize("mean_over_dims", [False, True])
def test_gradient_equals_the_composed_pieces(mean_over_dims):
    policy, ref = _mlp(1), _mlp(2)
    blocks = [_block("ppo", seed=1, t=0.8), _block("log_ratio", seed=2, t=0.5),
              _block("matching", seed=3, t=0.4), _block("score_matching", seed=4, t=0.3),
              dict(_block("score_matching", seed=5, t=0.2), anchor_current=True)]
    want, want_loss = _composed(policy, ref, blocks, 7.0, mean_over_dims)
    built = _blocks(blocks)
    assert not any(b.ref_ready for b in built)
    out = _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, built, 7.0,
                          mean_over_dims=mean_over_dims)
    got = np.from_dlpack(out["grads"])
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
    assert np.allclose(np.from_dlpack(out["loss"]), want_loss, rtol=1e-12, atol=0)
    assert out["nfe"] == 3 * sum(b["x"].shape[0] for b in blocks)   # ref + forward + backward
    # the reference outputs stay in the caller's buffers and the blocks say so; a second call
    # does not recompute them
    for b, blk in zip(blocks, built):
        u_ref = np.from_dlpack(ref.forward(b["x"], np.full(len(b["x"]), b["t"])))
        assert np.array_equal(b["u_ref"], u_ref)
        assert blk.ref_ready == 1
    again = _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, built, 7.0,
                            mean_over_dims=mean_over_dims)
    assert np.array_equal(np.from_dlpack(again["grads"]), got)
    assert again["nfe"] == 2 * sum(b["x"].shape[0] for b in blocks)


def test_reported_kl_is_the_closed_form_per_sample_kl():
    policy, ref = _mlp(1), _mlp(2)
    b = _block("ppo", seed=3)
    out = _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, _blocks([b]), 1.0)
    n = len(b["x"])
    u = np.from_dlpack(policy.forward(b["x"], np.full(n, b["t"])))
    want = b["kl_report"] * ((u - b["u_ref"]) ** 2).sum(1).mean()
    assert abs(np.from_dlpack(out["kl"])[0] - want) <= 1e-14 * want


def test_ref_may_be_the_policy_itself():
    """ref and policy the same model core: its lock is taken once (no deadlock) and the gradient
    equals the one with an independent copy as the reference."""
    policy = _mlp(1)
    blocks = [_block("score_matching", seed=s, t=0.2 + 0.2 * s) for s in range(3)]
    same = _C.train_update(policy._core, policy._core, rsm.FlowPath()._core,
                           _blocks([dict(b, u_ref=np.empty_like(b["u_ref"])) for b in blocks]), 3.0)
    copy = _C.train_update(policy._core, policy.copy()._core, rsm.FlowPath()._core, _blocks(blocks),
                           3.0)
    assert np.array_equal(np.from_dlpack(same["grads"]), np.from_dlpack(copy["grads"]))


def test_epochs_equal_repeated_gradient_and_adamw_steps():
    policy, twin, ref = _mlp(1), _mlp(1), _mlp(2)
    blocks = [_block("ppo", seed=1), _block("score_matching", seed=2)]
    opt = rsm.AdamW(policy, lr=1e-2, weight_decay=0.01, max_grad_norm=0.5, ema_decay=0.9)
    opt_twin = rsm.AdamW(twin, lr=1e-2, weight_decay=0.01, max_grad_norm=0.5, ema_decay=0.9)
    out = _C.train_update(policy._core, ref._core, rsm.FlowPath()._core,
                          _blocks([dict(b, u_ref=np.empty_like(b["u_ref"])) for b in blocks]), 2.0,
                          opt=opt._core, epochs=3, lr=1e-2)
    norms = []
    for _ in range(3):
        g, _ = _composed(twin, ref, blocks, 2.0)
        norms.append(opt_twin.step(g.copy()))
    assert np.allclose(np.from_dlpack(policy.params), np.from_dlpack(twin.params), rtol=1e-12, atol=1e-14)
    assert np.allclose(np.from_dlpack(out["grad_norms"]), norms, rtol=1e-12)
    assert np.allclose(np.from_dlpack(opt.ema), np.from_dlpack(opt_twin.ema), rtol=1e-12, atol=1e-14)
    assert opt.step_count == opt_twin.step_count == 3
    assert np.from_dlpack(out["loss"]).shape == (3, 2)


def test_a_failing_later_epoch_changes_nothing():
    """Epoch 1 succeeds with a huge learning rate; epoch 2's forward then overflows (float32) and
    its gradient is not finite: the call fails and params, moments and step count are restored."""
    policy, ref = _mlp(1, dtype="float32"), _mlp(2, dtype="float32")
    opt = rsm.AdamW(policy, lr=1e-3, ema_decay=0.5)
    g0, _ = _composed(policy, ref, [_block("score_matching", dtype=np.float32)], 1.0)
    opt.step(g0.astype(np.float32))   # non-zero moments and a step count to preserve
    before = {"params": np.array(np.from_dlpack(policy.params)), **opt.state_dict()}
    b = _block("score_matching", dtype=np.float32)
    # the first epoch alone succeeds (on a twin with the same state): the failure is epoch 2's
    twin = policy.copy()
    twin_opt = rsm.AdamW(twin, lr=1e-3, ema_decay=0.5)
    twin_opt.load_state_dict(opt.state_dict())
    _C.train_update(twin._core, ref._core, rsm.FlowPath()._core,
                    _blocks([dict(b, u_ref=np.empty_like(b["u_ref"]))]), 1.0, opt=twin_opt._core,
                    epochs=1, lr=1e30)
    assert np.all(np.isfinite(np.from_dlpack(twin.params)))
    assert np.abs(np.from_dlpack(twin.params)).max() > 1e20
    with pytest.raises(FloatingPointError):
        _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, _blocks([b]), 1.0,
                        opt=opt._core, epochs=2, lr=1e30)
    assert np.array_equal(np.from_dlpack(policy.params), before["params"])
    after = opt.state_dict()
    for k in ("m", "v", "ema"):
        assert np.array_equal(after[k], before[k])
    assert after["step"] == before["step"] == 1


def test_guided_policy_gradient_through_the_c_backward():
    """rsm.Guided's vtable backward (split cotangent over the stacked rows, inner backward) gives
    the Python wrapper's VJP."""
    inner = _mlp(3, cond_dim=2)
    guided, ref = rsm.Guided(inner, 2.5), rsm.Guided(_mlp(4, cond_dim=2), 2.5)
    cond = np.random.default_rng(9).standard_normal((6, 2))
    blocks = [_block("score_matching", seed=1, cond=cond), _block("log_ratio", seed=2, cond=cond)]
    want, _ = _composed(guided, ref, blocks, 4.0)
    out = _C.train_update(guided._core, ref._core, rsm.FlowPath()._core, _blocks(blocks), 4.0)
    got = np.from_dlpack(out["grads"])
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()


@pytest.mark.parametrize("change, exc, match", [
    (dict(form="ratio"), ValueError, r"UpdateBlock\(\): form must be"),
    (dict(form=3), TypeError, r"UpdateBlock\(\): form must be a string"),
    (dict(x=np.zeros(6)), ValueError, r"UpdateBlock\(\): x must have shape \[n, d\]"),
    (dict(x=np.zeros((6, 2), np.int64)), TypeError, r"x"),
    (dict(coef=np.zeros((5, 14))), ValueError, r"UpdateBlock\(\): coef must have shape \[6, 14\]"),
    (dict(u_old=np.zeros((6, 2), np.float32)), TypeError, r"UpdateBlock\(\): u_old"),
    (dict(noise=np.zeros((6, 3))), ValueError, r"UpdateBlock\(\): noise must have shape \[6, 2\]"),
    (dict(cond=np.zeros((5, 1))), ValueError, r"UpdateBlock\(\): cond must have shape \[6, d\]"),
    (dict(u_ref=np.zeros((6, 3))), ValueError, r"UpdateBlock\(\): u_ref must have shape \[6, 2\]"),
    (dict(u_ref=np.zeros((6, 2))[::-1]), ValueError, r"u_ref"),
    (dict(t="late"), TypeError, r"UpdateBlock\(\): t must be a number"),
    (dict(t=None), TypeError, r"UpdateBlock\(\): t must be a number"),
    (dict(u_ref=None), TypeError, r"UpdateBlock\(\): u_ref is required"),
    (dict(kl_report="x"), TypeError, r"kl_report"),
])
def test_bad_blocks_raise_naming_the_argument_when_built(change, exc, match):
    with pytest.raises(exc, match=match):
        _C.UpdateBlock(**dict(_block("ppo"), **change))


def test_update_block_needs_its_keywords():
    fields = _block("ppo")
    for name in ("form", "t", "x", "coef", "u_ref"):
        with pytest.raises(TypeError, match=f"UpdateBlock\\(\\): {name} is required"):
            _C.UpdateBlock(**{k: v for k, v in fields.items() if k != name})
    with pytest.raises(TypeError):
        _C.UpdateBlock(fields["form"])   # keyword arguments only
    blk = _C.UpdateBlock(**fields)
    assert (blk.rows, blk.t, blk.kl_report, blk.ref_ready, blk.anchor_current) == (6, 0.6, 0.25, 0, 0)
    assert np.array_equal(np.from_dlpack(blk.x), fields["x"]) and blk.psi is None


@pytest.mark.parametrize("block, exc, match", [
    (lambda: {}, TypeError, r"train_update\(\): blocks\[0\] must be an rsm._C.UpdateBlock, got dict"),
    (lambda: _C.UpdateBlock(**_block("ppo", dim=3)), ValueError,
     r"train_update\(\): blocks\[0\].x must have shape \[n, 2\], got \[n, 3\]"),
    (lambda: _C.UpdateBlock(**_block("ppo", dtype=np.float32)), TypeError,
     r"train_update\(\): blocks\[0\].x must be float64"),
    (lambda: _C.UpdateBlock(**_block("ppo", t=float("nan"))), ValueError, r"t=nan"),
])
def test_blocks_that_do_not_fit_the_policy_raise_naming_the_argument(block, exc, match):
    policy, ref = _mlp(1), _mlp(2)
    p0 = np.array(np.from_dlpack(policy.params))
    opt = rsm.AdamW(policy, lr=1e-2)
    with pytest.raises(exc, match=match):
        _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, [block()], 1.0,
                        opt=opt._core, epochs=1)
    assert np.array_equal(np.from_dlpack(policy.params), p0) and opt.step_count == 0


def test_block_cond_must_fit_a_conditional_policy():
    policy, ref = _mlp(1, cond_dim=2), _mlp(2, cond_dim=2)
    b = _C.UpdateBlock(**_block("ppo", cond=np.zeros((6, 3))))
    with pytest.raises(ValueError, match=r"blocks\[0\].cond must have shape \[n, 2\], got \[n, 3\]"):
        _C.train_update(policy._core, ref._core, rsm.FlowPath()._core, [b], 1.0)


def test_bad_call_arguments():
    policy, ref = _mlp(1), _mlp(2)
    path = rsm.FlowPath()._core
    opt = rsm.AdamW(policy, lr=1e-2)
    with pytest.raises(ValueError, match="opt is only used with epochs >= 1"):
        _C.train_update(policy._core, ref._core, path, [], 1.0, opt=opt._core)
    with pytest.raises(TypeError, match="opt must be an rsm AdamW"):
        _C.train_update(policy._core, ref._core, path, [], 1.0, opt=None, epochs=1)
    with pytest.raises(ValueError, match="normalizer"):
        _C.train_update(policy._core, ref._core, path, _blocks([_block("ppo")]), 0.0)
    with pytest.raises(ValueError, match="must match the policy"):
        _C.train_update(policy._core, _mlp(2, dtype="float32")._core, path, _blocks([_block("ppo")]),
                        1.0)
    bigger = rsm.AdamW(rsm.MLP(2, 8, 1, seed=0, dtype="float64"), lr=1e-2)
    with pytest.raises(ValueError, match="does not belong to the policy"):
        _C.train_update(policy._core, ref._core, path, _blocks([_block("ppo")]), 1.0, opt=bigger._core,
                        epochs=1)
    with pytest.raises(TypeError, match="policy must be a trainable model"):
        gmm = rsm.GaussianMixtureModel(np.zeros((1, 2)), np.ones(1), np.ones(1), rsm.FlowPath(), dtype="float64")
        _C.train_update(gmm._core, ref._core, path, [], 1.0)


def test_trainer_step_with_a_failing_inner_epoch_changes_nothing():
    policy, ref = _mlp(1, dtype="float32"), _mlp(1, dtype="float32")
    trainer = rsm.Trainer(policy, ref, lambda x, c: -np.from_dlpack(x)[:, 0] ** 2, "flow-grpo",
                          batch_size=2, group_size=4, seed=3, inner_epochs=2, lr=1e30)
    p0 = np.array(np.from_dlpack(policy.params))
    with pytest.raises(FloatingPointError):
        trainer.step()
    assert np.array_equal(np.from_dlpack(policy.params), p0)
    assert trainer.optimizer.step_count == 0 and trainer.iteration == 0 and len(trainer.history) == 0
