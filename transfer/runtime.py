"""How a sparta process shares the CPU: OpenMP's wait policy and torch's thread count.

The policy, and the measurements behind it, are in ``docs/performance.md`` ("Threads"):

- OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning, unless the
  user chose a policy. Spinning threads hold on to a core that another process needs, and a thread
  that waits for a descheduled partner then costs a whole scheduler time slice at every parallel region.
  OpenMP reads the variable once, when torch loads it, so importing this module applies the policy and
  ``transfer/__init__`` imports it first, before anything imports torch (it never imports torch itself).
  The ``sparta`` command, ``python -m transfer.cli``, study workers and a script that imports ``transfer``
  before ``torch`` all get it; where torch was imported first it is left alone.
- Thread counts come from the cores this process may run on (:func:`usable_cores`: its affinity mask,
  as set by ``taskset``, cgroup cpusets or Slurm), not from all the cores of the machine.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = [
    "THREADS_HELP",
    "WAIT_POLICY_VARIABLE",
    "prefer_passive_wait",
    "set_threads",
    "threads_argument",
    "usable_cores",
]

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


THREADS_HELP = "torch threads for the work (default: one per core this process may use)"


def threads_argument(text: str) -> int:
    """argparse type of ``--threads``: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, e.g. 1 or 2; got {text!r}")
    return value


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads for this process (None: torch's default, one per usable core)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


prefer_passive_wait()  # at import: transfer/__init__ imports this module before anything imports torch
