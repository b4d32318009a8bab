"""float32 GEMM: rsm's dispatch (rsm_sgemm: the loaded OpenBLAS, single-threaded, rows split over
rsm's OpenMP threads) vs numpy.matmul (numpy's own OpenBLAS, its own threads) vs torch.mm, and
rsm's built-in fallback kernel for reference. Square sizes and the MLP's shapes, 2 threads.

rsm is reached through rsm._C.gemm(a, b, trans_a, trans_b, builtin), a benchmark hook.
Run: python benchmarks/bench_gemm.py [--quick] [--json PATH]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rsm  # noqa: E402
from _common import THREADS, measure, peak, setup_threads  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional here
    torch = None


def shapes():
    """(label, m, n, k, trans_a, trans_b): C[m, n] = op(A) op(B), as the MLP calls them."""
    out = [(f"square {s}", s, s, s, 0, 0) for s in (256, 512, 1024, 2048)]
    for b in (256, 4096):
        out += [
            (f"MLP fwd hidden x W^T, B={b}", b, 256, 256, 0, 1),
            (f"MLP fwd input x W^T, B={b}", b, 256, 66, 0, 1),
            (f"MLP bwd dW = dy^T x, B={b}", 256, 256, b, 1, 0),
            (f"MLP bwd dx = dy W, B={b}", b, 256, 256, 0, 0),
        ]
    return out


def operands(m, n, k, ta, tb, rng):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b


def run(quick: bool = False) -> list[dict]:
    setup_threads()
    rng = np.random.default_rng(0)
    reps = 3 if quick else 7
    rows = []
    for label, m, n, k, ta, tb in shapes():
        a, b = operands(m, n, k, ta, tb, rng)
        flops = 2.0 * m * n * k
        ref = (a.T if ta else a) @ (b.T if tb else b)
        got = np.from_dlpack(rsm._C.gemm(a, b, ta, tb))
        assert np.allclose(got, ref, rtol=1e-4, atol=1e-3 * np.sqrt(k)), label
        r = {"case": label, "m": m, "n": n, "k": k, "flops": flops}
        r["rsm_s"] = measure(lambda: rsm._C.gemm(a, b, ta, tb), repeats=reps)
        an, bn = (a.T if ta else a), (b.T if tb else b)
        r["numpy_s"] = measure(lambda: np.matmul(an, bn), repeats=reps)
        if torch is not None:
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            at, bt = (at.t() if ta else at), (bt.t() if tb else bt)
            r["torch_s"] = measure(lambda: torch.mm(at, bt), repeats=reps)
        if not quick or m * n * k <= 512 ** 3:
            r["builtin_s"] = measure(lambda: rsm._C.gemm(a, b, ta, tb, True), repeats=3,
                                     min_sample_s=0.05, warmup=1)
        rows.append(r)
    return rows


def table(rows) -> str:
    cols = [("rsm", "rsm_s"), ("numpy", "numpy_s"), ("torch", "torch_s"), ("rsm built-in", "builtin_s")]
    head = "| shape (m x n x k) | " + " | ".join(f"{c} GFLOP/s (% peak)" for c, _ in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key in cols:
            s = r.get(key)
            if s is None:
                cells.append("-")
            else:
                g = r["flops"] / s / 1e9
                cells.append(f"{g:.1f} ({100 * g / peak():.0f}%)")
        lines.append(f"| {r['case']} ({r['m']}x{r['n']}x{r['k']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = run(quick="--quick" in sys.argv)
    print(f"\n### float32 GEMM, {THREADS} threads, peak {peak():.0f} GFLOP/s\n")
    print(table(rows))
    if "--json" in sys.argv:
        import json

        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(rows, f, indent=1)
