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
        "nodes": len(model.graph.node),
        "qdq_nodes": ops["QuantizeLinear"] + ops["DequantizeLinear"],
    }


def main() -> None:
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            sizes = {}
            for precision in ("fp32", "int8"):
                out = Path(tmp) / f"{recipe}-{precision}"
                build(recipe, precision, out)
                sizes[precision] = breakdown(out / "model.onnx")
            results[recipe] = sizes
            fp32, int8 = sizes["fp32"], sizes["int8"]
            rows.append(
                [
                    recipe,
                    f"{fp32['bytes'] / 1e6:.3f}",
                    f"{int8['bytes'] / 1e6:.3f} ({100 * int8['bytes'] / fp32['bytes']:.1f}%)",
                    f"{int8['weight_bytes'] / 1e6:.3f} ({100 * int8['weight_bytes'] / fp32['bytes']:.1f}%)",
                    f"{int8['graph_bytes'] / 1e6:.3f} ({100 * int8['graph_bytes'] / fp32['bytes']:.1f}%)",
                    int8["nodes"],
                    int8["qdq_nodes"],
                ]
            )
    markdown = (
        "Artifact bytes split into weights (initializers) and the rest (graph structure: nodes, "
        "tensor names, shapes). Percentages are of the FP32 artifact.\n\n"
        + table(
            [
                "recipe",
                "FP32 MB",
                "INT8 MB",
                "INT8 weights MB",
                "INT8 graph MB",
                "INT8 nodes",
                "of which Q/DQ",
            ],
            rows,
        )
    )
    write_results("size_breakdown", {"results": results}, markdown)


if __name__ == "__main__":
    main()
