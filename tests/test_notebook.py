"""Notebook objects: short, informative reprs and HTML for Run, History, Trajectory, Trainer,
Reward and the methods table; rsm.plot loads lazily and returns figures."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rsm
from toy_models import make_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run():
    policy, ref = make_models()
    return rsm.finetune(policy, ref, rsm.rewards.quadratic([1.0, 0.0]), "flow-grpo", iterations=3,
                        batch_size=2, group_size=4, sampler_steps=4, kl_every=1, lr=3e-3,
                        progress=False)


def test_run_trainer_reward_reprs(run):
    text = repr(run)
    assert len(text) < 300 and text.startswith("Run(method='flow-grpo', iterations=3")
    assert "reward_mean=" in text and "array" not in text
    text = repr(run.trainer)
    assert len(text) < 400
    for part in ("method='flow-grpo'", "iteration=3", "batch=2x4", "sampler_steps=4", "lr=0.003"):
        assert part in text
    html = run.trainer._repr_html_()
    assert "<table>" in html and "flow-grpo" in html and len(html) < 3000
    assert "<table>" in run._repr_html_()
    text = repr(run.trainer.reward)
    assert text == "Reward('quadratic', differentiable, kind='quadratic', nonfinite='raise', calls=3)"
    assert repr(rsm.Reward(lambda x, c: x, name="mine")).startswith("Reward('mine', black-box")


def test_history_repr_is_a_bounded_table(run):
    text = repr(run.history)
    assert text.startswith("History(3 rows") and "reward_mean" in text and "kl_path" in text
    long = rsm.History({"step": i, "reward_mean": float(i), "kl": 0.5, "extra": [1] * 100}
                       for i in range(5000))
    text = repr(long)
    assert len(text.splitlines()) == 7 and len(text) < 1000 and "4999" in text
    html = long._repr_html_()
    assert html.count("<tr>") == 6 and "5000 rows" in html
    assert repr(rsm.History()) == "History(0 rows)"


def test_trajectory_repr_shows_shapes_not_arrays():
    model = rsm.MLP(3, 8, 1)
    traj = rsm.sample(model, 500, rsm.FlowPath(), "sde", steps=6, return_trajectory=True)
    text = repr(traj)
    assert len(text) < 250
    assert "500 samples x 3 dims" in text and "6 steps" in text and "xs[7x500x3]" in text
    assert "<table>" in traj._repr_html_()


def test_methods_table_prints():
    table = rsm.methods.table(with_influence=False)
    text = repr(table)
    lines = text.splitlines()
    assert len(lines) == len(rsm.methods.names()) + 1
    assert lines[0].split()[:3] == ["method", "family", "path"]
    assert any(line.split()[0] == "rsm-zo" for line in lines[1:])
    assert table[0]["method"] == rsm.methods.names()[0]   # still a list of row dicts
    assert "<table" in table._repr_html_()
    full = rsm.methods.table()
    assert "h" in full[0] and max(len(line) for line in repr(full).splitlines()) < 200


def test_plot_returns_figures_and_saves_only_when_asked(run, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = rsm.plot.curves(run.history)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["reward_mean", "kl", "kl_path"]
    assert list(tmp_path.iterdir()) == []
    out = rsm.plot.curves({"a": run.history, "b": run.history}, tmp_path / "c.png")
    assert out == str(tmp_path / "c.png") and os.path.getsize(out) > 1000
    assert isinstance(rsm.plot.scatter_compare({"x": np.zeros((5, 2))}), Figure)


def test_import_rsm_does_not_import_matplotlib():
    code = ("import sys, rsm; assert 'matplotlib' not in sys.modules; "
            "p = rsm.plot; assert 'rsm.plot' in sys.modules; print('ok')")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
