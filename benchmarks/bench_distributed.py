"""Data parallelism on this machine (rsm.distributed): 1 process x 2 threads vs 2 processes x 1
thread (MPI, and torch.distributed/gloo when torch is installed) for a pretraining step and a
fine-tuning iteration, and the all-reduce time vs the parameter count against the engine's own
all-reduce alone (mpi4py's blocking Allreduce, torch.distributed.all_reduce).

    python benchmarks/bench_distributed.py            # runs everything, prints markdown tables
    python benchmarks/bench_distributed.py --quick    # fewer repeats

Each configuration runs in its own processes (launched here with mpiexec / torchrun); the
configurations are interleaved round by round (A B C A B C ...) so that they see the same load
on a shared machine, and the table reports medians over rounds and ratios to the first row."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- the workloads (run inside each launched process) ---------------------------------------


EXACT = os.environ.get("RSM_DP_EXACT", "1") == "1"


def _pretrain_setup(comm):
    import numpy as np

    import rsm

    data = np.random.default_rng(0).normal(size=(4096, 32)).astype("float32")
    model = rsm.MLP(32, 512, 3, seed=0, temb_dim=64, dtype="float32")

    def run(steps):
        rsm.pretrain(model, data, rsm.FlowPath(), steps=steps, batch_size=256, lr=1e-3, seed=0,
                     progress=False, comm=comm, dp_tiles=8, dp_verify_every=0, dp_exact=EXACT)
    return run, model.num_params


def _finetune_setup(comm):
    import numpy as np

    import rsm

    policy = rsm.MLP(16, 256, 3, seed=0, temb_dim=32, dtype="float32")
    ref = policy.copy()

    def reward(x, cond):
        return -np.sum((np.from_dlpack(x) - 1.0) ** 2, axis=1)

    kw = {} if comm is None else {"comm": comm, "dp_tiles": 16, "dp_exact": EXACT}
    trainer = rsm.Trainer(policy, ref, reward, "flow-grpo", batch_size=16, group_size=8, seed=0,
                          kl_every=0, **kw)

    def run(steps):
        for _ in range(steps):
            trainer.step()
    return run, policy.num_params


def worker(what: str, backend: str, threads: int, rounds: int, out: str) -> None:
    import rsm
    from rsm import distributed

    rsm.set_num_threads(threads)
    comm = None if backend == "none" else distributed.init(backend, timeout=600)
    if what == "allreduce":
        return _allreduce_worker(comm, rounds, out)
    run, num_params = {"pretrain": _pretrain_setup, "finetune": _finetune_setup}[what](comm)
    steps = 5 if what == "pretrain" else 1
    run(1)   # warm-up (allocations, first-touch)
    times = []
    for _ in range(rounds):
        if comm is not None:
            comm.barrier()
        t0 = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - t0) / steps)
    if comm is None or comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"seconds": times, "num_params": num_params}, f)


def _allreduce_worker(comm, rounds: int, out: str) -> None:
    import numpy as np

    rows = []
    for n in (10**4, 10**5, 10**6, 10**7):
        buf = np.ones(n, dtype=np.float32)

        def ours():
            comm.allreduce(buf)

        if comm.backend == "mpi":
            MPI, raw = comm.MPI, comm.comm

            def engine():
                raw.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:
            import torch

            t = torch.from_numpy(buf)

            def engine():
                comm.dist.all_reduce(t)
        result = {"n": n}
        reps = max(3, min(200, int(2e7 / n)))
        for name, fn in (("rsm", ours), ("engine", engine)) * 1:
            fn()
        samples = {"rsm": [], "engine": []}
        for _ in range(rounds):
            for name, fn in (("rsm", ours), ("engine", engine)):
                comm.barrier()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                samples[name].append((time.perf_counter() - t0) / reps)
        for name in samples:
            result[name] = statistics.median(samples[name])
        rows.append(result)
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)


# ---- the driver ------------------------------------------------------------------------------

def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _launch(what: str, backend: str, procs: int, threads: int, rounds: int,
            exact: bool = True) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="passive",
               OPENBLAS_NUM_THREADS="1", RSM_DP_EXACT="1" if exact else "0")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        args = [os.path.abspath(__file__), "--worker", what, backend, str(threads), str(rounds), out]
        if backend == "mpi":
            cmd = [_bin("mpiexec"), "-n", str(procs), sys.executable, *args]
        elif backend == "torch":
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
                   "--master-addr", "127.0.0.1", "--master-port", str(port), *args]
            env["GLOO_SOCKET_IFNAME"] = "lo"
        else:
            cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def _have_torch() -> bool:
    try:
        import torch.distributed as dist  # noqa: F401
    except ImportError:
        return False
    return True


def scaling_table(what: str, rounds: int, outer: int) -> str:
    configs = [("1 process x 1 thread", "none", 1, 1, True),
               ("1 process x 2 threads", "none", 1, 2, True),
               ("2 processes x 1 thread (MPI, exact tiles)", "mpi", 2, 1, True),
               ("2 processes x 1 thread (MPI, dp_exact=False)", "mpi", 2, 1, False)]
    if _have_torch():
        configs.append(("2 processes x 1 thread (torch gloo, exact tiles)", "torch", 2, 1, True))
    samples = {c[0]: [] for c in configs}
    params = 0
    for _ in range(outer):   # interleaved: every configuration sees the same load
        for name, backend, procs, threads, exact in configs:
            res = _launch(what, backend, procs, threads, rounds, exact)
            samples[name] += res["seconds"]
            params = res["num_params"]
    base = statistics.median(samples[configs[1][0]])
    lines = [f"{what} ({params} parameters): seconds per {'step' if what == 'pretrain' else 'iteration'}",
             "", "| configuration | median s | speed-up vs 1 process x 2 threads |", "|---|---|---|"]
    for name, *_ in configs:
        m = statistics.median(samples[name])
        lines.append(f"| {name} | {m:.4f} | {base / m:.2f}x |")
    return "\n".join(lines)


def allreduce_table(backend: str, rounds: int) -> str:
    rows = _launch("allreduce", backend, 2, 1, rounds)
    lines = [f"all-reduce of float32 buffers, 2 processes, {backend}: rsm's communicator vs the "
             "engine's own call", "",
             "| floats | rsm (ms) | engine alone (ms) | rsm / engine | bus bandwidth rsm (GB/s) |",
             "|---|---|---|---|---|"]
    for r in rows:
        bus = 2 * (2 - 1) / 2 * 4 * r["n"] / r["rsm"] / 1e9   # 2 (n - 1) / n x bytes / time
        lines.append(f"| {r['n']:.0e} | {r['rsm'] * 1e3:.3f} | {r['engine'] * 1e3:.3f} | "
                     f"{r['rsm'] / r['engine']:.2f} | {bus:.2f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        what, backend, threads, rounds, out = sys.argv[2:7]
        return worker(what, backend, int(threads), int(rounds), out)
    quick = "--quick" in sys.argv
    rounds, outer = (3, 2) if quick else (5, 3)
    print("Machine: shared with other sessions (2 cores); configurations interleaved.\n")
    for what in ("pretrain", "finetune"):
        print(scaling_table(what, rounds, outer), "\n", flush=True)
    print(allreduce_table("mpi", rounds), "\n", flush=True)
    if _have_torch():
        print(allreduce_table("torch", rounds), "\n", flush=True)


if __name__ == "__main__":
    main()
