"""Thread-count invariance (bitwise) and the threading policy.

Every configuration of tests/threads_probe.py (pretraining on both paths, every sampler, one
update of every preset, the DiT forward and backward) runs in a subprocess per thread count
(OMP_NUM_THREADS = 1, 2, 3, 8) and must give the same SHA-256 of its outputs. The sizes make the
GEMMs split into several row tiles, on widths where OpenBLAS's summation order depends on the
row count (the split by thread count that these tests replaced gave other bits at 2, 3 and 8
threads for most of them). No test here measures a time."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import rsm

HERE = pathlib.Path(__file__).resolve().parent
THREADS = (1, 2, 3, 8)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")}
    env.update(extra)
    return env


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env), capture_output=True,
                          text=True, timeout=600, check=True)


@pytest.fixture(scope="module")
def hashes():
    out = {}
    for n in THREADS:
        proc = subprocess.run([sys.executable, str(HERE / "threads_probe.py")],
                              env=_env(OMP_NUM_THREADS=str(n), OMP_WAIT_POLICY="passive"),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _names():
    # the configuration names, without running anything: the probe's fixed list
    import importlib.util

    spec = importlib.util.spec_from_file_location("threads_probe", HERE / "threads_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe.names()


@pytest.mark.parametrize("name", _names())
def test_bitwise_equal_for_every_thread_count(hashes, name):
    ref = hashes[1][name]
    assert len(ref) == 64
    for n in THREADS[1:]:
        assert hashes[n][name] == ref, f"{name}: {n} threads differ from 1 thread"


def test_probe_ran_with_the_thread_counts_asked_for(hashes):
    assert {n: int(h["num_threads"]) for n, h in hashes.items()} == {n: n for n in THREADS}


def test_probe_outputs_differ_between_configurations(hashes):
    # a probe that hashed nothing (or the same bytes everywhere) would pass the test above
    values = [v for k, v in hashes[1].items() if k != "num_threads"]
    assert len(set(values)) == len(values)


# ---- the threading policy ---------------------------------------------------------------------

def test_honours_omp_num_threads():
    out = _python("import rsm; print(rsm.get_num_threads())", OMP_NUM_THREADS="3")
    assert out.stdout.split() == ["3"]


def test_default_is_the_cores_this_process_may_use():
    out = _python("import os, rsm; print(rsm.get_num_threads(), len(os.sched_getaffinity(0)))")
    got, cores = out.stdout.split()
    assert got == cores


def test_set_num_threads_overrides_the_environment():
    code = ("import rsm; rsm.set_num_threads(5); a = rsm.get_num_threads(); "
            "rsm.set_num_threads(1); print(a, rsm.get_num_threads(), rsm.build_info()['num_threads'])")
    assert _python(code, OMP_NUM_THREADS="2").stdout.split() == ["5", "1", "1"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True, None])
def test_set_num_threads_rejects_bad_values(bad):
    before = rsm.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads.*n must be an int >= 1"):
        rsm.set_num_threads(bad)
    assert rsm.get_num_threads() == before


def test_passive_waiting_unless_the_user_chose():
    # OMP_DISPLAY_ENV=verbose makes libgomp print its settings when it starts (when rsm._C loads
    # it); libgomp's own default is a spin count of 300000 (printed whether or not it was set)
    code = "import os, rsm; print(rsm._THREAD_POLICY, os.environ.get('OMP_WAIT_POLICY'))"
    out = _python(code, OMP_DISPLAY_ENV="verbose")
    assert "GOMP_SPINCOUNT = '0'" in out.stderr
    # set for libgomp's start only: the process's environment is left as the user had it
    assert out.stdout.strip() == "{'OMP_WAIT_POLICY': 'passive'} None"
    for key, value, shown in (("OMP_WAIT_POLICY", "active", "OMP_WAIT_POLICY = 'ACTIVE'"),
                              ("GOMP_SPINCOUNT", "12345", "GOMP_SPINCOUNT = '12345'")):
        out = _python("import rsm; print(rsm._THREAD_POLICY)", OMP_DISPLAY_ENV="verbose",
                      **{key: value})
        assert out.stdout.strip() == "{}"
        assert shown in out.stderr
