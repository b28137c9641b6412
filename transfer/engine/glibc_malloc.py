"""Keep freed tensor memory inside the process (glibc ``malloc``), so that training does not pay page faults.

glibc hands large freed blocks back to the kernel: blocks above the mmap threshold are unmapped on
``free``, and free memory at the top of the heap is trimmed once it exceeds the trim threshold. Both
thresholds adapt to the program, but a training step allocates and frees feature maps of many sizes
every pass. On a PGD-AT step of a Sparta ResNet-18 (batch 64) glibc's defaults let 72,000 pages a step
go back to the kernel and fault in again at width 16 (about 300 MB of zero-filling), 233,000 at width 32,
6–7% of the step's time, while the same ReLU step faulted none or few (``docs/performance.md``, "What
Sparta costs"). Raising both thresholds keeps those pages in the process for reuse: the memory a process
holds stays at its peak instead of shrinking between steps, as with CUDA's caching allocator.

Only glibc has these knobs (``mallopt``); elsewhere (macOS, Windows, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

# blocks below this size come from the heap and are reused there; larger ones are mapped and unmapped
MMAP_THRESHOLD = 256 << 20
# free memory at the top of the heap goes back to the kernel only above this size
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h parameter numbers
_applied = False


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). True if they are in effect.

    The environment overrides it: with ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` set,
    the user chose, and this leaves malloc alone.
    """
    global _applied
    if _applied:
        return True
    user_set = any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if user_set or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied
