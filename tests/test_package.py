"""The package: portable builds pick a CPU-specific copy of the C core at import (when the build
made them), and every copy computes the same model to rounding; build_info reports versions."""
import os
import subprocess
import sys

import numpy as np
import pytest

import rsm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in_subprocess(code, **env):
    full = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "python"), "OMP_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


CODE = ("import numpy as np, rsm; m = rsm.MLP(2, 64, 2, seed=3); "
        "d = rsm.datasets.get('8gaussians').sample(512, seed=0); "
        "rsm.pretrain(m, d, rsm.FlowPath(), steps=20, batch_size=64, progress=False); "
        "x = np.from_dlpack(rsm.sample(m, 256, rsm.FlowPath(), 'heun', steps=8, seed=1)); "
        "np.save('{out}', x); print(rsm.build_info()['cpu_variant'], rsm.build_info()['c_flags'])")


def test_cpu_variants_agree(tmp_path):
    info = rsm.build_info()
    built = info["cpu_variants_built"]
    if not built:
        pytest.skip("this build has no CPU-specific copies (native, sanitized, RSM_DISPATCH=0 or not x86-64)")
    results = {}
    for variant in ["baseline"] + built:
        out = tmp_path / f"{variant}.npy"
        try:
            line = _in_subprocess(CODE.format(out=out), RSM_CPU_VARIANT=variant)
        except AssertionError:
            flags = open("/proc/cpuinfo").read()
            if variant == "x86_64_v4" and "avx512f" not in flags:
                continue   # this CPU cannot run the AVX-512 copy
            raise
        name, _, flags = line.strip().partition(" ")
        assert name == variant
        assert ("-march=" + variant.replace("_", "-", 1).replace("_", "-")) in flags if variant != "baseline" \
            else "-march" not in flags
        results[variant] = np.load(out)
    base = results.pop("baseline")
    for variant, x in results.items():   # FMA contraction changes the last bits, nothing more
        np.testing.assert_allclose(x, base, rtol=2e-4, atol=2e-5, err_msg=variant)
    # the default picks the best copy the CPU runs
    assert info["cpu_variant"] in built or info["cpu_variant"] == "baseline"


def test_unknown_variant_is_refused():
    out = subprocess.run([sys.executable, "-c", "import rsm"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "python"),
                              "RSM_CPU_VARIANT": "x86_64_v9"})
    assert out.returncode != 0 and "RSM_CPU_VARIANT=x86_64_v9" in out.stderr


def test_build_info_has_versions():
    import platform

    info = rsm.build_info()
    assert info["rsm_version"] == rsm.__version__ == "0.1.0"
    assert info["python_version"] == platform.python_version()
    assert info["numpy_version"] == np.__version__
    assert info["native"] is False or info["native"] is True
