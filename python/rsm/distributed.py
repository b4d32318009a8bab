"""Data parallelism on the engines users already run: MPI (mpi4py), torch.distributed (gloo on
the CPU, NCCL on the GPU) or a single process.

    comm = rsm.distributed.init("auto")      # "mpi" | "torch" | "single" | "auto"
    rsm.pretrain(model, data, path, comm=comm)          # or under init(): comm=None picks it up
    rsm.finetune(policy, ref, reward, "flow-grpo", comm=comm)

The communicator moves flat numeric buffers only (the parameters' and gradients' memory, viewed
through the buffer protocol / DLPack, never pickled). Every collective has a deadline: a rank
that stops answering makes the others raise DistributedError (and, under MPI, abort the job)
instead of hanging.

World-size invariance (the exact mode, the default): a batch is cut into `tiles` fixed slices
whose boundaries do not depend on the world size; every rank computes the gradient of each of
its tiles on its own into slot t of a [tiles, P] buffer (zeros elsewhere), the buffer is
all-reduced (a sum with zeros is exact, so its result does not depend on the reduction order),
and every rank adds the tiles up in the order t = 0, 1, ... Every random draw is keyed by
(seed, global row, step), never by rank. So world size 1, 2, 4 give bitwise the same parameters.
exact=False all-reduces one [P] buffer (each rank's tiles summed first): T times less traffic,
results equal only up to float rounding.

The reference is the data-parallel run at world size 1. The plain single-process path (one
backward over the whole batch) sums the rows' gradients in another order, so it differs in the
last bits: within 1e-12 (float64) and 1e-5 (float32) of max |param| after a few steps (measured
3e-16..9e-16 and 2e-7..5e-7; tests/test_distributed.py checks these bounds)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """A collective failed: a rank timed out, died, or the ranks disagree."""


# ---- communicators ---------------------------------------------------------------------------

def _as_array(buf: Any) -> np.ndarray:
    """A writable, contiguous numpy VIEW of buf (numpy array, rsm.Tensor / DLPack, buffer)."""
    if isinstance(buf, np.ndarray):
        arr = buf
    elif hasattr(buf, "__dlpack__"):
        arr = np.from_dlpack(buf)
    else:
        arr = np.frombuffer(buf, dtype=np.uint8)
    if not arr.flags.c_contiguous:
        raise ValueError("rsm.distributed: buffers must be contiguous (a flat parameter or "
                         "gradient view), got a strided array")
    return arr


class Communicator:
    """rank, world_size; allreduce(buf) sums in place; broadcast(buf, root) in place;
    allgather(arr) -> [world_size, *arr.shape]; barrier(). Buffers: numpy arrays or DLPack
    tensors (rsm.Tensor), contiguous, viewed without a copy."""

    backend = "single"
    rank = 0
    world_size = 1

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"rsm.distributed: timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = float(timeout)

    def allreduce(self, buf: Any) -> None:
        _as_array(buf)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        _as_array(buf)

    def allgather(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)[None].copy()

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass

    # -- helpers built on the primitives --
    def allgatherv(self, arr: Any) -> np.ndarray:
        """Concatenation over the ranks, in rank order, of 1-d (or [n, ...]) arrays whose first
        dimension may differ between ranks."""
        arr = np.ascontiguousarray(arr)
        counts = self.allgather(np.array([arr.shape[0]], dtype=np.int64))[:, 0]
        width = int(counts.max()) if counts.size else 0
        padded = np.zeros((width,) + arr.shape[1:], dtype=arr.dtype)
        padded[: arr.shape[0]] = arr
        everything = self.allgather(padded)
        return np.concatenate([everything[r, : counts[r]] for r in range(self.world_size)])

    def __repr__(self) -> str:
        return f"rsm.distributed.{type(self).__name__}(rank={self.rank}, world_size={self.world_size})"


SingleProcess = Communicator


def _wait(request: Any, what: str, comm: "MPICommunicator") -> None:
    """Poll an MPI request until done or the deadline; a timeout aborts the whole job (the
    other ranks may be blocked in the same collective and cannot be released otherwise)."""
    deadline = time.monotonic() + comm.timeout
    spins = 0
    while not request.Test():
        spins += 1
        if spins > 200:
            time.sleep(min(1e-3, 1e-6 * spins))
        if time.monotonic() > deadline:
            msg = (f"rsm.distributed: {what} on rank {comm.rank} of {comm.world_size} timed out "
                   f"after {comm.timeout:g} s: another rank died or stopped answering")
            print(msg, file=sys.stderr, flush=True)
            comm.abort(msg)


class MPICommunicator(Communicator):
    """MPI through mpi4py (MPICH / Open MPI from PyPI, or a system MPI). Buffers are handed to MPI
    through the buffer protocol (zero-copy). An exception that leaves a rank uncaught aborts the
    job (MPI_Abort), so the other ranks exit with an error instead of waiting forever."""

    backend = "mpi"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, comm: Any = None) -> None:
        super().__init__(timeout)
        try:
            from mpi4py import MPI
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("rsm.distributed.init('mpi') needs mpi4py and an MPI "
                              "(pip install mpi4py mpich)") from e
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        if self.world_size > 1:
            previous = sys.excepthook

            def hook(kind, value, tb):   # pragma: no cover - runs at a rank's death
                previous(kind, value, tb)
                sys.stderr.flush()
                self.comm.Abort(1)

            sys.excepthook = hook

    def abort(self, msg: str) -> None:  # pragma: no cover - ends the process
        self.comm.Abort(1)
        raise DistributedError(msg)

    def allreduce(self, buf: Any) -> None:
        arr = _as_array(buf)
        if self.world_size > 1:
            _wait(self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM), "allreduce", self)

    def broadcast(self, buf: Any, root: int = 0) -> None:
        arr = _as_array(buf)
        if self.world_size > 1:
            _wait(self.comm.Ibcast(arr, root=root), "broadcast", self)

    def allgather(self, arr: Any) -> np.ndarray:
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.world_size,) + arr.shape, dtype=arr.dtype)
        if self.world_size > 1:
            _wait(self.comm.Iallgather(arr, out), "allgather", self)
        else:
            out[0] = arr
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            _wait(self.comm.Ibarrier(), "barrier", self)


class TorchCommunicator(Communicator):
    """torch.distributed: an existing process group, or one made from the torchrun environment
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) with gloo on the CPU, nccl on the GPU. numpy /
    rsm CPU buffers cross as torch.from_numpy views (zero-copy); GPU tensors (DLPack) are passed
    to torch.from_dlpack. The process group's timeout bounds every collective."""

    backend = "torch"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, torch_backend: str | None = None) -> None:
        super().__init__(timeout)
        try:
            import torch
            import torch.distributed as dist
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("rsm.distributed.init('torch') needs PyTorch (make test-torch "
                              "installs it in .venv-torch)") from e
        import datetime

        self.torch, self.dist = torch, dist
        if not dist.is_initialized():
            if torch_backend is None:
                torch_backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(torch_backend, timeout=datetime.timedelta(seconds=self.timeout))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.torch_backend = dist.get_backend()

    def _tensor(self, buf: Any):
        if isinstance(buf, self.torch.Tensor):
            return buf
        if hasattr(buf, "__dlpack_device__") and buf.__dlpack_device__()[0] != 1:   # not the CPU
            return self.torch.from_dlpack(buf)
        return self.torch.from_numpy(_as_array(buf))

    def _call(self, what: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as e:
            raise DistributedError(f"rsm.distributed: {what} on rank {self.rank} of "
                                   f"{self.world_size} failed ({e}); another rank died or timed out") from e

    def allreduce(self, buf: Any) -> None:
        if self.world_size > 1:
            self._call("allreduce", self.dist.all_reduce, self._tensor(buf))

    def broadcast(self, buf: Any, root: int = 0) -> None:
        if self.world_size > 1:
            self._call("broadcast", self.dist.broadcast, self._tensor(buf), src=root)

    def allgather(self, arr: Any) -> np.ndarray:
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.world_size,) + arr.shape, dtype=arr.dtype)
        if self.world_size == 1:
            out[0] = arr
            return out
        parts = [self.torch.from_numpy(out[r]) for r in range(self.world_size)]
        self._call("allgather", self.dist.all_gather, parts, self.torch.from_numpy(arr.copy()))
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            self._call("barrier", self.dist.barrier)

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


