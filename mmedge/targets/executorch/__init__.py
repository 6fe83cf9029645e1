"""ExecuTorch target: a ``.pte`` program for phones and embedded Linux, XNNPACK-delegated.

Built from the PyTorch model itself (``torch.export``), not from the ONNX every other target
starts from: ExecuTorch lowers an exported program. INT8 is PT2E quantization with ExecuTorch's
XNNPACK quantizer, calibrated on the recipe's calibration source, branch by branch so that
``quantization.keep_fp32`` leaves a branch in float. Sessions run on ExecuTorch's own Python
runtime (the same C++ runtime and XNNPACK kernels an app links).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from mmedge.config import StrictConfig
from mmedge.errors import RecipeError, require
from mmedge.targets import BuildResult, Probe, SessionConfig, TargetSpec

if TYPE_CHECKING:
    import torch

    from mmedge.data.datasets import DataSource
    from mmedge.quantize.space import SearchSpace
    from mmedge.recipe import Recipe
    from mmedge.targets.executorch.session import ExecuTorchSession


class ExecuTorchConfig(StrictConfig):
    """``targets.executorch``."""

    # XNNPACK lowers a reshape with at most one dynamic dim, so a Conv1d/BatchNorm1d over
    # (batch, channels, frames) with both batch and frames dynamic runs in portable kernels.
    # Pinning frames (a fixed-length audio window, common on phones) delegates it.
    static_axes: list[str] = Field(
        default_factory=list,
        description="axes fixed at their opt size in the program (more ops go to XNNPACK; "
        "inputs must then have that size)",
    )
    branch_outputs: bool = Field(
        True,
        description="forward also returns each branch's output, for per-branch parity "
        "(false: only the recipe's outputs)",
    )
    calibration_batches: int | None = Field(
        None, ge=1, description="calibration batches observed for INT8 [default: all]"
    )


def settings(recipe: Recipe) -> ExecuTorchConfig:
    return recipe.targets.of("executorch", ExecuTorchConfig)


class ExecuTorchTarget:
    name: ClassVar[str] = "executorch"

    def probe(self) -> Probe:
        from importlib import metadata

        try:
            version = metadata.version("executorch")
        except metadata.PackageNotFoundError:
            return Probe(False, hint=f'pip install "mmedge[{SPEC.extra}]"')
        return Probe(True, version, ["CPU (XNNPACK)"])

    def runtime_missing(self) -> str | None:
        return None

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool:
        return precision == "int8"

    def build(
        self,
        source: Path | torch.nn.Module,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        require("executorch", SPEC.extra)
        from mmedge.targets.executorch.lower import build_program

        assert not isinstance(source, Path)  # SPEC.source is torch
        return build_program(source, recipe, precision, out_dir, calib, settings(recipe))

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> ExecuTorchSession:
        from mmedge.targets.executorch.session import ExecuTorchSession

        if config.device is not None:
            raise RecipeError(
                f"executorch has no --device ({config.device!r}); it runs on the CPU (XNNPACK)"
            )
        return ExecuTorchSession(artifact, config).expecting(recipe)

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> ExecuTorchSession:
        return self.load(artifact, recipe, precision, config)

    def search_space(self) -> SearchSpace:
        raise RecipeError(
            "quantize --auto searches ONNX Q/DQ and NNCF policies; for executorch, leave "
            "branches in float with quantization.keep_fp32 (or --keep-fp32)"
        )


SPEC = TargetSpec(
    name="executorch",
    factory=ExecuTorchTarget,
    config=ExecuTorchConfig,
    precisions=("fp32", "int8"),
    extra="executorch",
    packages=("executorch",),
    summary="ExecuTorch (phones, embedded Linux): a .pte program, XNNPACK-delegated, INT8 by PT2E",
    source="torch",
    cpu_int8=True,
    # Opt-in for `run` (list executorch-fp32/-int8 in run.variants): a phone or board is a
    # deliberate choice, and lowering costs about 20-40 s per variant on 2 cores.
    default_variants=(),
)
