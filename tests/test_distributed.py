"""rsm.distributed: data-parallel pretraining and fine-tuning over MPI (mpiexec from the mpich
wheel) and torch.distributed (gloo; when torch is installed, e.g. `make test-torch`), checked
for world-size invariance (bitwise), identical ranks, checkpoints across world sizes, refused
mismatched ranks and ranks that die or hang. Every run is a subprocess with a deadline."""
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import rsm
from rsm import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
DEADLINE = 240


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return _mpiexec() is not None


def _have_torch():
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


BACKENDS = [pytest.param("mpi", marks=pytest.mark.skipif(not _have_mpi(), reason="mpi4py/mpiexec not installed")),
            pytest.param("torch", marks=pytest.mark.skipif(not _have_torch(), reason="torch not installed (make test-torch)"))]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(backend, world, scenario, out, *opts, expect_ok=True, deadline=DEADLINE):
    """Run tests/dist_worker.py on `world` ranks; returns (CompletedProcess, [per-rank npz])."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", OPENBLAS_NUM_THREADS="1")
    args = [WORKER, backend, scenario, str(out), *opts]
    if backend == "mpi":
        cmd = [_mpiexec(), "-n", str(world), sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
        env["GLOO_SOCKET_IFNAME"] = "lo"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=deadline)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results = [dict(np.load(f"{out}.rank{r}.npz")) for r in range(world)]
        assert all(int(r["world_size"]) == world for r in results)
        return proc, results
    return proc, None


def assert_same(a, b, keys=None):
    for key in keys or a:
        if key == "world_size":
            continue
        assert np.array_equal(a[key], b[key], equal_nan=True), key


# ---- in-process pieces ----------------------------------------------------------------------

def test_single_process_communicator():
    comm = distributed.Communicator()
    buf = np.arange(5.0)
    comm.allreduce(buf)
    assert np.array_equal(buf, np.arange(5.0))
    assert np.array_equal(comm.allgatherv(np.arange(3)), np.arange(3))
    assert comm.allgather(np.ones(2)).shape == (1, 2)
    distributed.check_config(comm, {"a": 1})
    model = rsm.MLP(2, 8, 1, seed=0, temb_dim=4)
    assert distributed.digest(model.params) == distributed.digest(np.from_dlpack(model.params).copy())
    with pytest.raises(ValueError, match="backend"):
        distributed.init("nccl-ish")
    with pytest.raises(TypeError, match="comm"):
        distributed.resolve(object())
    with pytest.raises(ValueError, match="timeout"):
        distributed.Communicator(timeout=0)


def test_tiled_gradient_is_exact_and_order_free():
    comm = distributed.Communicator()
    rng = np.random.default_rng(0)
    parts = rng.normal(size=(4, 7))
    tg = distributed.TiledGradient(comm, 4, 7, "float64")
    for t in (3, 1, 0, 2):   # the order tiles are computed in does not matter
        tg.add(t, parts[t])
    ref = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    assert np.array_equal(tg.reduce(), ref)


# the data-parallel path at world size 1 vs the plain path: relative to max |param| (measured
# 3e-16 / 9e-16 in float64, 2e-7 / 5e-7 in float32, pretraining / fine-tuning)
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pretrain_world1_matches_plain_within_rounding(dtype):
    """The data-parallel path at world size 1 (tiles) vs the plain one-backward path: the same
    draws, a different summation order of the per-row gradients, so equal up to rounding
    (TOLERANCE) after 6 AdamW steps."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(64, 2)).astype(dtype)
    runs = []
    for comm in (None, distributed.Communicator()):
        model = rsm.MLP(2, 16, 2, seed=1, temb_dim=4, dtype=dtype)
        hist = rsm.pretrain(model, data, rsm.FlowPath(), steps=6, batch_size=16, lr=1e-2, seed=3,
                            progress=False, comm=comm, dp_tiles=4)
        runs.append((np.array(np.from_dlpack(model.params), dtype=np.float64), hist.column("loss")))
    (p0, l0), (p1, l1) = runs
    scale = np.abs(p0).max()
    assert np.abs(p0 - p1).max() <= TOLERANCE[dtype] * scale
    assert np.allclose(l0, l1, rtol=100 * TOLERANCE[dtype], atol=0)
    start = np.from_dlpack(rsm.MLP(2, 16, 2, seed=1, temb_dim=4, dtype=dtype).params)
    assert np.abs(p0 - start).max() > 1e3 * TOLERANCE[dtype] * scale   # it did train


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_finetune_world1_matches_plain_within_rounding(dtype):
    runs = []
    for comm in (None, distributed.Communicator()):
        policy = rsm.MLP(2, 16, 2, seed=1, temb_dim=4, dtype=dtype)
        ref = policy.copy()

        def reward(x, cond):
            return -np.sum((np.from_dlpack(x) - 1.0) ** 2, axis=1)

        kw = {} if comm is None else {"comm": comm, "dp_tiles": 4}
        run = rsm.finetune(policy, ref, reward, "flow-grpo", iterations=3, batch_size=4, group_size=4,
                           seed=5, progress=False, kl_every=0, lr=1e-2, **kw)
        runs.append((np.array(np.from_dlpack(policy.params), dtype=np.float64), run.history))
    (p0, h0), (p1, h1) = runs
    assert np.abs(p0 - p1).max() <= TOLERANCE[dtype] * np.abs(p0).max()
    for key in ("reward_mean", "reward_std", "loss", "kl", "grad_norm"):
        assert np.allclose(h0.column(key), h1.column(key), rtol=1e3 * TOLERANCE[dtype], atol=1e-15), key


