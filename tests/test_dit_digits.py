"""The image backbone end to end on digits (issue 5): a class-conditional DiT pretrained with
condition dropout generates digits that the scikit-learn classifier recognises under
classifier-free guidance, and LoRA fine-tuning with guided rollouts raises the classifier's
probability of the target digit while the base weights stay bitwise unchanged.

Measured on this machine (1 thread): pretraining 1200 steps ~25 s; accuracy 0.61 at w = 1 and
0.825 at w = 2; rsm-zo, 20 iterations: mean p(target) 0.525 -> 0.58-0.60 over seeds 0-3."""
import numpy as np
import pytest

import rsm

pytest.importorskip("sklearn")
from rsm import image_datasets, image_rewards  # noqa: E402
from rsm.image_demo import pretrain_conditional  # noqa: E402


@pytest.fixture(scope="module")
def digits_dit():
    data = image_datasets.digits("train", seed=0)
    model = rsm.DiT(8, 1, 2, 32, 2, 4, 10, seed=0)
    pretrain_conditional(model, data.flat(), np.asarray(data.labels, np.int64), rsm.FlowPath(),
                         steps=1200, batch_size=128, lr=2e-3, seed=0, cond_dropout=0.1)
    return model, image_rewards.digit_classifier(0)


def _guided_samples(model, scale, ids, seed=5):
    return rsm.sample(rsm.Guided(model, scale), len(ids), rsm.FlowPath(), "ode", steps=10, cond=ids, seed=seed)


@pytest.mark.slow
def test_pretrained_dit_generates_recognisable_digits(digits_dit):
    model, classifier = digits_dit
    ids = np.repeat(np.arange(10), 20)
    accuracy = {}
    for scale in (1.0, 2.0):
        x = np.from_dlpack(_guided_samples(model, scale, ids)).reshape(len(ids), -1)
        accuracy[scale] = float((classifier.predict(x) == ids).mean())
    assert accuracy[2.0] > 0.7                       # measured 0.825
    assert accuracy[2.0] > accuracy[1.0]             # guidance sharpens the classes (0.61 -> 0.825)


@pytest.mark.slow
def test_lora_finetuning_raises_the_target_digit_probability(digits_dit):
    model, classifier = digits_dit
    reward = image_rewards.digit_probability(classifier)
    ids = np.repeat(np.arange(10), 30)

    def score(m):
        return float(np.mean(reward(_guided_samples(m, 1.0, ids), ids)[0]))

    base_before = np.from_dlpack(model.params).copy()
    before = score(model)
    policy = rsm.lora(model, rank=4)
    # budget lowsnr2 (the paper's): on this DiT it gains more per iteration than rsm-zo's default
    # "tapered" budget (after 20 iterations, seeds 1-8: +0.054 to +0.078 vs +0.015 to +0.054;
    # benchmarks/RESULTS.md, "rsm-zo's default budget"), so the margin below tests LoRA's
    # fine-tuning, not the budget choice
    rsm.finetune(rsm.Guided(policy, 1.0), rsm.Guided(model, 1.0), reward, method="rsm-zo", iterations=20,
                 batch_size=5, group_size=6, conditions=np.arange(10), progress=False, lr=2e-3, seed=1,
                 budget="lowsnr2")
    after = score(policy)
    assert after > before + 0.03                     # measured +0.054 to +0.078 over seeds 1-8
    assert np.array_equal(np.from_dlpack(model.params), base_before)   # the frozen base
