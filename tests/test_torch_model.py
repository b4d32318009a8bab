"""rsm.TorchModel (python/rsm/torch_model.py): a torch nn.Module fine-tuned by rsm's samplers,
estimators, objective and AdamW through the external-model protocol (csrc/nn/external.h).

The proof: a torch twin of rsm.MLP (the architecture of csrc/nn/mlp_real.c, written in torch) with
the same weights, fine-tuned with every preset family, follows the built-in MLP's run: the same
samples, rewards, history and parameters after several iterations, float64 within 1e-10
relative. Then LoRA (the frozen base bitwise unchanged, the reference = the same module with the
adapter off), torch.compile, float32, and bad modules (each a clear error naming the model, the
trainer state unchanged). Runs in `make test-torch` (.venv-torch); skipped without torch."""
import copy
import os
import sys

import numpy as np
import pytest

import rsm

torch = pytest.importorskip("torch")
nn = torch.nn


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from torch_twin import twin_of as torch_twin_of  # noqa: E402  (rsm.MLP in torch, the weights copied)
from twin_mlp import assert_twin_matches, perturbed_mlp  # noqa: E402


def twin_of(mlp, trainable=True, **kw):
    c = mlp.config
    net = torch_twin_of(mlp)
    return rsm.TorchModel(net, rsm.FlowPath(), "velocity", dim=c["dim"], cond_dim=c["cond_dim"],
                          trainable=trainable, **kw)


@pytest.fixture(scope="module")
def mlp64():
    return perturbed_mlp()


def test_forward_and_vjps_match_the_mlp(mlp64):
    twin = twin_of(mlp64)
    x, t, g = assert_twin_matches(twin, mlp64)
    # the parameters are zero-copy views of rsm's buffer: a write through one shows in the other
    flat = np.from_dlpack(twin.params)
    assert twin.module.input.bias.data_ptr() == twin.named_params()["input.bias"].__array_interface__["data"][0]
    flat[-1] += 1.0
    assert float(twin.module.output.bias.detach()[-1]) == flat[-1]


REWARD = rsm.rewards.quadratic([1.0, -0.5])
FAMILIES = [   # (preset, overrides): every family of the zoo
    ("flow-grpo", {"sampler_steps": 6}),                      # zeroth-order SDE (GRPO)
    ("rsm-zo", {}),                                           # branch rollouts
    ("branch-grpo", {"group_size": 16}),                      # tree rollouts, as released (2 ** 4 leaves)
    ("rsm-fo", {"sampler_steps": 6}),                         # first-order, differentiable reward
    ("adjoint-matching", {"sampler_steps": 8}),               # lean adjoint through the reference's VJP
    ("draft-rsm", {"sampler_steps": 6}),                      # pathwise through the flow sampler (the
                                                              # released draft runs the VP path)
]


def run(policy, ref, method, overrides, iterations=3):
    overrides = {"group_size": 4, **overrides}
    trainer = rsm.Trainer(policy, ref, REWARD, method, batch_size=2, seed=5, kl_every=1,
                          kl_samples=8, **overrides)
    for _ in range(iterations):
        trainer.step()
    return trainer


@pytest.mark.parametrize("method,overrides", FAMILIES, ids=[m for m, _ in FAMILIES])
def test_every_family_follows_the_mlp(mlp64, method, overrides):
    a = run(mlp64.copy(), mlp64, method, overrides)
    b = run(twin_of(mlp64), twin_of(mlp64, trainable=False), method, overrides)
    pa, pb = np.from_dlpack(a.policy.params), np.from_dlpack(b.policy.params)
    assert np.abs(pa - np.from_dlpack(mlp64.params)).max() > 1e-6   # it trained
    np.testing.assert_allclose(pb, pa, rtol=1e-10, atol=1e-12)
    for name, p in b.policy.module.named_parameters():   # the module itself holds them
        np.testing.assert_allclose(p.detach().numpy(), a.policy.named_params()[name], rtol=1e-10, atol=1e-12)
    assert len(a.history) == len(b.history) == 3
    for ra, rb in zip(a.history, b.history):
        for key in ("reward_mean", "reward_std", "loss", "kl", "kl_path", "grad_norm", "nfe"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-10, abs=1e-12), key
    # the same samples and rewards from the next rollout
    ba, bb = a.rollout(), b.rollout()
    np.testing.assert_allclose(bb.x0, ba.x0, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bb.rewards, ba.rewards, rtol=1e-10, atol=1e-12)
    if method != "draft-rsm":
        assert rsm.check_on_policy(b)["max_abs_log_ratio"] == 0.0