def test_dp_arguments_are_checked():
    policy = rsm.MLP(2, 8, 1, seed=0, temb_dim=4, dtype="float64")
    comm = distributed.Communicator()
    reward = lambda x, c: np.zeros(len(np.from_dlpack(x)))  # noqa: E731
    with pytest.raises(ValueError, match="dp_tiles=3 must divide"):
        rsm.Trainer(policy, policy.copy(), reward, "flow-grpo", batch_size=4, comm=comm, dp_tiles=3)
    with pytest.raises(ValueError, match="dp_tiles needs a communicator"):
        rsm.Trainer(policy, policy.copy(), reward, "flow-grpo", batch_size=4, dp_tiles=2)
    with pytest.raises(NotImplementedError, match="data parallelism"):
        rsm.Trainer(policy, policy.copy(), rsm.Reward(lambda x, c: (np.zeros(len(np.from_dlpack(x))),
                                                                    np.zeros(np.from_dlpack(x).shape)),
                                                      differentiable=True),
                    "vgg-flow", batch_size=4, comm=comm)
    with pytest.raises(ValueError, match="dp_tiles=5 must divide"):
        rsm.pretrain(policy, np.zeros((8, 2)), rsm.FlowPath(), steps=1, batch_size=8, comm=comm,
                     dp_tiles=5, progress=False)


# ---- multi-process runs (marked multiprocess: left out of make test-asan) --------------------

@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_pretrain_world_size_invariance(backend, tmp_path):
    _, (ref,) = launch(backend, 1, "pretrain", tmp_path / "w1")
    for world in (2, 4) if backend == "mpi" else (2,):
        _, ranks = launch(backend, world, "pretrain", tmp_path / f"w{world}")
        for r in ranks:   # every rank holds the 1-process parameters and history, bitwise
            assert_same(ref, r)
    # the fast mode (one summed gradient all-reduced): the ranks agree (checked every step in
    # the run), the 1-process result only up to rounding
    _, fast = launch(backend, 2, "pretrain", tmp_path / "fast", "exact=0")
    assert np.array_equal(fast[0]["params"], fast[1]["params"])
    assert np.abs(fast[0]["params"] - ref["params"]).max() <= 1e-12 * np.abs(ref["params"]).max()
    # float32 too
    _, (ref32,) = launch(backend, 1, "pretrain", tmp_path / "f1", "dtype=float32")
    _, ranks = launch(backend, 2, "pretrain", tmp_path / "f2", "dtype=float32")
    assert ranks[0]["params"].dtype == np.float32
    for r in ranks:
        assert_same(ref32, r)


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_pretrain_checkpoint_across_world_sizes(backend, tmp_path):
    common = ("steps=5", "schedule=constant")
    _, (full,) = launch(backend, 1, "pretrain", tmp_path / "full", *common)
    for first, second in ((2, 1), (1, 2)):
        ckpt = tmp_path / f"ck{first}{second}.safetensors"
        launch(backend, first, "pretrain", tmp_path / f"a{first}", "steps=2", "schedule=constant",
               f"checkpoint={ckpt}")
        _, ranks = launch(backend, second, "pretrain", tmp_path / f"b{second}", *common,
                          f"resume={ckpt}")
        for r in ranks:
            assert np.array_equal(r["params"], full["params"])
            assert np.array_equal(r["loss"], full["loss"][2:])


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,worlds,extra", [("flow-grpo", (2,), ()), ("dance-grpo", (2,), ()),
                                                  ("rsm-zo", (2, 4), ("epochs=2",))])
