"""``targets.tensorrt``: engine build settings (the engine itself is built on the device)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from mmedge.config import PosInt, StrictConfig

if TYPE_CHECKING:
    from mmedge.recipe import Recipe

# Overflow-prone ops an FP16 ONNX keeps in FP32 (FP16 max is 65504): normalizations and
# reductions accumulate, exponentials blow up.
FP16_KEEP_FP32 = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Reciprocal",
)


class TensorRtConfig(StrictConfig):
    """Engine build settings; the engine itself is built on the device (``mmedge build``)."""

    workspace_mb: PosInt = Field(1024, description="builder workspace in MB")
    optimization_level: Annotated[int, Field(ge=0, le=5)] = Field(
        3, description="builder optimization level (TensorRT's default: 3)"
    )
    timing_cache: Path | None = Field(None, description="reused across builds on the same device")
    fp16_keep_fp32_ops: list[str] = Field(
        default_factory=lambda: list(FP16_KEEP_FP32),
        description="op types an FP16 bundle keeps in FP32",
    )
    parity_samples: PosInt = Field(
        16, description="inputs and expected outputs bundled for checks on the device"
    )
    cuda_device: Annotated[int, Field(ge=0)] = 0
    sparse_weights: bool = Field(
        False, description="set by `mmedge prune` for 2:4 models (sparse tensor cores)"
    )


def settings(recipe: Recipe) -> TensorRtConfig:
    return recipe.targets.of("tensorrt", TensorRtConfig)
