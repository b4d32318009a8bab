"""A new user's script, type-checked by tests/test_typing.py (mypy): the public API's hints must
accept it, and the reveal/assignments pin what the main calls return."""
from __future__ import annotations

import numpy as np

import rsm
from rsm.config import RunConfig
from rsm.loggers import CSVLogger

path: rsm.FlowPath = rsm.FlowPath()
model: rsm.MLP = rsm.MLP(2, hidden=32, depth=1, seed=0)
data = rsm.datasets.get("8gaussians").sample(256, seed=0)
history: rsm.History = rsm.pretrain(model, data, path, steps=2, batch_size=32, progress=False)
losses: np.ndarray = history.column("loss")
ref = model.copy()
reward: rsm.Reward = rsm.rewards.quadratic([2.0, 0.0], scale=1.0)
run: rsm.Run = rsm.finetune(model, ref, reward, "rsm-fo", iterations=1, batch_size=2,
                            group_size=2, sampler_steps=4, progress=False, log_with="csv",
                            log_dir="/tmp/rsm-typing", save_path="/tmp/rsm-typing/t.safetensors")
trainer: rsm.Trainer = rsm.Trainer.load("/tmp/rsm-typing/t.safetensors", ref)
row: dict = trainer.step()
value: float = trainer.path_kl(8)
traj: rsm.Trajectory = rsm.sample(model, 4, path, "sde", steps=3, return_trajectory=True)
cfg: RunConfig = RunConfig.from_dict({"seed": 1})
logger = CSVLogger("/tmp/rsm-typing/h.csv")
logger.log({"reward_mean": 1.0}, 0)
info: dict = rsm.build_info()
names: list[str] = rsm.methods.names()
