"""What the CPU can do for INT8, read from the machine (never assumed).

INT8 only pays off where the CPU has integer dot-product instructions (x86 VNNI / AMX, ARM
dot-product); without them ONNX Runtime and OpenVINO often run INT8 no faster than FP32. Every
benchmark record carries these flags so a figure is never read without its hardware.
"""

from __future__ import annotations

import contextlib
import platform
from functools import cache
from pathlib import Path

# cpuinfo flag → the name users know it by.
_X86 = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
_ARM = {"asimddp": "NEON dot-product", "i8mm": "I8MM", "sve": "SVE"}
_INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


@cache
def cpu_flags() -> frozenset[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("flags", "Features"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_features() -> list[str]:
    """Human names of the SIMD features that matter for inference, as present on this CPU."""
    flags = cpu_flags()
    return [name for flag, name in {**_X86, **_ARM}.items() if flag in flags]


def has_int8_dot_product() -> bool:
    return bool(_INT8_DOT & cpu_flags())


def cpu_summary() -> dict[str, object]:
    import os

    return {
        "name": cpu_name(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "features": cpu_features(),
        "int8_dot_product": has_int8_dot_product(),
    }
