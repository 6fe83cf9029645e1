"""TensorRT target: an explicitly typed ONNX bundle everywhere, the engine where TensorRT is.

``mmedge export --target tensorrt`` writes a bundle (the Q/DQ INT8, FP16 or FP32 ONNX, its
profile, build_engine.sh, a parity set) checked against TensorRT's rules. Where TensorRT and a
GPU are present it also builds the engine; elsewhere (a workstation preparing for a Jetson) the
engine is built on the device with ``mmedge build DIR`` or ``./build_engine.sh``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx

from mmedge.targets import BuildResult, Probe, Session, SessionConfig, TargetSpec
from mmedge.targets.tensorrt.bundle import (
    ENGINE,
    ENGINE_META,
    PARITY,
    PROFILE,
    SCRIPT,
    TIMING_CACHE,
    build_script,
    profile_shapes,
    write_parity,
    write_profile,
)
from mmedge.targets.tensorrt.config import TensorRtConfig, settings
from mmedge.targets.tensorrt.engine import tensorrt_version
from mmedge.targets.tensorrt.rules import check_model, summary

if TYPE_CHECKING:
    import torch

    from mmedge.data.datasets import DataSource
    from mmedge.quantize.space import SearchSpace
    from mmedge.recipe import Recipe
    from mmedge.targets.tensorrt.session import TrtSession

NOT_BUILT = "not built: TensorRT is not installed here (build on the device)"


def bundle_files(directory: Path) -> list[Path]:
    """The bundle's files, main file first; engine files once built."""
    names = ["model.onnx", PROFILE, SCRIPT, PARITY, ENGINE, ENGINE_META, TIMING_CACHE]
    return [directory / n for n in names if (directory / n).is_file()]


class TensorRtTarget:
    name: ClassVar[str] = "tensorrt"

    def probe(self) -> Probe:
        """Installed means: bundles can be made here (they need onnxruntime, not TensorRT)."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return Probe(False, hint='pip install "mmedge[onnxruntime]" (bundles are made with it)')
        version = tensorrt_version()
        hint = None if version else "TensorRT is not installed: bundles only, engines on the device"
        return Probe(True, version, ["trtexec"] if shutil.which("trtexec") else [], hint)

    def runtime_missing(self) -> str | None:
        if tensorrt_version() is None:
            return (
                "TensorRT is not installed here: the bundle's engine is built and run on the device"
            )
        return None

    def recorded_reference(
        self, directory: Path, recipe: Recipe
    ) -> tuple[DataSource, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]]:
        """On the device: the bundle's own inputs and FP32 outputs, no torch or recipe data."""
        from mmedge.targets.tensorrt.bundle import parity_source

        data, recorded = parity_source(directory, recipe)
        return data, recorded

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool:
        return precision == "int8"

    def build(
        self,
        onnx_path: Path | torch.nn.Module,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        assert isinstance(onnx_path, Path)  # SPEC.source is onnx
        model = out_dir / "model.onnx"
        details: dict[str, Any] = {"precision_in_graph": precision}
        if precision == "int8":
            from mmedge.targets.tensorrt.qdq import quantize_for_tensorrt

            details["quantize"] = quantize_for_tensorrt(onnx_path, model, recipe, calib)
        elif precision == "fp16":
            from mmedge.targets.tensorrt.fp16 import convert_to_fp16

            details["fp16"] = convert_to_fp16(onnx_path, model, recipe)
        else:
            shutil.copyfile(onnx_path, model)
        findings = check_model(
            onnx.load(str(model)), recipe.branches, recipe.quantization.keep_fp32
        )
        details["rules"] = summary(findings)
        profile = profile_shapes(recipe)
        write_profile(out_dir / PROFILE, profile, {"precision": precision})
        cfg = settings(recipe)
        (out_dir / SCRIPT).write_text(build_script(profile, cfg, cfg.sparse_weights))
        (out_dir / SCRIPT).chmod(0o755)
        details["parity"] = _write_parity(out_dir / PARITY, onnx_path, recipe)
        details["engine"] = self._engine_here(out_dir, recipe, details["rules"]["errors"])
        return BuildResult(bundle_files(out_dir), details)

    def _engine_here(self, out_dir: Path, recipe: Recipe, errors: int) -> dict[str, Any]:
        if tensorrt_version() is None:
            return {"built": False, "reason": NOT_BUILT}
        if errors:
            return {"built": False, "reason": f"{errors} rule violation(s); see `mmedge check`"}
        from mmedge.targets.tensorrt.engine import BuildOptions, build_engine

        return {"built": True, **build_engine(out_dir, recipe, BuildOptions())}

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> TrtSession:
        from mmedge.targets.tensorrt.session import TrtSession

        return TrtSession(artifact.parent, recipe, precision, config).expecting(recipe)

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> Session:
        if tensorrt_version() is not None:
            return self.load(artifact, recipe, precision, config)
        # The bundle's own graph (its Q/DQ or FP16 numerics) in ONNX Runtime: what a machine
        # without TensorRT can say about it; the engine's own figures come from the device.
        from mmedge.targets.onnxruntime import OrtSession

        session = OrtSession(artifact, config.threads, extra_outputs=config.extra_outputs)
        return session.expecting(recipe)

    def search_space(self) -> SearchSpace:
        from mmedge.quantize.space import QdqSpace

        return QdqSpace(types=False)  # TensorRT's rules fix types and Q/DQ placement


SPEC = TargetSpec(
    name="tensorrt",
    factory=TensorRtTarget,
    config=TensorRtConfig,
    precisions=("fp32", "fp16", "int8"),
    extra="tensorrt",
    packages=("tensorrt",),
    summary="TensorRT (NVIDIA GPUs, Jetson): a checked bundle here, the engine on the device",
    on_device=True,
    default_variants=("tensorrt-int8",),
    calibration_methods=True,
    rules="mmedge.targets.tensorrt.commands:check_bundle",
)


def _write_parity(out: Path, fp32: Path, recipe: Recipe) -> dict[str, Any]:
    """Real inputs and the FP32 graph's outputs for them (that graph matched PyTorch at export)."""
    from mmedge.data.datasets import open_compare_data
    from mmedge.targets.onnxruntime import OrtSession

    session = OrtSession(fp32, threads=2)
    with session:
        data = open_compare_data(recipe)
        return write_parity(out, data, settings(recipe).parity_samples, session.run, recipe.outputs)
