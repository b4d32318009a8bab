"""The fuzz harness in the suite (tests/fuzz_harness.py): the regression corpus of crafted files
and capsules (tests/fuzz_corpus/) and a short, derandomized Hypothesis run per target, every case
in its own forked child so that a crash is a failure here, not a dead runner. `make fuzz` runs the
same harness for longer with random cases."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "fuzz_harness.py")
CORPUS = os.path.join(HERE, "fuzz_corpus")


def run_harness(*args, timeout=900):
    """(exit status, JSON summary) of the harness in a fresh process. The summary is what is
    judged: under `make test-asan` LeakSanitizer sets the exit status of the harness process to 23
    for CPython's own leaks at exit (the judge in .ci/asan_pytest.py sorts those out), while a
    memory error in a case shows up in the summary as that case's crash."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    proc = subprocess.run([sys.executable, HARNESS, "--save", "", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the harness printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1])


def failures(summary):
    return "\n".join(f"{f['target']} {f['case']}: {f['outcome']}\n{f['output']}" for f in summary["failed_cases"])


def test_corpus_loads_or_is_refused_cleanly():
    files = [n for n in os.listdir(CORPUS) if n.endswith((".safetensors", ".ckpt", ".json"))]
    assert len(files) >= 60
    rc, summary = run_harness("--corpus-only")
    assert summary["cases"] == len(files)
    assert summary["crashes"] == 0 and summary["failures"] == 0, failures(summary)
    # the corpus holds valid inputs too, and they load (the harness is not refusing everything)
    for target in ("safetensors", "checkpoint", "dlpack"):
        assert summary["by_target"][target].get("loaded", 0) >= 2, summary["by_target"]
        assert summary["by_target"][target].get("refused", 0) >= 8, summary["by_target"]


def test_short_fuzz_run():
    pytest.importorskip("hypothesis", reason="hypothesis is in the Makefile's DEPS; reinstall .venv")
    rc, summary = run_harness("--no-corpus", "--cases", "40")
    assert summary["cases"] == 120
    assert summary["crashes"] == 0 and summary["failures"] == 0, failures(summary)


def test_harness_counts_crashes_and_escapes(tmp_path, monkeypatch):
    """A case that kills its child and one that raises an undocumented exception are counted as a
    crash and an escape, and the runner itself survives both."""
    sys.path.insert(0, HERE)
    try:
        import fuzz_harness as fh
    finally:
        sys.path.remove(HERE)

    def killer(payload, workdir):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    def escaper(payload, workdir):
        raise RecursionError("escaped")

    monkeypatch.setitem(fh.CASES, "dlpack", killer)
    monkeypatch.setitem(fh.CASES, "checkpoint", escaper)
    tally = fh.Tally(None)
    for target in ("dlpack", "checkpoint"):
        code, output = fh.run_forked(target, b"", str(tmp_path))
        tally.record(target, "selftest", b"", code, output)
    summary = tally.summary()
    assert summary["crashes"] == 1 and summary["failures"] == 2
    assert summary["by_target"]["dlpack"] == {"crash (signal 9)": 1}
    assert summary["by_target"]["checkpoint"] == {"unexpected": 1}
    assert "RecursionError: escaped" in summary["failed_cases"][1]["output"]
