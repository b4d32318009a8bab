"""The build: rsm imports, build_info() reports what the build found, CUDA is optional."""
import glob
import os
import subprocess
import sys

import rsm


def _gpu_visible():
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def test_build_info_keys():
    info = rsm.build_info()
    for key in ("compiler", "c_flags", "openmp", "blas", "sanitizers", "cuda_built",
                "cuda_archs", "nvcc", "cuda_available", "cuda_reason", "build_summary"):
        assert key in info, key
    assert isinstance(info["cuda_built"], bool)
    assert isinstance(info["cuda_available"], bool)
    assert isinstance(info["cuda_reason"], str) and info["cuda_reason"]
    assert info["build_summary"], "setup.py wrote no build summary"
    if info["cuda_built"]:
        assert info["nvcc"] and info["cuda_archs"]


def test_cuda_available_is_a_bool_and_matches_build_info():
    available = rsm.cuda_available()
    assert isinstance(available, bool)
    assert available == rsm.build_info()["cuda_available"]
    if not _gpu_visible():
        assert available is False
    if not rsm.build_info()["cuda_built"]:
        assert available is False


def test_cuda_module_when_built():
    if not rsm.build_info()["cuda_built"]:
        return
    from rsm import _cuda

    count, reason = _cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert isinstance(reason, str)
    if count == 0:
        assert reason
    assert _cuda.runtime_version() >= 11000


def test_import_rsm_does_not_load_cuda():
    code = ("import sys, rsm; rsm.build_info.__doc__; "
            "assert 'rsm._cuda' not in sys.modules, 'import rsm loaded rsm._cuda'")
    env = dict(os.environ)
    # Under make test-asan the child inherits the sanitizers; its interpreter leaks at exit are
    # not rsm's (the parent's leak check covers rsm), so leak detection is off in the child.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__), env=env)


def test_every_subpackage_is_declared_in_setup_py():
    """`pip install .` (the sanitizer venv, wheels) ships only the packages setup.py lists: a new
    subpackage missing there imports in the editable venv and fails everywhere else."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    declared = set(re.findall(r'"(rsm(?:\.[a-z_]+)*)"', re.search(r"packages=\[([^\]]*)\]",
                                                                  (root / "setup.py").read_text()).group(1)))
    found = {".".join(p.parent.relative_to(root / "python").parts)
             for p in (root / "python" / "rsm").rglob("__init__.py")}
    assert found and found == declared, f"setup.py packages {sorted(declared)} vs on disk {sorted(found)}"