# ---- the process-wide communicator -----------------------------------------------------------

_current: Communicator | None = None

_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def init(backend: str = "auto", *, timeout: float = DEFAULT_TIMEOUT, **kwargs: Any) -> Communicator:
    """Make the process-wide communicator (returned, and used by pretrain / finetune when they get
    comm=None). backend: "mpi" (mpiexec), "torch" (torchrun or an initialised process group),
    "single" or "auto": torch when a process group exists or torchrun's RANK/WORLD_SIZE are set,
    MPI when launched by mpiexec, else a single process. timeout: seconds any collective may
    wait for the other ranks."""
    global _current
    if backend == "auto":
        backend = _detect()
    if backend == "mpi":
        comm = MPICommunicator(timeout, **kwargs)
    elif backend == "torch":
        comm = TorchCommunicator(timeout, **kwargs)
    elif backend == "single":
        comm = Communicator(timeout)
    else:
        raise ValueError(f"rsm.distributed.init(): backend must be 'mpi', 'torch', 'single' or "
                         f"'auto', got {backend!r}")
    check_config(comm, {"rsm_distributed": 1, "backend": comm.backend})
    _current = comm
    return comm


def _detect() -> str:
    if "torch.distributed" in sys.modules and sys.modules["torch.distributed"].is_initialized():
        return "torch"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        return "torch"
    if any(k in os.environ for k in _MPI_ENV):
        return "mpi"
    return "single"


