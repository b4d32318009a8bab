"""The public API's type hints, checked by mypy on a small user script (tests/typing/usage.py);
and a script with typing mistakes must fail, so that the check can fail. Skipped when mypy is not
installed (it is in make test's dependencies)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(target, cache):
    pytest.importorskip("mypy")
    env = {**os.environ, "MYPYPATH": os.path.join(ROOT, "python")}
    return subprocess.run([sys.executable, "-m", "mypy", "--python-version", "3.10",
                           "--ignore-missing-imports", "--cache-dir", str(cache),
                           "--no-error-summary", str(target)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_mypy_accepts_the_public_api(cache):
    out = _mypy(os.path.join(ROOT, "tests", "typing", "usage.py"), cache)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_catches_misuse(tmp_path, cache):
    bad = tmp_path / "bad.py"
    bad.write_text("import rsm\n"
                   "m = rsm.MLP(2)\n"
                   "run = rsm.finetune(m, m.copy(), rsm.rewards.quadratic([0, 0]), iterations='3')\n"
                   "x: str = rsm.methods.names()\n")
    out = _mypy(bad, cache)
    assert out.returncode == 1
    assert 'Argument "iterations" to "finetune" has incompatible type "str"' in out.stdout
    assert 'Incompatible types in assignment (expression has type "list[str]"' in out.stdout
