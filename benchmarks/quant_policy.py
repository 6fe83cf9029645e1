"""Which quantization policy loses accuracy, and in which branch? (reference recipe)

Two op-type policies: ONNX Runtime's own default (every op type its QDQ quantizer handles) and
mmedge's default (weighted ops: Conv, MatMul, Gemm, Gather); for each, every branch in turn kept
in FP32. Each variant is built and compared with PyTorch FP32 on the held-out split. This is
the measurement behind mmedge's default `quantization.op_types`.

    python -m benchmarks.quant_policy
"""

from __future__ import annotations

import tempfile
import typing
from pathlib import Path
from typing import Any

from benchmarks.common import build, table, write_results
from mmedge.artifacts import compare_artifact
from mmedge.recipe import QuantOp

POLICIES: dict[str, list[str] | None] = {
    "every op ORT can quantize": list(typing.get_args(QuantOp)),
    "weighted ops (mmedge default)": None,
}
KEEP = ([], ["image"], ["text"], ["audio"], ["fusion"])


def main() -> None:
    results: list[dict[str, Any]] = []
    rows = []
    fp32_bytes = None
    with tempfile.TemporaryDirectory() as tmp:
        fp32_bytes = build("reference", "fp32", Path(tmp) / "fp32")["artifact"]["bytes"]
        for policy, ops in POLICIES.items():
            for keep in KEEP:
                overrides: dict[str, Any] = {"quantization.keep_fp32": keep}
                if ops is not None:
                    overrides["quantization.op_types"] = ops
                out = Path(tmp) / "int8"
                manifest = build("reference", "int8", out, overrides)
                report = compare_artifact(out).to_json()
                acc = report["accuracy"]
                entry = {
                    "policy": policy,
                    "keep_fp32": keep,
                    "bytes": manifest["artifact"]["bytes"],
                    "accuracy": acc,
                    "top1_agreement": report["top1_agreement"],
                    "cosine": report["outputs"]["logits"]["cosine"],
                }
                results.append(entry)
                rows.append(
                    [
                        policy,
                        ", ".join(keep) or "-",
                        f"{acc['candidate']:.2f}%",
                        f"{acc['reference'] - acc['candidate']:+.2f}",
                        f"{100 * entry['top1_agreement']:.2f}%",
                        f"{entry['cosine']:.5f}",
                        f"{100 * entry['bytes'] / fp32_bytes:.1f}%",
                    ]
                )
    markdown = (
        "INT8 variants of `reference` vs PyTorch FP32 on the 540-sample held-out split "
        f"(FP32 accuracy {results[0]['accuracy']['reference']:.2f}%).\n\n"
        + table(
            [
                "quantized op types",
                "kept FP32",
                "INT8 accuracy",
                "drop (points)",
                "top-1 agreement",
                "cosine",
                "size vs FP32",
            ],
            rows,
        )
    )
    write_results("quant_policy", {"fp32_bytes": fp32_bytes, "results": results}, markdown)


if __name__ == "__main__":
    main()