def test_finetune_accepts_a_torch_model(mlp64):
    policy, ref = twin_of(mlp64), twin_of(mlp64, trainable=False)
    out = rsm.finetune(policy, ref, REWARD, "flow-grpo", iterations=2, batch_size=2, group_size=4,
                       sampler_steps=4, progress=False, kl_every=0)
    assert len(out.history) == 2 and out.policy is policy
    with pytest.raises(TypeError, match="rsm.TorchModel"):
        rsm.finetune(policy.module, ref, REWARD, "flow-grpo", iterations=1, progress=False)


def test_float32():
    mlp32 = perturbed_mlp("float32")
    twin = twin_of(mlp32)
    assert twin.dtype == "float32"
    a = run(mlp32.copy(), mlp32, "flow-grpo", {"sampler_steps": 6})
    b = run(twin, twin_of(mlp32, trainable=False), "flow-grpo", {"sampler_steps": 6})
    np.testing.assert_allclose(np.from_dlpack(b.policy.params), np.from_dlpack(a.policy.params),
                               rtol=1e-4, atol=1e-5)
    assert rsm.check_on_policy(b)["max_abs_log_ratio"] == 0.0


# ---- LoRA: a hand-made adapter, and PEFT where it is installed ------------------------------------

class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) x A^T B^T, the base frozen, B zero at the start."""

    def __init__(self, base, r=2, alpha=4.0):
        super().__init__()
        self.base, self.scale, self.enabled = base, alpha / r, True
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features, dtype=base.weight.dtype) * 0.1)
        self.B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))

    def forward(self, x):
        y = self.base(x)
        return y + self.scale * (x @ self.A.T) @ self.B.T if self.enabled else y


def add_lora(net):
    for block in net.blocks:
        block.linear1 = LoRALinear(block.linear1)
        block.linear2 = LoRALinear(block.linear2)
    adapters = [m for m in net.modules() if isinstance(m, LoRALinear)]

    class Off:
        def __enter__(self):
            for m in adapters:
                m.enabled = False

        def __exit__(self, *exc):
            for m in adapters:
                m.enabled = True

    return Off


def test_lora_trains_only_the_adapter(mlp64):
    torch.manual_seed(0)
    net = twin_of(mlp64, trainable=False).module.requires_grad_(False)
    off = add_lora(net)
    frozen = {k: v.detach().clone() for k, v in net.named_parameters() if not v.requires_grad}
    policy = rsm.TorchModel(net, rsm.FlowPath(), dim=2, disable_adapters=off)
    ref = policy.reference()   # the same module, adapters off: no second copy of the weights
    assert policy.num_params == sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert set(policy.trained_names) == {k for k in dict(net.named_parameters()) if k.endswith((".A", ".B"))}
    x, t = np.random.default_rng(2).normal(size=(4, 2)), np.full(4, 0.3)
    trainer = run(policy, ref, "flow-grpo", {"sampler_steps": 6, "lr": 1e-2})
    for k, v in net.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k   # bitwise
    assert any(float(m.B.detach().abs().max()) > 0 for m in net.modules() if isinstance(m, LoRALinear))
    # the reference is still the base network (= rsm.MLP at the original weights)
    np.testing.assert_allclose(np.from_dlpack(ref.forward(x, t)), np.from_dlpack(mlp64.forward(x, t)),
                               rtol=1e-12, atol=1e-13)
    assert not np.allclose(np.from_dlpack(policy.forward(x, t)), np.from_dlpack(ref.forward(x, t)))
    assert rsm.check_on_policy(trainer)["max_abs_log_ratio"] == 0.0
    with pytest.raises(ValueError, match="adapters to switch off"):
        twin_of(mlp64).reference()


def test_peft_lora(mlp64):
    peft = pytest.importorskip("peft")
    net = twin_of(mlp64, trainable=False).module
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["linear1", "linear2"], init_lora_weights=True)
    model = peft.get_peft_model(net, config)
    frozen = {k: v.detach().clone() for k, v in model.named_parameters() if not v.requires_grad}
    policy = rsm.TorchModel(model, rsm.FlowPath(), dim=2)
    ref = policy.reference()   # PEFT's disable_adapter
    assert policy.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad) < 1000
    run(policy, ref, "flow-grpo", {"sampler_steps": 6, "lr": 1e-2})
    for k, v in model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    x, t = np.random.default_rng(2).normal(size=(4, 2)), np.full(4, 0.3)
    np.testing.assert_allclose(np.from_dlpack(ref.forward(x, t)), np.from_dlpack(mlp64.forward(x, t)),
                               rtol=1e-12, atol=1e-13)
    assert not np.allclose(np.from_dlpack(policy.forward(x, t)), np.from_dlpack(ref.forward(x, t)))


def test_torch_compile(mlp64):
    compiled = torch.compile(torch_twin_of(mlp64), backend="aot_eager")
    policy = rsm.TorchModel(compiled, rsm.FlowPath(), dim=2)
    a = run(twin_of(mlp64), twin_of(mlp64, trainable=False), "flow-grpo", {"sampler_steps": 4}, 2)
    b = run(policy, twin_of(mlp64, trainable=False), "flow-grpo", {"sampler_steps": 4}, 2)
    np.testing.assert_allclose(np.from_dlpack(b.policy.params), np.from_dlpack(a.policy.params),
                               rtol=1e-10, atol=1e-12)


# ---- bad modules: a clear error naming the model, the trainer state unchanged ---------------------

class Faulty(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.fault = inner, None

    def forward(self, x, t):
        u = self.inner(x, t)
        if self.fault == "shape":
            return u[:, :1]
        if self.fault == "dtype":
            return u.float()
        if self.fault == "device":
            return u.to("meta")
        if self.fault == "raise":
            raise KeyError("scorer down")
        if self.fault == "raise in backward" and torch.is_grad_enabled():
            raise KeyError("scorer down in backward")
        if self.fault == "dropout":
            return nn.functional.dropout(u, 0.5, training=True)
        return u


@pytest.mark.parametrize("fault,match", [
    ("shape", r"TorchModel\(Faulty\): the module returned shape \(\d+, 1\)"),
    ("dtype", r"TorchModel\(Faulty\): the module returned torch.float32"),
    ("device", r"TorchModel\(Faulty\): the module returned a tensor on meta"),
    ("raise", r"TorchModel\(Faulty\): forward raised KeyError"),
    ("raise in backward", r"TorchModel\(Faulty\): backward raised KeyError"),
    ("dropout", r"TorchModel\(Faulty\): the forward is not deterministic"),
])
def test_bad_module_is_a_clear_error_and_changes_nothing(mlp64, fault, match):
    net = Faulty(twin_of(mlp64, trainable=False).module.requires_grad_(True))
    policy = rsm.TorchModel(net, rsm.FlowPath(), dim=2)
    trainer = rsm.Trainer(policy, mlp64, REWARD, "flow-grpo", batch_size=2, group_size=2, seed=0,
                          sampler_steps=4, kl_every=0)
    trainer.step()
    params = np.array(np.from_dlpack(policy.params))
    opt = trainer.optimizer.state_dict()
    net.fault = fault
    with pytest.raises(rsm.TorchModelError, match=match):
        trainer.step()
    np.testing.assert_array_equal(np.from_dlpack(policy.params), params)
    assert trainer.optimizer.state_dict()["step"] == opt["step"] and trainer.iteration == 1
    if fault == "dropout":   # and the on-policy check names it too
        with pytest.raises(AssertionError, match=r"TorchModel\(Faulty\).*not a deterministic"):
            rsm.check_on_policy(trainer)
    net.fault = None
    trainer.step()
    assert trainer.iteration == 2


def test_construction_errors(mlp64):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        rsm.TorchModel(lambda x: x, dim=2)
    net = twin_of(mlp64, trainable=False).module
    with pytest.raises(ValueError, match=r"is on meta.*two-backend engine"):
        rsm.TorchModel(copy.deepcopy(net).to("meta"), dim=2)
    with pytest.raises(TypeError, match="float16"):
        rsm.TorchModel(copy.deepcopy(net).half(), dim=2)
    with pytest.raises(ValueError, match="native"):
        rsm.TorchModel(net, rsm.FlowPath(), "eps", dim=2)
    # one module, two wrappers that would break each other
    policy = rsm.TorchModel(net, rsm.FlowPath(), dim=2)
    with pytest.raises(ValueError, match="already trained through TorchModel"):
        rsm.TorchModel(net, rsm.FlowPath(), dim=2)
    with pytest.raises(ValueError, match="would move with every update"):
        rsm.TorchModel(net, rsm.FlowPath(), dim=2, trainable=False)
    del policy


# ---- the user's torch optimizer (optimizer=) -----------------------------------------------------

def test_user_torch_optimizer_follows_rsm_adamw(mlp64):
    """torch.optim.AdamW with the preset's hyper-parameters over rsm's gradient follows rsm's own
    AdamW (the same update rule; the clip's 1e-6 guard in torch is the only difference)."""
    a = run(mlp64.copy(), mlp64, "flow-grpo", {"sampler_steps": 6, "inner_epochs": 2})
    cfg = a.cfg
    net = torch_twin_of(mlp64)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], eps=1e-8)
    policy = rsm.TorchModel(net, rsm.FlowPath(), dim=2, optimizer=opt)
    b = run(policy, twin_of(mlp64, trainable=False), "flow-grpo", {"sampler_steps": 6, "inner_epochs": 2})
    np.testing.assert_allclose(np.from_dlpack(b.policy.params), np.from_dlpack(a.policy.params),
                               rtol=1e-6, atol=1e-9)
    for ra, rb in zip(a.history, b.history):
        for key in ("reward_mean", "loss", "kl", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), key
    assert b.optimizer.step_count == 0   # rsm's AdamW never ran


