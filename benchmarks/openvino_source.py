"""Convert to OpenVINO from the exported ONNX (mmedge's choice) or from the PyTorch module?

For both reference recipes: conversion time (the ONNX path includes the torch -> ONNX export),
op count, IR bytes, parity with PyTorch, batch-1 latency (same compile settings, alternating
rounds), and the share of profiled time that maps back to a declared branch through layer
names. mmedge parses ONNX-style scoped names (``/text_encoder/layers.0/...``); the direct path
names ops ``__module.text_encoder.layers.0/aten::linear/MatMul``, so its share is also given
with a parser written for that convention.

    python -m benchmarks.openvino_source [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RECIPES, interleaved, median, paired_ratio, table, write_results
from mmedge.bench import time_calls
from mmedge.branches import UNASSIGNED, branch_of, time_by_branch
from mmedge.export import export_onnx
from mmedge.inputs import dummy_feeds
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe


def torch_style_scope(name: str) -> str:
    head = name.split("/", 1)[0]
    return head.removeprefix("__module.") if head.startswith("__module.") else ""


def convert_direct(model: Any, recipe: Any) -> Any:
    import openvino as ov
    import torch

    feeds = {k: torch.from_numpy(v) for k, v in dummy_feeds(recipe, "opt", batch=2).items()}
    types = {"float32": ov.Type.f32, "int64": ov.Type.i64}
    inputs = [
        (
            name,
            ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape]),
            types[spec.dtype],
        )
        for name, spec in recipe.inputs.items()
    ]
    return ov.convert_model(model, example_input=feeds, input=inputs)


def compiled(model: Any, profile: bool = False) -> Any:
    import openvino as ov

    props = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": 2,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": profile,
    }
    return ov.Core().compile_model(model, "CPU", props)


def branch_share(
    model: Any, feeds: dict[str, np.ndarray], branches: dict[str, list[str]], torch_names: bool
) -> float:
    request = compiled(model, profile=True).create_infer_request()
    layers: dict[str, float] = {}
    for _ in range(10):
        request.infer(feeds)
        for info in request.profiling_info:
            layers[info.node_name] = (
                layers.get(info.node_name, 0.0) + info.real_time.total_seconds()
            )
    if torch_names:
        owned = sum(
            t for n, t in layers.items() if branch_of(torch_style_scope(n), branches) != UNASSIGNED
        )
        return owned / sum(layers.values())
    split = time_by_branch(layers, branches)
    return 1.0 - split[UNASSIGNED] / sum(split.values())


def main() -> None:
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("reference", "reference-large"):
            recipe = load_recipe(RECIPES[name])
            torch_model = load_torch_model(recipe)
            start = time.perf_counter()
            export_onnx(torch_model, recipe, Path(tmp) / f"{name}.onnx")
            via_onnx = ov.convert_model(str(Path(tmp) / f"{name}.onnx"))
            onnx_s = time.perf_counter() - start
            start = time.perf_counter()
            direct = convert_direct(torch_model, recipe)
            direct_s = time.perf_counter() - start
            feeds = dummy_feeds(recipe, "opt", batch=1)
            want = torch_runner(torch_model, recipe.outputs)(feeds)["logits"]
            entry: dict[str, Any] = {}
            sessions = {}
            for path, model, seconds in (("onnx", via_onnx, onnx_s), ("pytorch", direct, direct_s)):
                xml = Path(tmp) / f"{name}-{path}.xml"
                ov.save_model(model, str(xml), compress_to_fp16=False)
                request = compiled(model).create_infer_request()
                got = np.array(request.infer(feeds)[0])
                entry[path] = {
                    "convert_s": seconds,
                    "ops": len(model.get_ops()),
                    "ir_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
                    "max_abs_vs_pytorch": float(np.max(np.abs(got - want))),
                    "branch_share_mmedge_parser": branch_share(
                        model, feeds, recipe.branches, False
                    ),
                    "branch_share_torch_parser": branch_share(model, feeds, recipe.branches, True),
                }
                sessions[path] = request
            iterations = 300 if name == "reference" else 30
            found = interleaved(
                {
                    p: (
                        lambda r=r, f=feeds, n=iterations: float(
                            np.median(time_calls(lambda: r.infer(f), 10, n))
                        )
                    )
                    for p, r in sessions.items()
                },
                args.rounds,
            )
            entry["latency_p50_ms"] = {p: median(v) for p, v in found.items()}
            entry["pytorch_over_onnx_latency"] = paired_ratio(found["pytorch"], found["onnx"])
            results[name] = entry
            for path in ("onnx", "pytorch"):
                e = entry[path]
                rows.append(
                    [
                        name,
                        path,
                        f"{e['convert_s']:.2f}",
                        e["ops"],
                        f"{e['ir_bytes'] / 1e6:.2f}",
                        f"{e['max_abs_vs_pytorch']:.2e}",
                        f"{entry['latency_p50_ms'][path]:.3f}",
                        f"{100 * e['branch_share_mmedge_parser']:.0f}%",
                        f"{100 * e['branch_share_torch_parser']:.0f}%",
                    ]
                )
    markdown = (
        "OpenVINO IR converted from the exported ONNX vs from the PyTorch module (FP32 IR, "
        "f32 inference, 2 threads, batch 1, opt shapes; latency: median of per-round p50s over "
        f"{args.rounds} alternating rounds).\n\n"
        + table(
            [
                "recipe",
                "from",
                "convert s",
                "ops",
                "IR MB",
                "max abs vs PyTorch",
                "p50 ms",
                "time mapped to a branch (mmedge names)",
                "(torch-style names)",
            ],
            rows,
        )
    )
    write_results("openvino_source", {"results": results}, markdown)


if __name__ == "__main__":
    main()
