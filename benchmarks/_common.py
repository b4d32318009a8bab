"""Shared helpers of the benchmarks: timing (warm-up, repeats, median), the machine's peak, the
result rows and their markdown table, and `--json PATH` output for run_all.py."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

# 2 cores x 115 GFLOP/s float32 FMA (AVX-512, see RESULTS.md): the peak the tables refer to.
PEAK_GFLOPS = 217.0
# threads of rsm, torch (and numpy's OpenBLAS through OPENBLAS_NUM_THREADS); RSM_BENCH_THREADS=1
# gives single-thread numbers (on a busy shared machine they are the less noisy ones)
THREADS = int(os.environ.get("RSM_BENCH_THREADS", "2"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))


def setup_threads() -> None:
    import rsm

    rsm.set_num_threads(THREADS)
    try:
        import torch

        torch.set_num_threads(THREADS)
    except ImportError:
        pass


# RSM_BENCH_CLOCK=cpu: time.process_time (this process's CPU seconds, all its threads) instead of
# the wall clock: on a shared machine the wall clock also counts the time the process waited for
# a core; the CPU clock does not (ratios of interleaved samples either way)
_clock = time.process_time if os.environ.get("RSM_BENCH_CLOCK") == "cpu" else time.perf_counter


def measure(fn, *, min_sample_s: float = 0.08, repeats: int = 7, warmup: int = 2) -> float:
    """Median seconds per call of fn(): `warmup` untimed samples, then `repeats` samples of
    `inner` calls each, `inner` chosen so that one sample lasts about min_sample_s."""
    t0 = _clock()
    fn()
    once = max(_clock() - t0, 1e-7)
    inner = max(1, int(min_sample_s / once))
    samples = []
    for r in range(warmup + repeats):
        t0 = _clock()
        for _ in range(inner):
            fn()
        dt = (_clock() - t0) / inner
        if r >= warmup:
            samples.append(dt)
    return statistics.median(samples)


def measure_pair(fa, fb, *, min_sample_s: float = 0.08, repeats: int = 7, warmup: int = 2):
    """(median seconds of fa, of fb), with the samples of fa and fb interleaved so that both see
    the same machine load (other processes on a shared machine). Same sampling as measure()."""
    inners = []
    for fn in (fa, fb):
        t0 = _clock()
        fn()
        inners.append(max(1, int(min_sample_s / max(_clock() - t0, 1e-7))))
    samples = ([], [])
    for r in range(warmup + repeats):
        for j, fn in enumerate((fa, fb)):
            t0 = _clock()
            for _ in range(inners[j]):
                fn()
            if r >= warmup:
                samples[j].append((_clock() - t0) / inners[j])
    return statistics.median(samples[0]), statistics.median(samples[1])


def row(group: str, case: str, rsm_s: float | None, torch_s: float | None, flops: float | None,
        **extra) -> dict:
    """One result: times in seconds, flops per call (matmul FLOPs)."""
    r = {"group": group, "case": case, "rsm_ms": None if rsm_s is None else rsm_s * 1e3,
         "torch_ms": None if torch_s is None else torch_s * 1e3, "flops": flops}
    r.update(extra)
    return r


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def peak() -> float:
    """The peak of the threads in use: 217 GFLOP/s for 2 cores, 108.5 per core."""
    return PEAK_GFLOPS * min(THREADS, 2) / 2


def markdown_table(rows: list[dict]) -> str:
    """| group | case | rsm ms | torch ms | speedup | rsm GFLOP/s | % peak | torch GFLOP/s | % peak |"""
    head = ("| benchmark | case | rsm ms | torch ms | speedup (torch/rsm) | rsm GFLOP/s | rsm % peak "
            "| torch GFLOP/s | torch % peak |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        rg = r["flops"] / (r["rsm_ms"] * 1e-3) / 1e9 if r["flops"] and r["rsm_ms"] else None
        tg = r["flops"] / (r["torch_ms"] * 1e-3) / 1e9 if r["flops"] and r["torch_ms"] else None
        sp = r["torch_ms"] / r["rsm_ms"] if r["rsm_ms"] and r["torch_ms"] else None
        lines.append(
            f"| {r['group']} | {r['case']} | {_fmt(r['rsm_ms'], '.3f')} | {_fmt(r['torch_ms'], '.3f')} "
            f"| {_fmt(sp, '.2f')}{'x' if sp else ''} | {_fmt(rg, '.1f')} "
            f"| {_fmt(rg and 100 * rg / peak(), '.0f')}{'%' if rg else ''} | {_fmt(tg, '.1f')} "
            f"| {_fmt(tg and 100 * tg / peak(), '.0f')}{'%' if tg else ''} |")
    return "\n".join(lines)


def finish(rows: list[dict], title: str) -> None:
    """Print the table; with `--json PATH` also write the rows there (run_all.py)."""
    print(f"\n### {title}\n")
    print(markdown_table(rows))
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def versions() -> dict:
    import numpy
    import rsm

    info = rsm.build_info()
    out = {"rsm": rsm.__version__, "rsm_blas": info.get("blas"), "rsm_compiler": info.get("compiler"),
           "rsm_flags": info.get("c_flags"), "numpy": numpy.__version__, "python": sys.version.split()[0],
           "cpus": os.cpu_count()}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:
        out["torch"] = None
    return out