def test_finetune_world_size_invariance(backend, method, worlds, extra, tmp_path):
    _, (ref,) = launch(backend, 1, "finetune", tmp_path / "w1", f"method={method}", *extra)
    assert len(ref["digests"]) == 3 and np.all(np.isfinite(ref["loss"]))
    for world in worlds if backend == "mpi" else (2,):
        _, ranks = launch(backend, world, "finetune", tmp_path / f"w{world}", f"method={method}", *extra)
        for r in ranks:   # parameters after every step (digests), history, final parameters
            assert_same(ref, r)


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_finetune_checkpoint_across_world_sizes(backend, tmp_path):
    _, (full,) = launch(backend, 1, "finetune", tmp_path / "full", "method=rsm-zo", "iterations=3")
    for first, second in ((2, 1), (1, 2)):
        ckpt = tmp_path / f"ck{first}{second}.safetensors"
        launch(backend, first, "finetune", tmp_path / f"a{first}", "method=rsm-zo", "iterations=2",
               f"checkpoint={ckpt}")
        _, ranks = launch(backend, second, "finetune", tmp_path / f"b{second}", "method=rsm-zo",
                          "iterations=3", f"resume={ckpt}")
        for r in ranks:
            assert np.array_equal(r["params"], full["params"])
            assert np.array_equal(r["digests"], full["digests"][2:])
            # the history came through the checkpoint: all three rows, as uninterrupted
            for key in ("reward_mean", "loss", "grad_norm"):
                assert np.array_equal(r[key], full[key]), key


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario,opt,names", [("pretrain", "bad_hidden=1", "num_params"),
                                                ("finetune", "bad_method=1", "method")])
def test_mismatched_ranks_are_refused(backend, scenario, opt, names, tmp_path):
    start = time.monotonic()
    proc, _ = launch(backend, 2, scenario, tmp_path / "bad", opt, "timeout=20", expect_ok=False,
                     deadline=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ranks disagree on" in out and names in out, out[-3000:]
    assert time.monotonic() - start < 120


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_dying_rank_stops_the_others(backend, tmp_path):
    """Rank 1 exits in its second reward call (mid-iteration): rank 0 must not hang."""
    start = time.monotonic()
    proc, _ = launch(backend, 2, "finetune", tmp_path / "die", "die_at=1", "timeout=20",
                     expect_ok=False, deadline=150)
    assert proc.returncode != 0
    assert not os.path.exists(f"{tmp_path / 'die'}.rank0.npz")
    assert time.monotonic() - start < 150


@pytest.mark.multiprocess
@pytest.mark.parametrize("backend", BACKENDS)
def test_hung_rank_times_out(backend, tmp_path):
    """Rank 1 stops answering (sleeps 60 s) while rank 0 waits in an all-reduce with a 3 s
    deadline: rank 0 reports the timeout and the job ends with an error, long before 60 s."""
    start = time.monotonic()
    proc, _ = launch(backend, 2, "hang", tmp_path / "hang", "timeout=3", expect_ok=False, deadline=120)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "timed out" in out or "Timeout" in out or "timeout" in out, out[-3000:]
    assert elapsed < 55, elapsed
