"""Reward models served by a pool of Ray actors (rsm.rewards.RayPool).

    pool = rsm.rewards.RayPool(make_scorer, num_workers=4, resources={"num_gpus": 1})
    rsm.finetune(policy, ref, pool, "flow-grpo")

`factory()` runs once inside every actor and returns the reward callable fn(x0, cond) (x0 an
rsm.Tensor [n, D] as in-process; rewards [n], or (rewards, grad) for differentiable=True). Each
call splits its batch into contiguous chunks, one per actor, and puts the results back in the
original row order. A chunk whose actor dies or raises is resubmitted to a fresh actor (up to
`retries` times), so no row is lost or scored twice in the result; when it still fails the call
raises RewardError naming the reward, and the trainer's state is untouched (the reward runs
before any update). Ray itself: a running cluster (address="ray://..." or "auto"), or a local
one started with ray.init() when none is running."""
from __future__ import annotations

import traceback
from typing import Any, Callable

import numpy as np

from ._reward import Reward, RewardError


class _RewardActor:
    """The actor: builds the reward once; score() evaluates a chunk."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.error = None
        try:
            self.fn = factory()
            if not callable(self.fn):
                raise TypeError(f"factory() must return a callable reward, got {type(self.fn).__name__}")
        except Exception:  # noqa: BLE001 - reported by ready()
            self.error = traceback.format_exc()

    def ready(self) -> str | None:
        return self.error

    def score(self, x: np.ndarray, cond: Any) -> Any:
        import os

        from ._C import from_dlpack

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        out = self.fn(from_dlpack(np.ascontiguousarray(x)), cond)
        if isinstance(out, tuple):
            return tuple(_numpy(v) for v in out)
        return _numpy(out)


def _numpy(value: Any) -> Any:
    if hasattr(value, "__dlpack__") and not isinstance(value, np.ndarray):
        try:
            return np.array(np.from_dlpack(value))
        except (TypeError, BufferError, RuntimeError):
            pass
    if hasattr(value, "cpu") and hasattr(value, "numpy"):   # a torch tensor on a device
        return value.detach().cpu().numpy()
    return np.asarray(value)


class RayPool(Reward):
    """A reward evaluated by `num_workers` Ray actors (see the module docstring).
    resources: Ray actor options, e.g. {"num_cpus": 1, "num_gpus": 0.5, "memory": 2e9} or custom
    resources {"scorer": 1}; timeout: seconds a call may wait for its chunks; retries: fresh
    actors per failing chunk and call; address: the Ray cluster to join when Ray is not yet
    initialised (None: a local one)."""

    def __init__(self, factory: Callable[[], Any], num_workers: int = 2, *,
                 resources: dict | None = None, differentiable: bool = False,
                 name: str | None = None, retries: int = 2, timeout: float = 600.0,
                 nonfinite: str = "raise", address: str | None = None) -> None:
        if not callable(factory):
            raise TypeError(f"RayPool(): factory must be callable (it builds the reward inside each "
                            f"actor), got {type(factory).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RayPool(): num_workers={num_workers!r} must be a positive int")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"RayPool(): retries={retries!r} must be a non-negative int")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"RayPool(): timeout={timeout!r} must be > 0 seconds")
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("RayPool needs Ray (pip install ray)") from e
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        options = dict(resources or {"num_cpus": 1})
        known = {k: options.pop(k) for k in ("num_cpus", "num_gpus", "memory") if k in options}
        self._actor_class = ray.remote(_RewardActor).options(**known, resources=options or None,
                                                             max_restarts=0)
        self._factory, self.retries, self.timeout = factory, retries, float(timeout)
        super().__init__(self._score, differentiable, nonfinite=nonfinite,
                         name=name or getattr(factory, "__name__", type(factory).__name__))
        self.restarts = 0
        self._actors: list = []
        try:
            self._actors = [self._actor_class.remote(factory) for _ in range(num_workers)]
            self._check_ready(self._actors)
        except BaseException:
            self.close()
            raise

    def _check_ready(self, actors: list) -> None:
        try:
            errors = self._ray.get([a.ready.remote() for a in actors], timeout=self.timeout)
        except self._ray.exceptions.RayError as e:   # e.g. the factory could not be unpickled
            raise RewardError(f"reward {self.name!r}: a Ray worker could not build it: {e}") from e
        for error in errors:
            if error is not None:
                raise RewardError(f"reward {self.name!r}: its factory raised inside a Ray worker:\n{error}")

    def _replace(self, i: int) -> None:
        try:
            self._ray.kill(self._actors[i], no_restart=True)
        except Exception:  # noqa: BLE001 - it is dead already
            pass
        self._actors[i] = self._actor_class.remote(self._factory)
        self._check_ready([self._actors[i]])
        self.restarts += 1

    @property
    def num_workers(self) -> int:
        return len(self._actors)

    def _score(self, x0: Any, cond: Any) -> Any:
        ray = self._ray
        x = np.ascontiguousarray(np.from_dlpack(x0) if hasattr(x0, "__dlpack__") else np.asarray(x0))
        bounds = np.linspace(0, x.shape[0], min(self.num_workers, x.shape[0]) + 1).astype(int)
        chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

        def submit(i: int):
            a, b = chunks[i]
            c = None if cond is None else np.ascontiguousarray(np.asarray(cond)[a:b])
            return self._actors[i].score.remote(x[a:b], c)

        pending = {submit(i): i for i in range(len(chunks))}
        results: list = [None] * len(chunks)
        attempts = [0] * len(chunks)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=self.timeout)
            if not done:
                raise RewardError(f"reward {self.name!r}: the Ray workers gave no result within "
                                  f"{self.timeout:g} s")
            ref = done[0]
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayError as e:
                attempts[i] += 1
                if attempts[i] > self.retries:
                    a, b = chunks[i]
                    raise RewardError(f"reward {self.name!r} failed on rows [{a}, {b}) after "
                                      f"{self.retries} retries on fresh Ray workers: {e}") from e
                self._replace(i)   # a dead or failing actor: a fresh one scores the same rows
                pending[submit(i)] = i
        if self.differentiable:
            if not all(isinstance(r, tuple) and len(r) == 2 for r in results):
                raise RewardError(f"reward {self.name!r} is differentiable and must return (rewards, grad)")
            return (np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))
        return np.concatenate([np.asarray(r).reshape(-1) for r in results])

    def close(self) -> None:
        """Stop the actors (the Ray cluster itself stays)."""
        for actor in self._actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._actors = []

    def __enter__(self) -> "RayPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
