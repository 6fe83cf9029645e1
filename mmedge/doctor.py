"""`mmedge doctor`: what this machine has for each backend, and what that means for a user.

Read from the machine (import the packages, /proc/cpuinfo, nvidia-smi), never assumed; the
advice says what a user can act on (which precision pays here, what to install).
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
from importlib import metadata
from typing import Any

# What mmedge itself uses besides the targets' backends (TargetSpec.packages, added below).
_PACKAGES = (
    ("torch", "torch"),
    ("torch_pruning", "pruning"),
    ("PIL", "calib"),
    ("tokenizers", "calib"),
    ("soundfile", "calib"),
    ("matplotlib", "report"),
)


def _package(module: str) -> dict[str, Any]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # a broken native library raises more than ImportError
        return {"installed": False, "error": f"{type(err).__name__}: {err}"[:200]}
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            version = metadata.version(module)
        except metadata.PackageNotFoundError:
            # Importable without a version or metadata: a namespace package, such as the one
            # tensorrt-stubs (type stubs for mypy) leaves, not the library itself.
            return {"installed": False, "error": "importable, but only as an empty namespace"}
    return {"installed": True, "version": str(version)}


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs with compute capability: nvidia-smi, else torch.cuda; [] when none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            found = []
            for line in out.strip().splitlines():
                name, cap, driver = (p.strip() for p in line.split(","))
                found.append({"name": name, "compute_capability": cap, "driver": driver})
            return found
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    try:
        import torch

        if torch.cuda.is_available():
            return [
                {
                    "name": torch.cuda.get_device_name(i),
                    "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                    "driver": "?",
                }
                for i in range(torch.cuda.device_count())
            ]
    except Exception:  # torch missing or a broken CUDA install: no GPU to report
        pass
    return []


def cpu_advice(cpu: dict[str, Any]) -> list[str]:
    features = set(cpu.get("features") or [])
    advice = []
    profile = cpu.get("isa_profile", "unknown")
    if cpu.get("int8_dot_product") is None:
        advice.append(
            "the CPU's features could not be read: `isa: auto` quantizes with types whose results "
            "do not depend on the CPU (U8U8 for ONNX Runtime); name the deploy CPU's profile "
            "(quantization.isa) for faster INT8"
        )
    elif not cpu.get("int8_dot_product"):
        advice.append(
            "this CPU has no integer dot-product instructions (VNNI, AMX or NEON dot-product): "
            "INT8 will shrink the model about 4x but may not speed it up; prefer structured "
            "pruning for speed, and measure INT8 with `mmedge bench` before shipping it"
        )
        if str(profile).startswith("x86"):
            advice.append(
                f"{profile}: ONNX Runtime's u8 x s8 INT8 kernels can saturate here; mmedge "
                "quantizes for this profile with saturation-free types (quantization.isa)"
            )
    elif "AMX-INT8" in features:
        advice.append("AMX-INT8 is present: INT8 (ONNX Runtime, OpenVINO) should pay off most here")
    else:
        advice.append(
            "VNNI is present: INT8 pays off on models large enough that compute dominates "
            "(on sub-millisecond models quantize/dequantize overhead can cancel it)"
        )
    if features & {"AVX-512 BF16", "AMX-BF16"}:
        advice.append(
            "bfloat16 units are present: OpenVINO runs FP32 IRs in bf16 unless the precision "
            "is pinned (mmedge pins it to the artifact's; "
            "targets.openvino.inference_precision: device-default opts in)"
        )
    return advice


def targets() -> dict[str, dict[str, Any]]:
    """Every registered target: installed, version, devices, and whether its artifacts run
    here or only on the device (Target.runtime_missing)."""
    from dataclasses import asdict

    from mmedge.targets import specs

    found: dict[str, dict[str, Any]] = {}
    for name, spec in specs().items():
        target = spec.factory()
        probe = target.probe()
        missing = target.runtime_missing() if probe.installed else None
        found[name] = {
            **asdict(probe),
            "summary": spec.summary,
            "extra": spec.extra,
            "precisions": list(spec.precisions),
            "runs_here": probe.installed and missing is None,
            "runtime_missing": missing,
        }
    return found


def diagnose() -> dict[str, Any]:
    from mmedge.hardware import cpu_summary
    from mmedge.targets import specs

    wanted = [(p, s.extra) for s in specs().values() for p in s.packages] + list(_PACKAGES)
    packages = {module: {**_package(module), "extra": extra} for module, extra in wanted}
    found_targets = targets()
    cpu = cpu_summary()
    found_gpus = gpus()
    advice = cpu_advice(cpu)
    for module, info in packages.items():
        if not info["installed"]:
            advice.append(f'{module} is missing: pip install "mmedge[{info["extra"]}]"')
    for name, info in found_targets.items():
        if info["runtime_missing"]:
            advice.append(f"{name}: {info['runtime_missing']} (mmedge build DIR there)")
    if not found_gpus:
        advice.append("no NVIDIA GPU found: the TensorRT target cannot build or run engines here")
    else:
        old = [g["name"] for g in found_gpus if _cap(g["compute_capability"]) < (8, 0)]
        if old:
            advice.append(
                f"{', '.join(old)}: compute capability below 8.0, no sparse tensor cores "
                "(2:4 sparsity will not speed up)"
            )
    return {
        "targets": found_targets,
        "packages": packages,
        "cpu": cpu,
        "gpus": found_gpus,
        "advice": advice,
    }


def _cap(value: str) -> tuple[int, int]:
    try:
        major, minor = value.split(".")
        return int(major), int(minor)
    except ValueError:
        return (0, 0)
