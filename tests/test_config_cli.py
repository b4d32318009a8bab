"""Run config files (YAML / TOML -> rsm.config.RunConfig) and the commands
`python -m rsm pretrain|finetune config` end to end on the toy (small settings), and `rsm info`."""
import csv
import os
import subprocess
import sys

import pytest

import rsm
from rsm import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_yaml(tmp_path, iterations=3):
    text = f"""
seed: 1
model: {{file: {tmp_path}/model.safetensors, hidden: 16, depth: 1}}
data: {{dataset: 8gaussians, size: 500}}
reward: {{name: quadratic, args: {{center: [2.0, 0.0]}}}}
method: {{name: rsm-fo, options: {{lr: 0.002, sampler_steps: 5}}}}
schedule: {{iterations: {iterations}, batch_size: 4, group_size: 2, save_every: 2,
           pretrain_steps: 20, pretrain_batch_size: 32}}
logging: {{log_with: csv, dir: {tmp_path}/run, kl_every: 2, progress: false}}
"""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(ROOT, "python")}
    return subprocess.run([sys.executable, "-m", "rsm", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_commands_end_to_end(tmp_path):
    pytest.importorskip("yaml")
    cfg_file = _write_yaml(tmp_path)
    out = _cli("pretrain", cfg_file)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and (tmp_path / "model.safetensors").exists()
    model = rsm.load(tmp_path / "model.safetensors")
    assert rsm.guards.path_info(model)["kind"] == "flow"
    out = _cli("finetune", cfg_file)
    assert out.returncode == 0, out.stderr
    assert "fine-tuned with rsm-fo: 3 iterations" in out.stdout
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert all(r["reward_mean"] not in ("", "nan") for r in rows)
    trainer = rsm.Trainer.load(tmp_path / "run" / "trainer.safetensors", model)
    assert trainer.iteration == 3 and trainer.cfg["steps"] == 5 and trainer.seed == 1
    # --resume: raise iterations and continue the same run and the same CSV file
    _write_yaml(tmp_path, iterations=5)
    out = _cli("finetune", cfg_file, "--resume")
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4]
    # the resumed run is the uninterrupted one
    fresh = rsm.finetune(model.copy(), model, rsm.rewards.quadratic([2.0, 0.0]), "rsm-fo",
                         iterations=5, batch_size=4, group_size=2, seed=1, kl_every=2, lr=0.002,
                         sampler_steps=5, progress=False)
    resumed = rsm.load(tmp_path / "run" / "policy.safetensors")
    import numpy as np

    assert np.array_equal(np.from_dlpack(resumed.params), np.from_dlpack(fresh.policy.params))


def test_toml_and_yaml_examples_parse():
    pytest.importorskip("yaml")
    a = config.RunConfig.from_file(os.path.join(ROOT, "examples", "toy_finetune.yaml"))
    b = config.RunConfig.from_file(os.path.join(ROOT, "examples", "toy_flow_grpo.toml"))
    assert a.method.name == "rsm-fo" and b.method.name == "flow-grpo"
    assert b.reward.args == {"center": [2.0, 0.0], "scale": 1.0}
    assert a.model.file == b.model.file
    for cfg in (a, b):
        rsm.methods.get(cfg.method.name, **rsm.guards.sampler_steps_alias(cfg.method.options, "x"))


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"config.schedule: unknown key 'iteration'; did you mean 'iterations'\?"):
        config.RunConfig.from_dict({"schedule": {"iteration": 3}})
    with pytest.raises(TypeError, match=r"config.schedule.iterations: expected an integer, got '3'"):
        config.RunConfig.from_dict({"schedule": {"iterations": "3"}})
    with pytest.raises(TypeError, match=r"config.schedule.pretrain_lr: expected a number, got '1e-3'"):
        config.RunConfig.from_dict({"schedule": {"pretrain_lr": "1e-3"}})
    cfg = config.RunConfig.from_dict({"reward": {"name": "quadratc"}})
    with pytest.raises(ValueError, match="did you mean 'quadratic'"):
        config.make_reward(cfg)
    cfg = config.RunConfig.from_dict({"logging": {"log_with": ["csv", "wandb"], "kl_warn": None}})
    assert cfg.logging.log_with == ["csv", "wandb"] and cfg.logging.kl_warn is None


def test_info_prints_versions():
    out = _cli("info")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    import numpy as np
    import platform

    assert first == (f"rsm {rsm.__version__} (Python {platform.python_version()}, "
                     f"numpy {np.__version__})")
    info = rsm.build_info()
    assert info["rsm_version"] == rsm.__version__ and info["numpy_version"] == np.__version__


def test_demo_quick_flags(monkeypatch):
    """--quick swaps in the small settings for both demos (the demos themselves are timed in the
    README; the image demo runs end to end in tests/test_image_demo.py)."""
    from rsm import __main__ as cli
    from rsm import image_demo

    seen = {}
    monkeypatch.setattr(cli, "_demo", lambda args: seen.setdefault("demo", args) and 0)
    monkeypatch.setattr(image_demo, "run", lambda args: seen.setdefault("images", args) and 0)
    cli.main(["demo", "--quick"])
    cli.main(["demo", "images", "--quick"])
    for key, value in cli.QUICK_DEMO.items():
        assert getattr(seen["demo"], key) == value
    for key, value in cli.QUICK_IMAGES.items():
        assert getattr(seen["images"], key) == value
    seen.clear()
    cli.main(["demo"])
    assert seen["demo"].steps == 2500 and seen["demo"].finetune_steps == 60
