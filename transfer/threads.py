"""How a sparta process shares the CPU: OpenMP's wait policy and torch's thread count.

The policy, and the measurements behind it, are in ``docs/performance.md`` ("Threads"):

- OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning, unless the
  user chose a policy. Spinning threads hold on to a core that another process needs, and a thread
  that waits for a descheduled partner then costs a whole scheduler time slice at every parallel region.
  OpenMP reads the variable once, when torch loads it, so :func:`prefer_passive_wait` only takes effect
  before torch is imported: ``transfer/__init__`` calls it first, before anything imports torch (this
  module never imports torch at import time). The ``sparta`` command, ``python -m transfer.cli``, study
  workers and a script that imports ``transfer`` before ``torch`` all get it; where torch was imported
  first it is left alone. Importing this module changes nothing.
- Thread counts come from the cores this process may run on (:func:`usable_cores`: its affinity mask,
  as set by ``taskset``, cgroup cpusets or Slurm), not from all the cores of the machine.

The ``--threads`` option of the CLIs (``threads_argument``, ``THREADS_HELP``) is in :mod:`transfer.cli`.
"""

from __future__ import annotations

import os
import sys

__all__ = ["WAIT_POLICY_VARIABLE", "prefer_passive_wait", "set_threads", "usable_cores"]

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """How many CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process and its children, unless the user set a policy
    or torch (and with it OpenMP) is already loaded, where it would not take effect. True if set."""
    if WAIT_POLICY_VARIABLE in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY_VARIABLE] = "PASSIVE"
    return True


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads for this process (None: torch's default, one per usable core)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(threads)
