"""The on-device bundle: everything an NVIDIA device needs to build and check the engine.

Engines are specific to a GPU and a TensorRT version, so they are built where they run (a
Jetson, usually), from what a workstation prepares: the ONNX (explicit Q/DQ INT8, FP16 or
FP32), the optimization profile from the recipe's dynamic axes, ``build_engine.sh`` with the
trtexec invocation for TensorRT 10 and for 11, and a parity set (inputs, labels, expected
FP32 outputs) so ``mmedge compare`` works there without torch or the recipe's data.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from mmedge.data.datasets import DataSource
from mmedge.data.recorded import recorded_source, write_recorded
from mmedge.errors import InputSpecError
from mmedge.inputs import Point, concrete_shape
from mmedge.recipe import Recipe
from mmedge.targets.tensorrt.config import TensorRtConfig

PROFILE = "profile.json"
SCRIPT = "build_engine.sh"
PARITY = "parity.npz"
ENGINE = "model.engine"
ENGINE_META = "engine.json"
TIMING_CACHE = "timing.cache"

Profile = dict[str, dict[str, list[int]]]  # input -> {"min": dims, "opt": dims, "max": dims}
POINTS: tuple[Point, ...] = ("min", "opt", "max")


def profile_shapes(recipe: Recipe) -> Profile:
    """min/opt/max shapes per input; a shared axis takes the same value in every input."""
    return {
        name: {p: list(concrete_shape(spec, recipe, p)) for p in POINTS}
        for name, spec in recipe.inputs.items()
    }


def check_profile(profile: Profile, recipe: Recipe | None = None) -> None:
    """Each dimension ordered min <= opt <= max (profile.json can be edited on the device)."""
    for name, points in profile.items():
        for i, (lo, opt, hi) in enumerate(
            zip(points["min"], points["opt"], points["max"], strict=True)
        ):
            if not lo <= opt <= hi:
                axis = _axis_name(recipe, name, i)
                raise InputSpecError(
                    f"profile for input '{name}' {axis}: need min <= opt <= max, got "
                    f"{lo}, {opt}, {hi}"
                )


def check_shapes(
    shapes: dict[str, tuple[int, ...]], profile: Profile, recipe: Recipe | None = None
) -> None:
    """Shapes an engine is asked to run must lie within its profile, axis by axis."""
    for name, shape in shapes.items():
        points = profile.get(name)
        if points is None:
            raise InputSpecError(
                f"input '{name}' is not in the engine's profile ({', '.join(profile)})"
            )
        for i, size in enumerate(shape):
            lo, hi = points["min"][i], points["max"][i]
            if not lo <= size <= hi:
                raise InputSpecError(
                    f"input '{name}' {_axis_name(recipe, name, i)} is {size}, outside the engine "
                    f"profile's [{lo}, {hi}]",
                    hint="widen the axis in the recipe's 'axes' (min/max), re-export the "
                    "bundle (mmedge export --target tensorrt) and build its engine again",
                )


def _axis_name(recipe: Recipe | None, name: str, index: int) -> str:
    if recipe is not None and name in recipe.inputs:
        dim = recipe.inputs[name].shape[index]
        if isinstance(dim, str):
            return f"axis '{dim}' (dim {index})"
    return f"dim {index}"


def _shape_arg(profile: Profile, point: str) -> str:
    return ",".join(f"{n}:{'x'.join(map(str, p[point]))}" for n, p in profile.items())


def trtexec_command(
    major: int, profile: Profile, cfg: TensorRtConfig, sparse: bool = False
) -> list[str]:
    """The trtexec line for TensorRT ``major`` (10 or 11).

    The bundle's ONNX carries its precision (Q/DQ INT8 or an FP16 graph), so no precision flag
    is needed: TensorRT 10 is told to build strongly typed; TensorRT 11 always does and has no
    precision flags left.
    """
    if major not in (10, 11):
        raise ValueError(f"no trtexec line for TensorRT {major} (10 and 11 are supported)")
    cmd = [
        "trtexec",
        "--onnx=model.onnx",
        f"--saveEngine={ENGINE}",
        f"--minShapes={_shape_arg(profile, 'min')}",
        f"--optShapes={_shape_arg(profile, 'opt')}",
        f"--maxShapes={_shape_arg(profile, 'max')}",
        f"--memPoolSize=workspace:{cfg.workspace_mb}M",
        f"--builderOptimizationLevel={cfg.optimization_level}",
        f"--timingCacheFile={TIMING_CACHE}",
        "--profilingVerbosity=detailed",
    ]
    if major == 10:
        cmd.append("--stronglyTyped")
    if sparse:
        cmd.append("--sparsity=enable")
    return cmd


def build_script(profile: Profile, cfg: TensorRtConfig, sparse: bool = False) -> str:
    lines = {
        m: " ".join(shlex.quote(a) for a in trtexec_command(m, profile, cfg, sparse))
        for m in (10, 11)
    }
    return f"""#!/usr/bin/env bash
# Build this bundle's TensorRT engine on the device it will run on (engines are specific to a
# GPU and a TensorRT version). With mmedge installed, `mmedge build .` does the same through the
# Python API and records the engine's metadata for `mmedge compare` and `mmedge bench`.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-trtexec}}
# trtexec prints its version as [TensorRT v100300] (10.3.0).
version=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 | grep -o '[0-9]*' || true)
major=$(( ${{version:-0}} / 10000 ))
case "$major" in
  10) {lines[10].replace("trtexec", '"$TRTEXEC"', 1)} ;;
  11) {lines[11].replace("trtexec", '"$TRTEXEC"', 1)} ;;
  *) echo "found TensorRT '${{version:-none}}' via $TRTEXEC; this bundle supports TensorRT 10 and 11" >&2; exit 1 ;;
esac
gpu=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)
printf '{{"tensorrt_version": "%s", "gpu": "%s", "compute_capability": "%s", "built_by": "trtexec"}}\\n' \\
  "$(( version / 10000 )).$(( version / 100 % 100 )).$(( version % 100 ))" "${{gpu%%,*}}" "${{gpu##*, }}" > {ENGINE_META}
"""


def write_parity(
    out: Path, data: DataSource, samples: int, reference: Any, outputs: list[str]
) -> dict[str, Any]:
    """Bundle one batch of real inputs (+ labels) and the FP32 reference's outputs for them."""
    return write_recorded(out, data, reference, outputs, samples)


def write_profile(out: Path, profile: Profile, extra: dict[str, Any]) -> None:
    out.write_text(json.dumps({"inputs": profile, **extra}, indent=2) + "\n")


def read_profile(directory: Path) -> Profile:
    data: dict[str, Any] = json.loads((directory / PROFILE).read_text())
    profile: Profile = data["inputs"]
    return profile


def parity_source(directory: Path, recipe: Recipe) -> tuple[Any, Any]:
    """The bundled parity set as a data source, and a runner that replays the recorded FP32
    outputs for it batch by batch (checking it is fed the same inputs, in order)."""
    from mmedge.errors import ArtifactError

    if not (directory / PARITY).is_file():
        raise ArtifactError(f"{directory} has no {PARITY}: it is not a complete TensorRT bundle")
    return recorded_source(directory / PARITY, recipe, "the bundle's parity set")
