"""The backend table of the C core (csrc/backend.h) on the CPU (issue 13, host side).

- the CPU table is complete: no NULL entry, at the top level or among either precision's ops;
- every op through the table equals the direct call of the CPU loop bit for bit, in float32 and
  float64 (rsm._C.backend_check runs csrc/backend_check_real.c: random inputs, both paths, memcmp);
- the loops now written over the table (pretraining, sampling, CFG on the DiT, a preset's update)
  reproduce the golden hashes recorded before the table existed (tests/golden/hashes.json, the
  cases of tests/test_golden.py, which checks all of them).
"""
import os
import sys

import pytest

import rsm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_golden  # noqa: E402

_C = rsm._C

# ops exercised only through the loops that call them (they need a path and a model config):
# pretrain_batch is every pretraining golden case's batch
THROUGH_LOOPS = {"pretrain_batch"}


def test_cpu_table_is_complete():
    report = _C.backend_check("float32")
    assert report["missing"] == 0, f"NULL entries in rsm_backend_cpu: {report['missing_names']}"
    ops = report["ops"]
    assert len(ops) == len(set(ops)), "an op is listed twice in RSM_BACKEND_OPS"
    # the ops the issue names: GEMM, activations, norms, attention, sampler step + log-prob,
    # objective, AdamW, Philox fills, reductions
    for name in ("gemm", "silu_forward", "gelu_backward", "layernorm_forward", "modulate_backward",
                 "attention_forward", "attention_backward", "sampler_step", "step_log_prob",
                 "objective", "adamw_step", "fill_normal", "sum_sq_diff"):
        assert name in ops, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_op_through_the_table_equals_the_direct_call(dtype):
    report = _C.backend_check(dtype)
    assert report["mismatches"] == 0, f"{dtype}: ops differing bitwise: {report['mismatched']}"
    checked = set(report["checked"].split())
    unchecked = set(report["ops"]) - checked - THROUGH_LOOPS
    assert not unchecked, f"{dtype}: ops the check never compared: {sorted(unchecked)}"


def test_backend_check_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match="float32"):
        _C.backend_check("int8")


# one case per loop written over the table (the full list: tests/test_golden.py)
LOOP_CASES = ["pretrain_mlp_flow", "pretrain_mlp_flow_f64", "pretrain_dit", "sample_dit_cfg",
              "preset_flow-grpo", "preset_rsm-zo"]


@pytest.mark.parametrize("name", LOOP_CASES)
def test_loops_through_the_table_reproduce_the_golden_outputs(name):
    recorded = test_golden._load().get(test_golden.fingerprint(), {}).get("hashes")
    if recorded is None:
        pytest.skip(f"no golden hashes recorded for this CPU/build ({test_golden.fingerprint()})")
    assert name in test_golden.CASES and name in recorded, name
    assert test_golden.CASES[name]() == recorded[name], f"{name} changed bitwise"


def test_sampler_cases_exist_for_the_loops():
    """The golden list still covers every sampler through the table (a guard against the
    parametrization above silently shrinking)."""
    samplers = [n for n in test_golden.CASES if n.startswith("sample_")]
    assert len(samplers) >= 6, samplers