def test_user_torch_optimizer_failure_changes_nothing(mlp64):
    net = Faulty(torch_twin_of(mlp64))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    policy = rsm.TorchModel(net, rsm.FlowPath(), dim=2, optimizer=opt)
    trainer = rsm.Trainer(policy, mlp64, REWARD, "flow-grpo", batch_size=2, group_size=2, seed=0,
                          sampler_steps=4, kl_every=0, inner_epochs=2)
    trainer.step()
    params, state = np.array(np.from_dlpack(policy.params)), copy.deepcopy(opt.state_dict())
    calls = {"n": 0}
    inner = net.inner.forward

    def second_epoch_fails(x, t):   # the first epoch's step has been applied when this raises
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 3:
                raise KeyError("scorer down in epoch 2")
        return inner(x, t)

    net.inner.forward = second_epoch_fails
    with pytest.raises(rsm.TorchModelError, match="epoch 2"):
        trainer.step()
    np.testing.assert_array_equal(np.from_dlpack(policy.params), params)
    assert opt.state_dict()["state"][0]["step"] == state["state"][0]["step"]
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        rsm.TorchModel(torch_twin_of(mlp64), dim=2, optimizer="adam")


def test_example_torch_backbone_runs_end_to_end():
    """examples/torch_backbone.py (issue 19's example) runs from the checkout, tiny settings: a
    torch DiT pretrained a few steps, then one Flow-GRPO and one rsm-zo iteration through
    rsm.TorchModel, each after an on-policy check whose ratios are exactly 1."""
    import subprocess
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "examples", "torch_backbone.py")
    out = subprocess.run([sys.executable, script, "--pretrain-steps", "5", "--iterations", "1",
                          "--width", "16"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for method in ("flow-grpo", "rsm-zo"):
        assert f"{method} iteration 0: reward" in out.stdout, out.stdout
    checks = [line for line in out.stdout.splitlines() if "on-policy check" in line]
    assert len(checks) == 2 and all("'max_abs_log_ratio': 0.0}" in c for c in checks), out.stdout
