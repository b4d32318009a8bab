"""Presets as typed, frozen, validated records (rsm.methods.Preset; issues 12, 16, 18): every
option checked once at construction with one vocabulary (TypeError: the wrong kind of value;
ValueError: out of range, not one of the names, contradicting another option), the message naming
the option (and the accepted values); unknown names get a "did you mean"; the dict read access of
the old presets keeps working."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import rsm
from rsm.methods import Preset, coefficients, estimates, options
from rsm.methods.rollouts import ROLLOUTS

NAN = float("nan")


@pytest.mark.parametrize("method,option,value,exc,accepted", [
    ("flow-grpo", "kl", "0.1", TypeError, "finite number"),          # a string where a number is meant
    ("flow-grpo", "kl", -0.1, ValueError, ">= 0"),
    ("flow-grpo", "kl", NAN, ValueError, "finite"),
    ("flow-grpo", "adv_eps", NAN, ValueError, "finite"),
    ("flow-grpo", "adv_eps", -1e-4, ValueError, ">= 0"),
    ("flow-grpo", "adv_clip", NAN, ValueError, "finite"),
    ("flow-grpo", "clip_eps", -1.0, ValueError, "> 0"),
    ("flow-grpo", "clip_eps", NAN, ValueError, "finite"),
    ("flow-grpo", "max_grad_norm", -1.0, ValueError, ">= 0"),
    ("sqdf", "discount", -0.5, ValueError, "[0, 1]"),
    ("rsm-fo-diffusion", "reg", -1.0, ValueError, ">= 0"),
    ("reinforce-kl", "alpha", NAN, ValueError, "finite"),
    ("reinforce-kl", "alpha", 0.0, ValueError, "> 0"),
    ("flow-grpo", "lr", "1e-3", TypeError, "finite number"),
    ("flow-grpo", "ema_decay", 1.0, ValueError, "[0, 1)"),
    ("flow-grpo", "estimator", "zo-grp", ValueError, "zo-group"),
    ("rsm-fo", "eta", "cubic", ValueError, "'linear', 'quad'"),
    ("flow-grpo", "rollout", "spiral", ValueError, "'sde', 'branch'"),
    ("flow-grpo", "family", "second-order", ValueError, "'zeroth-order'"),
    ("flow-grpo", "path", "ve", ValueError, "'flow', 'vp', 'any'"),
    ("flow-grpo", "reweight", "fairclip3", ValueError, "fairclip2"),
    ("flow-grpo", "grid", "cosine", ValueError, "'uniform'"),
    ("flow-grpo", "steps", 2.0, TypeError, "positive int"),
    ("flow-grpo", "steps", 0, ValueError, "positive int"),
    ("flow-grpo", "mean_over_dims", 1, TypeError, "True or False"),
    ("flow-grpo", "train_steps", 1.5, ValueError, "fraction in (0, 1]"),
    ("flow-grpo", "train_steps", "most", ValueError, "'all'"),
    ("rsm-zo", "budget", [6, -1], ValueError, "ints >= 0"),
    ("rsm-zo", "budget", 6, TypeError, "list of ints"),
    ("rsm-zo", "kl_anchor_max_ratio", True, TypeError, "finite number"),
    ("branch-grpo", "width_pruning", 3, ValueError, "[0, 1, 2]"),
    ("branch-grpo", "fusion", "max", ValueError, "'mean', 'path_prob'"),
])
def test_a_bad_option_is_refused_at_construction_naming_it(method, option, value, exc, accepted):
    with pytest.raises(exc) as info:
        rsm.methods.get(method, **{option: value})
    msg = str(info.value)
    assert f"{option}=" in msg and repr(method) in msg and accepted in msg, msg


def test_the_trainer_refuses_bad_options_before_any_work():
    model = rsm.MLP(2, 8, 1, seed=0)
    before = np.from_dlpack(model.params).copy()
    with pytest.raises(TypeError, match="kl="):
        rsm.Trainer(model, model.copy(), rsm.rewards.quadratic([0, 0]), "flow-grpo", kl="0.1")
    with pytest.raises(ValueError, match="adv_eps="):
        rsm.finetune(model, model.copy(), rsm.rewards.quadratic([0, 0]), "flow-grpo", iterations=1,
                     adv_eps=NAN, progress=False)
    assert np.array_equal(np.from_dlpack(model.params), before)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                                      (True, TypeError), ("0", TypeError)])
def test_the_trainer_seed_is_an_int_in_the_64_bit_range(seed, exc):
    model = rsm.MLP(2, 8, 1, seed=0)
    with pytest.raises(exc, match="seed="):
        rsm.Trainer(model, model.copy(), rsm.rewards.quadratic([0, 0]), "flow-grpo", seed=seed)


@pytest.mark.parametrize("model_arg", ["policy", "ref"])
def test_a_missing_model_is_refused_naming_it(model_arg):
    model = rsm.MLP(2, 8, 1, seed=0)
    args = {"policy": model, "ref": model.copy(), model_arg: None}
    with pytest.raises(TypeError, match=f"{model_arg} must be an rsm model"):
        rsm.Trainer(args["policy"], args["ref"], rsm.rewards.quadratic([0, 0]), "flow-grpo")


def test_unknown_names_get_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown method 'flow-grpp' \(did you mean 'flow-grpo'\?\)"):
        rsm.methods.get("flow-grpp")
    with pytest.raises(ValueError, match=r"no hyper-parameter\(s\) \['clip_epss'\] \(did you mean 'clip_eps'\?\)"):
        rsm.methods.get("flow-grpo", clip_epss=0.1)
    with pytest.raises(ValueError, match=r"'fo-tweedy' must be one of .* \(did you mean 'fo-tweedie'\?\)"):
        rsm.methods.get("vgg-flow", estimator="fo-tweedy")
    with pytest.raises(ValueError, match="unknown method"):
        rsm.methods.get(None)


@pytest.mark.parametrize("method,options,names", [
    ("flow-grpo", dict(estimator="fo-terminal"), ("estimator", "family")),
    ("flow-grpo", dict(rollout="ode"), ("estimator", "rollout")),
    ("rsm-fo", dict(form="ppo"), ("form", "estimator")),
    ("draft", dict(form="score_matching"), ("form", "estimator")),
    ("flow-grpo", dict(kl_anchor=0.1), ("kl_anchor", "rollout")),
    ("flow-grpo", dict(advantage="center"), ("advantage", "alpha")),
    ("flow-grpo", dict(reweight="constant"), ("reweight", "loss_weight")),
    ("rsm-fo", dict(estimator="fo-adjoint"), ("estimator", "rollout")),
])
def test_contradictory_options_are_refused_naming_both(method, options, names):
    with pytest.raises(ValueError) as info:
        rsm.methods.get(method, **options)
    assert all(n in str(info.value) for n in names), str(info.value)


def test_every_preset_is_valid_typed_frozen_and_has_a_source():
    for name in rsm.methods.names():
        p = rsm.methods.get(name)
        assert isinstance(p, Preset) and p.name == name and p["name"] == name
        assert p.source and p.description
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.kl = 1.0   # type: ignore[misc]
        assert set(p.options()) <= set(options.OPTIONS)


def test_the_dict_read_access_of_the_old_presets_is_kept():
    p = rsm.methods.get("rsm-zo", kl=0.1, budget="base")
    assert p["kl"] == 0.1 and p.get("kl") == 0.1 and p.kl == 0.1
    assert p["budget"] == [6] * 9 and p.budget == (6,) * 9     # lists via [], tuples as attributes
    assert "discount" not in p and p.get("discount", 7) == 7
    with pytest.raises(KeyError):
        p["discount"]
    d = dict(p)
    assert d["family"] == "zeroth-order" and d["budget"] == [6] * 9 and "discount" not in d
    assert rsm.methods.get("rsm-zo") == rsm.methods.get("rsm-zo")
    assert p.replace(kl=0.2)["kl"] == 0.2 and p["kl"] == 0.1     # copies, never in place


def test_the_name_tables_agree_with_the_rules():
    """The option vocabulary of presets.py names exactly what the engine dispatches on."""
    assert set(options.ESTIMATORS) == set(coefficients.RULES) | {"pathwise"}
    assert set(options.ESTIMATORS) == set(estimates.ESTIMATES)
    assert set(options.REWEIGHT_NAMES) == set(coefficients.REWEIGHTS)
    assert set(options.ETA_NAMES) == set(coefficients.ETAS)
    assert set(options.ROLLOUT_KINDS) == set(ROLLOUTS)


def test_a_rollout_batch_is_typed_and_keeps_the_dict_access():
    model = rsm.MLP(2, 8, 1, seed=0)
    trainer = rsm.Trainer(model, model.copy(), rsm.rewards.quadratic([0, 0]), "flow-grpo",
                          batch_size=2, group_size=2, kl_every=0)
    batch = trainer.rollout()
    assert isinstance(batch, rsm.methods.Batch)
    assert batch["x0"] is batch.x0 and batch.get("row_valid", "absent") == "absent"
    assert "adv" in batch and "tree" not in batch and "scored" not in batch   # popped by rollout()
    assert batch["keys"] is batch.groups and "keys" in dict(batch)         # the old key's name
    batch["note"] = 1                      # what a Trainer subclass records goes to `extra`
    assert batch.extra == {"note": 1} and batch.pop("note") == 1 and "note" not in batch
    copy = batch.copy()
    copy.rows.append({})
    assert len(copy.rows) == len(batch.rows) + 1 and copy.x0 is batch.x0
    assert {"x0", "rows", "rewards", "valid", "adv", "mask"} <= set(dict(batch))
    with pytest.raises(KeyError):
        batch["no_such_field"]