def current() -> Communicator | None:
    """The communicator made by init(), or None."""
    return _current


def resolve(comm: Any) -> Communicator | None:
    """What a training entry point runs under: the given communicator, else the initialised one
    when it has more than one rank, else None (plain single-process code)."""
    if comm is None:
        return _current if _current is not None and _current.world_size > 1 else None
    if not isinstance(comm, Communicator):
        raise TypeError(f"comm must be an rsm.distributed communicator (rsm.distributed.init()), "
                        f"got {type(comm).__name__}")
    return comm


# ---- agreement between ranks -----------------------------------------------------------------

_CONFIG_BYTES = 4096


def check_config(comm: Communicator, config: dict) -> None:
    """All-gather `config` (a JSON-able dict: model size, dtype, method, ...) and raise
    DistributedError on every rank when the ranks disagree, naming the keys and values."""
    text = json.dumps(config, sort_keys=True, default=str).encode()
    if len(text) > _CONFIG_BYTES:
        raise ValueError("check_config(): the configuration is too long to compare")
    buf = np.zeros(_CONFIG_BYTES + 8, dtype=np.uint8)
    buf[:8] = np.frombuffer(np.int64(len(text)).tobytes(), dtype=np.uint8)
    buf[8:8 + len(text)] = np.frombuffer(text, dtype=np.uint8)
    everything = comm.allgather(buf)
    configs = []
    for r in range(comm.world_size):
        n = int(np.frombuffer(everything[r, :8].tobytes(), dtype=np.int64)[0])
        configs.append(json.loads(everything[r, 8:8 + n].tobytes().decode()))
    keys = sorted(set().union(*configs))
    bad = [k for k in keys if any(c.get(k, "<missing>") != configs[0].get(k, "<missing>") for c in configs)]
    if bad:
        detail = "; ".join(f"{k}: " + ", ".join(f"rank {r}={c.get(k, '<missing>')!r}"
                                                for r, c in enumerate(configs)) for k in bad)
        raise DistributedError(f"rsm.distributed: the ranks disagree on {', '.join(bad)} ({detail})")


