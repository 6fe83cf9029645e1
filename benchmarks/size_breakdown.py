"""Where an artifact's bytes go: weights (initializers) vs graph structure, FP32 vs INT8.

Explains size ratios: INT8 shrinks weights about 4x, while the Q/DQ nodes it adds (and their
named tensors) cost a fixed amount per quantized op, which only matters for small models.

    python -m benchmarks.size_breakdown
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from benchmarks.common import build, table, write_results


def breakdown(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path))
    weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    ops = Counter(n.op_type for n in model.graph.node)
    total = path.stat().st_size
    return {
        "bytes": total,
        "weight_bytes": weights,
        "graph_bytes": total - weights,
        "qdq_nodes": ops["QuantizeLinear"] + ops["DequantizeLinear"],
    }


def ir_breakdown(directory: Path) -> dict[str, Any]:
    """OpenVINO IR: weights live in model.bin, the graph in model.xml."""
    weights = (directory / "model.bin").stat().st_size
    graph = (directory / "model.xml").stat().st_size
    return {"bytes": weights + graph, "weight_bytes": weights, "graph_bytes": graph}


def _row(
    recipe: str, target: str, precision: str, base: dict[str, Any], cur: dict[str, Any]
) -> list[Any]:
    total = base["bytes"]
    return [
        recipe,
        f"{target} {precision}",
        f"{cur['bytes'] / 1e6:.3f} ({100 * cur['bytes'] / total:.1f}%)",
        f"{cur['weight_bytes'] / 1e6:.3f} ({100 * cur['weight_bytes'] / base['weight_bytes']:.1f}%)",
        f"{cur['graph_bytes'] / 1e6:.3f} ({100 * cur['graph_bytes'] / total:.1f}%)",
    ]


def main() -> None:
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            for target, precisions, measure in (
                ("onnxruntime", ("fp32", "int8"), lambda d: breakdown(d / "model.onnx")),
                ("openvino", ("fp32", "fp16", "int8"), ir_breakdown),
            ):
                sizes = {}
                for precision in precisions:
                    out = Path(tmp) / f"{recipe}-{target}-{precision}"
                    build(recipe, precision, out, target=target)
                    sizes[precision] = measure(out)
                results[f"{recipe}/{target}"] = sizes
                rows += [_row(recipe, target, p, sizes["fp32"], sizes[p]) for p in precisions]
    markdown = (
        "Artifact bytes split into weights (ONNX initializers; OpenVINO `model.bin`) and graph "
        "structure (ONNX nodes, tensor names and shapes; OpenVINO `model.xml`). Total and graph: "
        "% of the FP32 artifact's bytes; weights: % of the FP32 artifact's weights.\n\n"
        + table(["recipe", "artifact", "total MB", "weights MB", "graph MB"], rows)
    )
    write_results("size_breakdown", {"results": results}, markdown)


if __name__ == "__main__":
    main()
