"""Explicit-quantization ONNX for TensorRT, made with ONNX Runtime's QDQ quantizer.

Why ONNX Runtime's quantizer and not NVIDIA ModelOpt's ONNX PTQ: it is already mmedge's
quantizer, so the TensorRT bundle is calibrated by the very same code, calibration source and
per-shape calibration as the ONNX Runtime artifact, and per-branch FP32 works the same way;
it installs everywhere `onnxruntime` does, while ModelOpt pulls `onnxruntime-gpu` and pins an
older `onnx` (a conflict with the `onnxruntime` package). TensorRT's rules are set explicitly:
symmetric INT8 activations and weights (zero point 0), per-channel weights (ONNX Runtime's
default axes are the output-channel axes: Conv 0, MatMul 1, Gemm 0/1 by transB), per-tensor
activations, Q/DQ only at the inputs of Conv/MatMul/Gemm (not on their outputs, and float
biases), so LayerNorm, Softmax, bias and residual adds and the fusion concat stay in higher
precision and fuse. The rule checker (rules.py) verifies the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmedge.data.datasets import DataSource
from mmedge.recipe import Recipe

TENSORRT_OPS = ["Conv", "MatMul", "Gemm"]


def tensorrt_recipe(recipe: Recipe) -> Recipe:
    """The recipe with quantization settings forced to TensorRT's explicit-quantization rules;
    the calibration method, data and per-branch FP32 stay the user's."""
    quant = recipe.quantization.model_copy(
        update={
            "mode": "static",
            "activation_type": "int8",
            "weight_type": "int8",
            "per_channel": True,
            "reduce_range": False,
            "op_types": list(TENSORRT_OPS),
            "quantize_bias": False,
            "quantize_weighted_outputs": False,
        }
    )
    return recipe.model_copy(update={"quantization": quant})


def quantize_for_tensorrt(
    fp32: Path, out: Path, recipe: Recipe, calib: DataSource | None
) -> dict[str, Any]:
    from mmedge.quantize.ort import quantize_onnx

    details = quantize_onnx(fp32, out, tensorrt_recipe(recipe), calib)
    details["quantizer"] = "onnxruntime QDQ, TensorRT rules (symmetric INT8, per-channel weights)"
    return details
