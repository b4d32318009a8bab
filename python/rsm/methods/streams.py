"""The random streams of fine-tuning: every draw of iteration k is keyed by (seed, draw index,
salt) through `mix`, so runs are bitwise reproducible and the streams of different uses never
collide. The salts in one place:

  0        the rollout sampler's own stream (and the branch rollout's roots)
  1..S     the branch rollout's per-step branch streams (step i: salt i + 1)
  7        DanceGRPO's shared initial noise per group
  11       the random subset of trained steps (train_steps as a fraction)
  13       ReFL's random late step
  17       the random subset of KL-anchor rows (kl_anchor_max_ratio)
  19       the per-sample random subsets of trained steps (timestep_subset "per_sample")
  KL_EVAL  path_kl's fixed evaluation seed (with draw index 0), apart from every training draw"""
from __future__ import annotations

_MASK64 = (1 << 64) - 1

SHARED_NOISE = 7
TRAIN_STEPS = 11
REFL_STEP = 13
KL_ANCHOR_ROWS = 17
SAMPLE_STEPS = 19
TREE_STEPS = 23   # Branch-GRPO's step-by-step tree with a split noise scale (rollouts/tree.py)
KL_EVAL = 0x6B6C5F70617468  # "kl_path"


def mix(seed: int, step: int, salt: int = 0) -> int:
    """A 64-bit rollout seed for iteration `step` (distinct per (seed, step, salt))."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB + 1) & _MASK64
