"""images-finetune quick mode (issue 4 Figs. 3-6 on images, issue 5 end to end): a tiny DiT on
digits and on procedural shapes, LoRA adapters under classifier-free guidance, fine-tuned with
Flow-GRPO / TempFlow-GRPO / rsm-zo (black-box and discrete rewards) and VGG-Flow / rsm-fo
(differentiable reward). Asserts what the quick run supports: files, finite numbers, frozen base
weights, rewards called with class-id conditions of the rollout's batch size, the pretrained
references cached and reused. (The reward rise is measured by the full mode, docs/results/images.md;
the quick mode's 30-step references are too weak to assert it with a margin.)"""
import json
import math

import numpy as np
import pytest

from rsm import experiments


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("images-finetune")
    return out, experiments.run("images-finetune", out=str(out), quick=True, seed=0)


def test_files_written(quick):
    out, summary = quick
    for name in ("table.md", "curves.csv", "summary.json", "images_finetune.png",
                 "digits_dit_quick_seed0.safetensors", "shapes_dit_quick_seed0.safetensors"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))


def test_numbers_finite_and_budgets_met(quick):
    _, summary = quick
    assert {(r["task"], r["method"]) for r in summary["rows"]} == {
        (t, m) for t, ms in (("digit-prob", ("flow-grpo", "tempflow-grpo", "rsm-zo")),
                             ("jpeg", ("flow-grpo", "tempflow-grpo", "rsm-zo")),
                             ("geneval", ("flow-grpo", "tempflow-grpo", "rsm-zo")),
                             ("digit-logp", ("vgg-flow", "rsm-fo"))) for m in ms}
    for r in summary["rows"]:
        for key in ("reward_start", "reward_final", "nfe", "seconds", "kl", "drift"):
            assert math.isfinite(r[key]), (r["task"], r["method"], key)
        # every method spent at least the task's NFE budget (equal-compute comparison)
        assert r["nfe"] >= summary["budgets"][r["task"]] > 0
    assert 0.0 <= min(r["reward_start"] for r in summary["rows"] if r["task"] == "geneval") <= 1.0
    assert all(r["reward_start"] < 0 for r in summary["rows"] if r["task"] in ("jpeg", "digit-logp"))


def test_lora_leaves_base_weights_bitwise_unchanged(quick):
    _, summary = quick
    assert summary["base_unchanged"] == {"digits": True, "shapes": True}


def test_every_reward_kind_got_class_id_conditions(quick):
    _, summary = quick
    for task, layouts in summary["cond_layouts"].items():
        assert summary["reward_calls"][task] > 0, task
        assert layouts, task
        for text in layouts:  # "(dtype kind, cond shape, n)": integer class ids, one per sample
            kind, shape, n = eval(text)  # noqa: S307 - written by the experiment itself
            assert kind in "iu" and shape == (n,), (task, text)


def test_cached_references_are_reused(quick, tmp_path):
    out, _ = quick
    import rsm
    from rsm.experiments import images_finetune as exp

    sz = exp._sizes(True)
    model, info = exp._pretrained(out, "digits", sz, 0)
    assert info["cached"]
    first = rsm.load(str(out / "digits_dit_quick_seed0.safetensors"))
    assert np.array_equal(np.from_dlpack(model.params), np.from_dlpack(first.params))
    _, fresh = exp._pretrained(tmp_path, "digits", sz, 0)
    assert not fresh["cached"] and (tmp_path / fresh["file"]).exists()
