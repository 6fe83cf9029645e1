"""INT8 types chosen for the CPU an artifact will run on (``quantization.isa``).

Why it matters (measured, benchmarks/results/isa_types.md): on x86 without VNNI, ONNX Runtime
computes u8 activations x s8 weights with VPMADDUBSW, whose 16-bit pair sums saturate, so the
same U8S8 artifact that agrees 99.6% with FP32 on a VNNI CPU agrees 99.1% on an AVX2 one.
ONNX Runtime's documented fixes are U8U8 (no saturation) or reduce_range (7-bit weights);
both give identical results on every x86 CPU. NNCF's equivalent is ``overflow_fix``.

The choice here is the *starting* policy; ``mmedge quantize --auto`` measures the others.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any

from mmedge.hardware import PROFILES, IsaProfile, classify, cpu_flags
from mmedge.recipe import QuantizationConfig, Recipe
from mmedge.targets.openvino import settings as openvino_settings


@dataclass(frozen=True)
class Int8Types:
    """What an ONNX Runtime INT8 artifact is quantized with, and why."""

    profile: str  # an ISA profile name, or "unknown"
    detected: bool  # the profile came from this machine (isa: auto)
    activation_type: str
    weight_type: str
    reduce_range: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_profile(isa: str) -> tuple[IsaProfile | None, bool]:
    """(profile, detected): ``auto`` reads this machine; None means unknown."""
    if isa == "auto":
        return classify(cpu_flags(), platform.machine()), True
    return PROFILES[isa], False


def profile_name(isa: str) -> str:
    profile, _ = resolve_profile(isa)
    return profile.name if profile else "unknown"


def _default_types(profile: IsaProfile | None) -> tuple[str, str, bool, str]:
    if profile is None:
        return (
            "uint8",
            "uint8",
            False,
            "CPU features unknown: U8U8, whose results do not depend on the CPU's INT8 kernels",
        )
    if profile.arch == "x86" and not profile.int8_dot:
        return (
            "uint8",
            "uint8",
            False,
            f"{profile.name}: no VNNI, so ONNX Runtime's U8S8 kernels (VPMADDUBSW) can saturate; "
            "U8U8 cannot (ONNX Runtime's quantization guide)",
        )
    if profile.arch == "x86":
        return (
            "uint8",
            "int8",
            False,
            f"{profile.name}: VNNI/AMX kernels accumulate u8 x s8 in 32 bits without saturation; "
            "U8S8 is ONNX Runtime's fastest x86 format",
        )
    return (
        "int8",
        "int8",
        False,
        f"{profile.name}: Arm INT8 kernels take S8S8 natively (symmetric activations)",
    )


def ort_types(cfg: QuantizationConfig) -> Int8Types:
    """The ISA's default types, with whatever the recipe sets explicitly taking precedence."""
    profile, detected = resolve_profile(cfg.isa)
    act, weight, reduce_range, reason = _default_types(profile)
    explicit = {
        k: v
        for k, v in (
            ("activation_type", cfg.activation_type),
            ("weight_type", cfg.weight_type),
            ("reduce_range", cfg.reduce_range),
        )
        if v is not None
    }
    if explicit:
        reason += "; set in the recipe: " + ", ".join(f"{k}={v}" for k, v in explicit.items())
    return Int8Types(
        profile=profile.name if profile else "unknown",
        detected=detected,
        activation_type=cfg.activation_type or act,
        weight_type=cfg.weight_type or weight,
        reduce_range=reduce_range if cfg.reduce_range is None else cfg.reduce_range,
        reason=reason,
    )


def nncf_overflow_fix(recipe: Recipe) -> tuple[str, str]:
    """NNCF's ``overflow_fix`` (7-bit weights against u8 x s8 saturation) for the deploy ISA."""
    chosen = openvino_settings(recipe).nncf.overflow_fix
    profile, _ = resolve_profile(recipe.quantization.isa)
    name = profile.name if profile else "unknown"
    if chosen is not None:
        return chosen, f"{name}: set in the recipe"
    if profile is None:
        return "enable", "CPU features unknown: 7-bit weights, which cannot saturate anywhere"
    if profile.arch == "x86" and not profile.int8_dot:
        return "enable", f"{name}: no VNNI, so every layer gets 7-bit weights (no saturation)"
    return "disable", f"{name}: integer dot-product instructions; full 8-bit weights"


def kernel_mismatch(built_for: str, here: IsaProfile | None) -> str | None:
    """A warning when an INT8 artifact runs on a CPU with other INT8 kernels than it was
    quantized for (its numerics may differ from those measured at build time)."""
    if built_for == "unknown" or built_for not in PROFILES:
        return None
    if here is None:
        return (
            f"this INT8 artifact was quantized for {built_for}; this CPU's features could not be "
            "read, so whether it runs the same INT8 kernels is unknown"
        )
    target = PROFILES[built_for]
    if (target.arch, target.int8_dot) == (here.arch, here.int8_dot):
        return None
    return (
        f"this INT8 artifact was quantized for {built_for} ({target.description}); this CPU is "
        f"{here.name} ({here.description}): it runs other INT8 kernels, so results can differ "
        f"from those measured where it was built. Re-quantize with quantization.isa: {here.name}, "
        "or check it here with `mmedge compare`"
    )


def artifact_isa(manifest: dict[str, Any]) -> str | None:
    """The ISA profile an INT8 CPU artifact was quantized for, from its manifest."""
    if manifest.get("precision") != "int8":
        return None
    build = manifest.get("steps", {}).get("build", {})
    found = build.get("int8_types", {}).get("profile") if isinstance(build, dict) else None
    return str(found) if found else None
