"""What this machine's CPU can do, read once from the kernel (no torch import)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16 / AMX; Arm's FEAT_BF16


@lru_cache(maxsize=1)
def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bf16 natively; elsewhere bf16 is emulated and slower than fp32."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in BF16_FLAGS for line in text.splitlines()
               if line.lower().startswith(("flags", "features")) for flag in line.split(":", 1)[-1].split())
