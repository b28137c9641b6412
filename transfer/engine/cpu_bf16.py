"""Whether this CPU computes bf16 natively: the one fact the engine needs to decide whether ``amp="bf16"``
trains under CPU autocast (``epochs.training_precision``).

Native means an instruction set that multiplies bf16 in hardware, which oneDNN uses for bf16 convolutions
and matmuls: AMX-BF16 (Sapphire Rapids and later) or AVX512_BF16 (Cooper Lake, Zen 4 and later). Elsewhere
torch still runs bf16 autocast, but by converting to fp32 and back around every kernel (emulated): slower
than fp32, and no more accurate, so the engine trains in fp32 there.

The features come from torch (``torch.cpu.get_capabilities()``, cpuinfo's view of the CPU, in recent torch)
or, with a torch that lacks it, from ``/proc/cpuinfo``'s flags on Linux, which use the same names. Other systems
with such a torch count as having no native bf16: the safe side, fp32. This lives in the engine, not in
the portable core, because only training decides precision; the core's models never ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CpuBf16", "NATIVE_BF16_FEATURES", "cpu_bf16"]

NATIVE_BF16_FEATURES = ("amx_bf16", "avx512_bf16")  # most capable first; the names torch and Linux give them
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuBf16:
    """What the detection found: the native bf16 feature (``None`` when there is none) and torch's SIMD
    level for this CPU (``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX2``, ``AVX512``)."""

    feature: str | None
    capability: str

    @property
    def native(self) -> bool:
        return self.feature is not None

    @property
    def name(self) -> str:
        """A short name for logs and records: ``amx_bf16``, ``avx512_bf16`` or e.g. ``none (AVX2)``."""
        return self.feature or f"none ({self.capability})"


def cpu_features() -> set[str]:
    """The CPU features (lower-case names) that torch reports as present, else ``/proc/cpuinfo``'s flags;
    empty where neither is available."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return {name for name, value in capabilities().items() if value is True}
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    return set(flags.lower().split())


def cpu_bf16() -> CpuBf16:
    """Whether this CPU computes bf16 natively, and which feature does it."""
    features = cpu_features()
    feature = next((f for f in NATIVE_BF16_FEATURES if f in features), None)
    return CpuBf16(feature, torch.backends.cpu.get_cpu_capability())
