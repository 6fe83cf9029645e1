"""FP16 ONNX for TensorRT's strongly typed builds, with overflow-prone nodes kept in FP32.

TensorRT 11 has no FP16 builder flag: precision must be in the graph. ONNX Runtime's own
converter (``onnxruntime.transformers.float16``, what its transformer optimizer uses) casts
the graph to FP16 except for blocked op types (``targets.tensorrt.fp16_keep_fp32_ops``:
normalizations, reductions and exponentials by default, where FP16's 65504 range overflows)
and the nodes of branches the recipe keeps in FP32. Inputs and outputs stay FP32.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from mmedge.branches import nodes_by_branch
from mmedge.errors import require
from mmedge.recipe import Recipe
from mmedge.targets.tensorrt.config import settings


def convert_to_fp16(src: Path, dst: Path, recipe: Recipe) -> dict[str, Any]:
    require("onnxruntime", "onnxruntime")  # the converter ships with onnxruntime
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    by_branch = nodes_by_branch(model, recipe.branches)
    keep_nodes = [n for branch in recipe.quantization.keep_fp32 for n in by_branch[branch]]
    keep_ops = list(settings(recipe).fp16_keep_fp32_ops)
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=keep_ops, node_block_list=keep_nodes
    )
    onnx.save(converted, str(dst))
    ops = Counter(n.op_type for n in converted.graph.node)
    return {
        "converter": "onnxruntime.transformers.float16",
        "kept_fp32_ops": keep_ops,
        "kept_fp32_branches": list(recipe.quantization.keep_fp32),
        "kept_fp32_nodes": len(keep_nodes),
        "casts": ops["Cast"],
    }
