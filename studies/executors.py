"""Executors: where study jobs run. One registry, one factory (``create_executor``), in timm's shape.

An executor only *runs* a function; the runner decides what is ready (dependency order) and how many
jobs to hand over at once (``slots``). Every ``submit`` returns a ``concurrent.futures.Future``, so
the runner waits on local, process and Ray jobs alike.

- ``local``: in this process, one job at a time.
- ``process``: a pool of ``workers`` spawned processes; with several GPUs each worker sees one
  (``CUDA_VISIBLE_DEVICES``), and CPU threads are shared out between workers.
- ``ray``: tasks on an existing Ray cluster (``address``), or a local Ray instance when no address is
  given; each task asks for ``num_gpus`` (1 where the cluster has GPUs) and ``num_cpus``. Ray is the
  scheduler; the study directory must be on storage every node can reach.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from transfer.registry import NameRegistry
from transfer.threads import set_threads, usable_cores

__all__ = [
    "START_FAILURE_HINT",
    "Executor",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "create_executor",
    "list_executors",
    "register_executor",
]

_REGISTRY: NameRegistry[type[Executor]] = NameRegistry("executor")
# What a pool whose workers all died while starting most likely means (a worker imports the main script again
# before it takes a job: multiprocessing's spawn); the worker's own error is on stderr above.
START_FAILURE_HINT = (
    "the worker processes died while starting, before any of them ran a job (their error is printed above). A "
    'script that calls run_study(..., executor="process") must call it under `if __name__ == "__main__":`: '
    "every worker imports the script again (multiprocessing's spawn)"
)


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator adding an executor to the registry under ``name``."""

    return _REGISTRY.register(name)


def list_executors() -> list[str]:
    return _REGISTRY.names()


def create_executor(name: str, **config: Any) -> Executor:
    """Build executor ``name`` with its options (``process``: ``workers``; ``ray``: ``address``, …)."""
    cls = _REGISTRY.get(name)
    try:
        return cls(**config)
    except TypeError as exc:
        raise ValueError(f"executor {name!r} does not take these options {sorted(config)}: {exc}") from None


class Executor(ABC):
    """Runs functions; ``slots`` is how many jobs it takes at once (None: as many as are ready)."""

    registry_name = "executor"
    slots: int | None = 1

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        """Start ``fn(*args)`` and return its future."""

    def describe(self) -> str:
        return self.registry_name

    def explain(self, exc: BaseException) -> str:
        """An exception of :meth:`submit` or of a job's future in words: what went wrong, and what it means
        where this executor can tell more than the exception (a process pool that never started)."""
        return f"{type(exc).__name__}: {exc}"

    def shutdown(self, cancel: bool = False) -> None:  # noqa: B027 - a no-op unless the executor has workers
        """Release workers; ``cancel`` drops jobs not yet started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.shutdown(cancel=exc_type is not None)


@register_executor("local")
class LocalExecutor(Executor):
    """Sequential, in this process: the job runs inside ``submit``.

    ``threads``: torch threads for the jobs; None keeps torch's default, one per core this process may
    run on (its affinity mask, so ``taskset`` and cpusets are honoured) or ``OMP_NUM_THREADS``.
    """

    slots = 1

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        set_threads(self.threads)
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future


def _visible_gpus() -> list[str]:
    """GPU ids this process may use (honouring an existing ``CUDA_VISIBLE_DEVICES``)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in (s.strip() for s in env.split(",")) if g and g != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable torch/CUDA here: CPU workers
        return []


def _init_worker(slots: Any, threads: int, started: Any = None) -> None:
    """Pool initializer: take one GPU (if any) before CUDA starts, and a fair share of CPU threads; then say
    that a worker got this far (``started``, an event: a pool that breaks before it is set never started).

    CUDA starts with a worker's first job, so the GPU choice takes effect then; torch itself is already
    loaded here, so the thread count is set on it directly.
    """
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for the worker's own child processes
    set_threads(threads)  # unpickling this initializer imported transfer, and so torch, already
    if started is not None:
        started.set()


@register_executor("process")
class ProcessExecutor(Executor):
    """``workers`` spawned processes; one GPU per worker where several GPUs exist."""

    def __init__(self, workers: int = 2, gpus: list[str] | None = None, threads: int | None = None) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"--workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.slots = workers
        self.gpus = _visible_gpus() if gpus is None else list(gpus)
        ctx = mp.get_context("spawn")  # fork after torch/OpenMP initialised is unsafe
        queue = ctx.Queue()
        for i in range(workers):
            queue.put(self.gpus[i % len(self.gpus)] if self.gpus else None)
        threads = threads or max(1, usable_cores() // workers)  # CPU threads shared out between workers
        self._started = ctx.Event()
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(queue, threads, self._started)
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        return self._pool.submit(fn, *args)

    def describe(self) -> str:
        gpus = f", GPUs {','.join(self.gpus)}" if self.gpus else ", CPU"
        return f"process ({self.workers} workers{gpus})"

    def explain(self, exc: BaseException) -> str:
        text = super().explain(exc)
        if isinstance(exc, BrokenProcessPool) and not self._started.is_set():
            return f"{text.rstrip('.')}; {START_FAILURE_HINT}"
        return text

    def shutdown(self, cancel: bool = False) -> None:  # noqa: B027 - a no-op unless the executor has workers
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (``ray.init`` would retry for minutes)."""
    if not address or address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConnectionError(f"{address!r} is not HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port}: {exc}") from None


@register_executor("ray")
class RayExecutor(Executor):
    """Ray tasks on the user's cluster. ``address``: ``ray.init(address=...)``; None starts a local Ray.

    ``num_gpus`` per job defaults to 1 when the cluster has GPUs, else 0; ``init_kwargs`` go to
    ``ray.init`` (e.g. ``num_cpus`` for a local instance, ``runtime_env``).
    """

    slots = None

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                "the ray executor needs Ray: pip install 'sparta-transfer[ray]' (or 'ray[default]')"
            ) from None
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs = {"ignore_reinit_error": True, "log_to_driver": False, **(init_kwargs or {})}
            try:
                _check_reachable(address)
                ray.init(address=address, **kwargs)
            except ConnectionError as exc:
                raise ValueError(
                    f"cannot reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                    "and pass its address (e.g. --address 127.0.0.1:6379), or omit --address for a local Ray"
                ) from None
            self._owns = True
        self.address = address
        if num_gpus is None:
            num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._remote: dict[Callable[..., Any], Any] = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(fn)
            self._remote[fn] = remote
        return remote.remote(*args).future()

    def describe(self) -> str:
        where = self.address or "local Ray"
        return f"ray ({where}, {self.num_cpus} CPU / {self.num_gpus} GPU per job)"

    def shutdown(self, cancel: bool = False) -> None:  # noqa: B027 - a no-op unless the executor has workers
        if self._owns:
            self._ray.shutdown()
