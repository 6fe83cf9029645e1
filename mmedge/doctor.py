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

_PACKAGES = (
    ("onnxruntime", "onnxruntime"),
    ("openvino", "openvino"),
    ("nncf", "openvino"),
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
            version = "?"
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


def diagnose() -> dict[str, Any]:
    from mmedge.hardware import cpu_summary
    from mmedge.targets.tensorrt.engine import tensorrt_version

    packages = {module: {**_package(module), "extra": extra} for module, extra in _PACKAGES}
    if packages["onnxruntime"]["installed"]:
        import onnxruntime as ort

        packages["onnxruntime"]["providers"] = ort.get_available_providers()
    if packages["openvino"]["installed"]:
        import openvino as ov

        packages["openvino"]["devices"] = list(ov.Core().available_devices)
    trt = tensorrt_version()
    cpu = cpu_summary()
    found_gpus = gpus()
    advice = cpu_advice(cpu)
    for module, info in packages.items():
        if not info["installed"]:
            advice.append(f'{module} is missing: pip install "mmedge[{info["extra"]}]"')
    if trt is None:
        advice.append(
            "TensorRT is not installed: `export --target tensorrt` makes on-device bundles here; "
            "build and bench engines where TensorRT and an NVIDIA GPU are (mmedge build DIR)"
        )
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
        "packages": packages,
        "tensorrt": {
            "version": trt,
            "major": int(trt.split(".")[0]) if trt else None,
            "trtexec": shutil.which("trtexec"),
        },
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