def digest(buf: Any) -> int:
    """A 63-bit hash of a buffer's bytes (for checking that ranks hold the same parameters)."""
    arr = _as_array(buf)
    h = hashlib.blake2b(memoryview(arr).cast("B"), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def check_same(comm: Communicator, buf: Any, what: str = "parameters") -> None:
    """Raise DistributedError when `buf` differs between ranks (all-gather of a digest)."""
    if comm.world_size == 1:
        return
    hashes = comm.allgather(np.array([digest(buf)], dtype=np.int64))[:, 0]
    if np.any(hashes != hashes[0]):
        raise DistributedError(f"rsm.distributed: the {what} differ between ranks "
                               f"(digests {[hex(int(h)) for h in hashes]})")


# ---- tiles: the exact gradient reduction -----------------------------------------------------

def tile_range(num_tiles: int, rank: int, world_size: int) -> range:
    """The tiles rank `rank` owns: a contiguous block, [r T / W, (r + 1) T / W)."""
    return range(rank * num_tiles // world_size, (rank + 1) * num_tiles // world_size)


class TiledGradient:
    """The [tiles, P] gradient buffer of the exact scheme (module docstring). slot(t) is the
    row a rank writes tile t's gradient into; reduce() returns the global gradient [P], the same
    bits on every rank and for every world size. exact=False keeps one [P] buffer: each rank adds
    its tiles and the sum is all-reduced (faster, equal only up to rounding)."""

    def __init__(self, comm: Communicator, num_tiles: int, num_params: int, dtype: Any,
                 exact: bool = True) -> None:
        self.comm, self.num_tiles, self.exact = comm, int(num_tiles), bool(exact)
        self.mine = tile_range(self.num_tiles, comm.rank, comm.world_size)
        self.buf = np.zeros((self.num_tiles if exact else 1, num_params), dtype=dtype)

    def clear(self) -> None:
        self.buf[...] = 0

    def add(self, t: int, grad: Any) -> None:
        g = _as_array(grad)
        if self.exact:
            self.buf[t] = g
        else:
            self.buf[0] += g

    def reduce(self) -> np.ndarray:
        self.comm.allreduce(self.buf)
        total = self.buf[0].copy()
        for t in range(1, self.buf.shape[0]):
            total += self.buf[t]
        return total


def reduce_scalars(comm: Communicator, values: Any) -> np.ndarray:
    """Per-tile float64 values [T] (zeros where another rank owns the tile) all-reduced, so
    every rank sees every tile's value, exactly."""
    arr = np.ascontiguousarray(values, dtype=np.float64).copy()
    comm.allreduce(arr)
    return arr


def check_tiles(tiles: Any, rows: int, func: str, what: str) -> int:
    """Validate a tile count: a positive int dividing `rows` (the batch rows or groups)."""
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or tiles < 1:
        raise ValueError(f"{func}(): dp_tiles={tiles!r} must be a positive int")
    if rows % tiles:
        raise ValueError(f"{func}(): dp_tiles={tiles} must divide the {what} ({rows})")
    return int(tiles)


# ---- data-parallel pretraining ---------------------------------------------------------------

def pretrain_loop(comm: Communicator, model: Any, optimizer: Any, path: Any, data: Any,
                  cond: Any, *, batch_size: int, t_min: float, t_max: float, lr: float,
                  warmup_steps: int, seed: int, first: int, steps: int, decay: int,
                  min_lr_ratio: float, cond_dropout: float, null_cond: Any, tiles: int,
                  exact: bool, verify_every: int, schedule: Callable[[int], float],
                  on_step: Callable[[int, float, float, float], None]) -> None:
    """Steps [first, steps) of rsm.pretrain, data-parallel: tile t = batch rows
    [t B / T, (t + 1) B / T); each rank computes its tiles' gradients (the C slice gradient, which
    draws exactly the rows' batch indices, times and noise of the whole batch), the tiles are
    reduced (TiledGradient), then every rank takes the same AdamW step. on_step(step, loss,
    grad_norm, lr) after each step; verify_every = k > 0 checks every k steps that all ranks hold
    the same parameters; schedule(step) is the step's learning rate."""
    from . import _C

    check_config(comm, {"what": "pretrain", "model_class": type(model).__name__,
                        "model_config": model.config, "num_params": model.num_params,
                        "dtype": model.dtype, "data_shape": list(np.shape(data)),
                        "batch_size": batch_size, "seed": seed, "steps": steps, "first": first,
                        "lr": lr, "dp_tiles": tiles, "dp_exact": exact,
                        "optimizer": optimizer.config})
    check_same(comm, model.params, "initial parameters")
    per_tile = batch_size // tiles
    grads = TiledGradient(comm, tiles, model.num_params, model.dtype, exact)
    for k in range(first, steps):
        grads.clear()
        losses = np.zeros(tiles)
        for t in grads.mine:
            loss, g = _C.pretrain_steps(model._core, optimizer._core, path._core, data, cond,
                                        batch_size, t_min, t_max, lr, int(warmup_steps),
                                        int(seed), k, 1, int(decay), min_lr_ratio, cond_dropout,
                                        null_cond, grad_rows=(t * per_tile, (t + 1) * per_tile))
            grads.add(t, g)
            losses[t] = loss
        total = grads.reduce()
        losses = reduce_scalars(comm, losses)
        step_lr = schedule(k)
        norm = optimizer.step(total, lr=step_lr)
        if verify_every and (k + 1) % verify_every == 0:
            check_same(comm, model.params, f"parameters after step {k}")
        loss = 0.0
        for value in losses:   # fixed order: the same bits for every world size
            loss += float(value)
        on_step(k, loss, float(norm), step_lr)


def save_checkpoint(comm: Communicator | None, save: Callable[[], None]) -> None:
    """Rank 0 writes (the writer is atomic: a temporary file renamed), the others wait for it."""
    if comm is None or comm.rank == 0:
        save()
    if comm is not None:
        comm.barrier()
