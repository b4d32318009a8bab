"""Run every benchmark (each in its own process) and print one markdown report.

    python benchmarks/run_all.py [--quick]

Order: the twin check (rsm and torch compute the same function), the MLP benchmarks, the GEMM
benchmark. A failing twin check stops the run: timings of different functions mean nothing.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import THREADS, markdown_table, peak, versions  # noqa: E402


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(HERE, script), *args], text=True,
                          capture_output=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> int:
    quick = ["--quick"] if "--quick" in sys.argv else []
    v = versions()
    print(f"# rsm benchmarks ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print(f"- machine: {cpu_model()}, {v['cpus']} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"- rsm {v['rsm']} ({v['rsm_compiler']}; BLAS {v['rsm_blas']}), torch {v['torch']}, "
          f"numpy {v['numpy']}, Python {v['python']}")

    twin = run("torch_twin.py")
    print("\n## Twin check\n\n```\n" + twin.stdout.strip() + "\n```")
    if twin.returncode != 0:
        print(twin.stderr)
        print("the twin check failed: no timings")
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "mlp.json")
        mlp = run("bench_mlp.py", "--json", out, *quick)
        if mlp.returncode != 0:
            print(mlp.stdout, mlp.stderr)
            return 1
        with open(out) as f:
            rows = json.load(f)
        print(f"\n## MLP (dim 2, width 256, depth 3), {THREADS} threads, median ms per op, % of {peak():.0f} GFLOP/s\n")
        print(markdown_table(rows))

        gemm = run("bench_gemm.py", "--json", os.path.join(tmp, "gemm.json"), *quick)
        if gemm.returncode != 0:
            print(gemm.stdout, gemm.stderr)
            return 1
        print("\n## " + gemm.stdout.strip().lstrip("#").strip())
        fine = subprocess.run([sys.executable, os.path.join(HERE, "bench_finetune.py")],
                              capture_output=True, text=True)
        if fine.returncode != 0:
            print(fine.stdout, fine.stderr)
            return 1
        print("\n## " + fine.stdout.strip().lstrip("#").strip())
        dit = subprocess.run([sys.executable, os.path.join(HERE, "bench_dit.py"), *quick],
                             capture_output=True, text=True)
        if dit.returncode != 0:
            print(dit.stdout, dit.stderr)
            return 1
        print("\n## " + dit.stdout.strip().lstrip("#").strip())
    print(f"\n(load average at the end: {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
