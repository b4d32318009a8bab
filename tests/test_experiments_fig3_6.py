"""Quick mode of the Figs. 3-6 fine-tuning study (rsm.experiments fig3-6-finetune): the claims
it supports on the 2D toy, each with a margin below what the quick run measures (numbers in
docs/results/fig3-6.md), and the exactness of the KL measurement it relies on."""
import math

import numpy as np
import pytest

import rsm
import rsm.experiments as experiments
from rsm import datasets
from rsm.experiments import _finetune_toy as toy_lib


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return experiments.run("fig3-6-finetune", out=str(tmp_path_factory.mktemp("fig3-6")), quick=True)


def test_every_method_raises_the_reward(summary):
    # the reference starts near -4.0; the weakest quick run ends near -1.1
    for label, m in summary["methods"].items():
        assert m["reward_mean"] > m["reward_start"] + 2.0, label
        assert m["diverged_seeds"] == 0, label


def test_rsm_zo_reaches_the_zeroth_order_baselines_reward_with_less_compute(summary):
    # measured (quick, the presets as released, rsm-zo's budget lowsnr2): rsm-zo 1.78x vs
    # TempFlow-GRPO, 1.93x vs Flow-GRPO in rsm's earlier form (flow-grpo-exact), 1.40x vs
    # Flow-GRPO as released; the highsnr profile 2.22x, 2.35x, and only 1.05x vs the released
    # Flow-GRPO (not claimed: below the margin). With the budget "tapered" (branch perf's
    # default for rsm-zo): 2.47x, 2.62x, 2.07x, so the assertions hold for either default
    ratios = {(r["redesign"], r["baseline"]): r["nfe_ratio"] for r in summary["ratios"]}
    for key in [("rsm-zo", "tempflow-grpo"), ("rsm-zo", "flow-grpo-exact"), ("rsm-zo", "flow-grpo"),
                ("rsm-zo [highsnr]", "tempflow-grpo"), ("rsm-zo [highsnr]", "flow-grpo-exact")]:
        assert math.isfinite(ratios[key]) and ratios[key] >= 1.1, (key, ratios[key])
    # ("rsm-zo [highsnr]", "flow-grpo") is not asserted at all: 1.05x on the portable build, and
    # under the ASan build (other float bits) the redesign never reached the released Flow-GRPO's
    # final reward (NaN): no claim either way


def test_rsm_zo_ends_closer_to_the_tilted_target_than_tempflow(summary):
    # exact KL(p_theta || p*) along training: the best checkpoint of rsm-zo (quick: 1.42 with
    # lowsnr2, 1.62 with "tapered") vs TempFlow (2.83)
    m = summary["methods"]
    assert m["rsm-zo"]["best_kl_target_mean"] < m["tempflow-grpo"]["best_kl_target_mean"] - 0.5


def test_kl_path_is_one_protocol_for_every_method(summary):
    """kl_path (the whole-path KL to the reference, _finetune_toy.path_kl) is measured for every
    method on the same SDE, grid and noise: exactly 0 before training (policy == reference:
    every per-step term is |u - u_ref|^2 = 0) and positive after it."""
    for label, m in summary["methods"].items():
        assert m["kl_path_start"] == 0.0, label
        assert math.isfinite(m["kl_path_mean"]) and m["kl_path_mean"] > 0.0, label


def test_outputs_written(summary, tmp_path_factory):
    assert all(str(f).endswith(".png") for f in summary["figures"]) and len(summary["figures"]) >= 4


def test_exact_density_of_the_sampler_gives_vanishing_kl_for_the_exact_model():
    """KL(p_model || p_data) through the sampler's change of variables: ~0 for the exact denoiser
    of the data (and shrinking with the step count), clearly > 0 for a perturbed one."""
    data = datasets.get("8gaussians")
    path = rsm.FlowPath()
    exact = rsm.GaussianMixtureModel.from_dataset(data, path)
    kls = []
    for steps in (10, 40):
        x, log_p = toy_lib.sample_with_log_density(exact, path, 400, steps, seed=0)
        kls.append(float(np.mean(log_p - data.log_prob(x))))
    assert abs(kls[1]) < 0.02 and abs(kls[1]) < abs(kls[0])
    wide = datasets.GaussianMixture(data.means, data.stds * 1.5, data.weights)
    x, log_p = toy_lib.sample_with_log_density(rsm.GaussianMixtureModel.from_dataset(wide, path), path, 400, 40, 0)
    kl_wide = float(np.mean(log_p - data.log_prob(x)))
    # exact value for equal-weight, well-separated components: log(1/1.5^2)... = 2 (log 1.5 - 0.5 + 0.5/1.5^2 ...)
    expect = 2 * (-np.log(1.5) + 0.5 * (1.5 ** 2 - 1))
    assert kl_wide == pytest.approx(expect, rel=0.1)
