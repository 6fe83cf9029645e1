"""TensorRT bundles as far as they go without TensorRT: rules, accuracy in ONNX Runtime, size.

For both reference recipes and each precision: export time of the bundle, the rule checker's
findings, the bundle ONNX's size, and its accuracy run in ONNX Runtime on CPU against PyTorch
FP32 (`reference`: the 540-sample held-out split; `reference-large`: 32 synthetic samples).
The engine itself needs TensorRT and an NVIDIA GPU: none was available here, so no engine
latency is recorded.

    python -m benchmarks.tensorrt_bundle
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RECIPES, table, write_results
from mmedge.artifacts import build_artifact
from mmedge.compare import accuracy, output_metrics, top1_agreement
from mmedge.data.datasets import open_compare_data
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe
from mmedge.targets.onnxruntime import OrtSession


def main() -> None:
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("reference", "reference-large"):
            recipe = load_recipe(RECIPES[name])
            data = open_compare_data(recipe, None if name == "reference" else 32)
            reference = torch_runner(load_torch_model(recipe), recipe.outputs)
            ref_batches = [
                (b.feeds, b.labels, reference(b.feeds)["logits"]) for b in data.batches(64)
            ]
            for precision in ("fp32", "fp16", "int8"):
                out = Path(tmp) / f"{name}-{precision}"
                start = time.perf_counter()
                manifest = build_artifact(recipe, "tensorrt", precision, out)
                seconds = time.perf_counter() - start
                session = OrtSession(out / "model.onnx", threads=2)
                got = [session.run(feeds)["logits"] for feeds, _, _ in ref_batches]
                want = np.concatenate([w for _, _, w in ref_batches])
                cand = np.concatenate(got)
                labels = [y for _, y, _ in ref_batches if y is not None]
                acc = None
                if labels:
                    y = np.concatenate(labels)
                    acc = {"reference": accuracy(want, y), "candidate": accuracy(cand, y)}
                rules = manifest["steps"]["build"]["rules"]
                entry = {
                    "export_s": seconds,
                    "onnx_bytes": (out / "model.onnx").stat().st_size,
                    "rules": {"errors": rules["errors"], "warnings": rules["warnings"]},
                    "accuracy": acc,
                    "top1_agreement": top1_agreement(want, cand),
                    "cosine": output_metrics(want, cand).cosine,
                }
                results[f"{name}/{precision}"] = entry
                rows.append(
                    [
                        name,
                        precision,
                        f"{seconds:.1f}",
                        f"{entry['onnx_bytes'] / 1e6:.2f}",
                        f"{rules['errors']} / {rules['warnings']}",
                        "-"
                        if acc is None
                        else f"{acc['reference']:.2f}% → {acc['candidate']:.2f}%",
                        f"{100 * entry['top1_agreement']:.2f}%",
                        f"{entry['cosine']:.5f}",
                    ]
                )
    markdown = (
        "TensorRT bundles (`mmedge export --target tensorrt`) without TensorRT: the bundle's ONNX "
        "run in ONNX Runtime on CPU against PyTorch FP32. No engine was built (no TensorRT or "
        "NVIDIA GPU here), so there are no TensorRT latencies.\n\n"
        + table(
            [
                "recipe",
                "precision",
                "export s",
                "ONNX MB",
                "rule errors / warnings",
                "accuracy FP32 → bundle",
                "top-1 agreement",
                "cosine",
            ],
            rows,
        )
    )
    write_results("tensorrt_bundle", {"results": results}, markdown)


if __name__ == "__main__":
    main()
