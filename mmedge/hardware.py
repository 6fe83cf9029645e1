"""What the CPU can do for INT8, read from the machine (never assumed), and ISA profiles.

INT8 only pays off where the CPU has integer dot-product instructions (x86 VNNI / AMX, ARM
dot-product); without them ONNX Runtime and OpenVINO often run INT8 no faster than FP32, and
on x86 their u8 x s8 kernels (VPMADDUBSW) can saturate 16-bit sums, so the *numerics* of one
INT8 artifact depend on the CPU that runs it. Every benchmark record carries these flags so a
figure is never read without its hardware.

Feature detection is archspec's (Spack's CPU library): /proc/cpuinfo on Linux (x86 and Arm),
sysctl on macOS, the CPUID instruction on Windows. Where it cannot tell (Apple or Windows on
Arm without a known model, an unreadable /proc), mmedge says "unknown", never "no".
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache

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


@dataclass(frozen=True)
class IsaProfile:
    """A class of CPUs whose INT8 kernels behave alike (same instructions, same numerics)."""

    name: str
    arch: str  # "x86" | "arm"
    int8_dot: bool  # integer dot-product instructions (VNNI, AMX, NEON dot-product, I8MM)
    requires: frozenset[str]  # cpuinfo flags that define it
    description: str


# Ordered from the most capable to the least within each architecture: the first profile whose
# flags a CPU has is its profile.
PROFILES: dict[str, IsaProfile] = {
    p.name: p
    for p in (
        IsaProfile(
            "x86-amx", "x86", True, frozenset({"amx_int8"}), "AMX-INT8 (Sapphire Rapids and later)"
        ),
        IsaProfile(
            "x86-vnni",
            "x86",
            True,
            frozenset({"avx2"}),  # plus avx512_vnni or avx_vnni, checked in classify()
            "AVX-512 VNNI or AVX-VNNI (Cascade Lake, Ice Lake, Alder Lake, Zen 4 and later)",
        ),
        IsaProfile(
            "x86-avx512",
            "x86",
            False,
            frozenset({"avx512f"}),
            "AVX-512 without VNNI (Skylake-SP)",
        ),
        IsaProfile(
            "x86-avx2",
            "x86",
            False,
            frozenset({"avx2"}),
            "AVX2 without VNNI (Haswell to Skylake client, Zen 1 to Zen 3)",
        ),
        IsaProfile(
            "arm-i8mm", "arm", True, frozenset({"i8mm"}), "Armv8.6 I8MM (Neoverse V1/N2, Apple M2+)"
        ),
        IsaProfile(
            "arm-dotprod",
            "arm",
            True,
            frozenset({"asimddp"}),
            "NEON dot-product (Cortex-A55/A76+, Jetson Orin, Apple M1)",
        ),
        IsaProfile("arm-neon", "arm", False, frozenset(), "NEON only (Cortex-A53/A72, Pi 4)"),
    )
}


def classify(flags: frozenset[str] | None, machine: str) -> IsaProfile | None:
    """The profile of a CPU with these flags; None when the flags are unknown."""
    if flags is None:
        return None
    arch = _arch(machine)
    if arch == "x86":
        if "amx_int8" in flags:
            return PROFILES["x86-amx"]
        if flags & {"avx512_vnni", "avx_vnni"}:
            return PROFILES["x86-vnni"]
        if "avx512f" in flags:
            return PROFILES["x86-avx512"]
        return PROFILES["x86-avx2"] if "avx2" in flags else None
    if arch == "arm":
        if "i8mm" in flags:
            return PROFILES["arm-i8mm"]
        return PROFILES["arm-dotprod" if "asimddp" in flags else "arm-neon"]
    return None


def _arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "x64", "i686", "i386"):
        return "x86"
    if machine in ("aarch64", "arm64", "armv8l", "armv8b"):
        return "arm"
    return machine


@cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (Linux spelling), or None when they cannot be read."""
    try:
        from archspec.cpu import host
        from archspec.cpu.detect import detected_info
    except ImportError:
        return None
    try:
        found = frozenset(detected_info().features)
        if not found:
            # Apple silicon reports a model name, not flags: the named model's known features.
            named = host()
            generic = named.name in ("aarch64", "x86_64", "arm64", "ppc64le", "riscv64")
            found = frozenset() if generic else frozenset(named.features)
    except Exception:  # archspec warns and falls back; anything else means "cannot tell"
        return None
    return found or None


def cpu_name() -> str:
    try:
        from archspec.cpu.detect import brand_string

        name = brand_string()
    except Exception:
        name = None
    return name or platform.processor() or "unknown"


def host_profile() -> IsaProfile | None:
    return classify(cpu_flags(), platform.machine())


def cpu_features() -> list[str]:
    """Human names of the SIMD features that matter for inference, as present on this CPU."""
    flags = cpu_flags() or frozenset()
    return [name for flag, name in {**_X86, **_ARM}.items() if flag in flags]


def has_int8_dot_product() -> bool | None:
    """None: the CPU's features could not be read."""
    flags = cpu_flags()
    return None if flags is None else bool(_INT8_DOT & flags)


def cpu_summary() -> dict[str, object]:
    profile = host_profile()
    return {
        "name": cpu_name(),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "features": cpu_features(),  # empty when unknown: see isa_profile
        "int8_dot_product": has_int8_dot_product(),
        "isa_profile": profile.name if profile else "unknown",
    }
