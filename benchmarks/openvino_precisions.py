"""OpenVINO FP32 / FP16 / INT8 IRs of both reference recipes: size, accuracy, latency, branches.

Each IR is compared with PyTorch FP32 (held-out split for `reference`, 32 synthetic samples for
the random-weight `reference-large`) and timed with `mmedge bench` at batch 1 and 8 in rounds
alternating the variants (speed-ups are medians of per-round ratios against FP32). A fourth
variant runs the FP32 IR at the plugin's default precision, which is bfloat16 on CPUs with
AVX-512 BF16 or AMX: what a user gets who does not pin the precision. The per-branch split
comes from OpenVINO's per-layer counters at batch 1.

    python -m benchmarks.openvino_precisions [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import build, interleaved, median, paired_ratio, table, write_results
from mmedge.artifacts import bench_artifact, compare_artifact

VARIANTS = {  # name: (precision, recipe overrides)
    "fp32": ("fp32", None),
    "fp32, device-default precision": (
        "fp32",
        {"targets.openvino.inference_precision": "device-default"},
    ),
    "fp16": ("fp16", None),
    "int8": ("int8", None),
}
BATCHES = (1, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    size_rows, lat_rows, branch_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            dirs, entry = {}, {}
            for name, (precision, overrides) in VARIANTS.items():
                out = Path(tmp) / f"{recipe}-{name.replace(' ', '_').replace(',', '')}"
                manifest = build(recipe, precision, out, overrides, target="openvino")
                report = compare_artifact(out, samples=None if recipe == "reference" else 32)
                dirs[name] = out
                entry[name] = {"bytes": manifest["artifact"]["bytes"], "compare": report.to_json()}
            fp32_bytes = entry["fp32"]["bytes"]
            for name, e in entry.items():
                acc = e["compare"]["accuracy"]
                size_rows.append(
                    [
                        recipe,
                        name,
                        f"{e['bytes'] / 1e6:.2f}",
                        f"{100 * e['bytes'] / fp32_bytes:.1f}%",
                        "-"
                        if acc is None
                        else f"{acc['candidate']:.2f}% (FP32 {acc['reference']:.2f}%)",
                        f"{100 * e['compare']['top1_agreement']:.2f}%",
                        f"{e['compare']['outputs']['logits']['cosine']:.5f}",
                    ]
                )
            iterations = 150 if recipe == "reference" else 20
            calls = {
                f"{name}/b{b}": (
                    lambda d=d, b=b, n=iterations: (
                        bench_artifact(
                            d, {"batch": b, "iterations": n, "warmup": 5, "threads": 2}
                        ).latency_ms.p50
                    )
                )
                for name, d in dirs.items()
                for b in BATCHES
            }
            found = interleaved(calls, args.rounds)
            for name in VARIANTS:
                speed = [paired_ratio(found[f"fp32/b{b}"], found[f"{name}/b{b}"]) for b in BATCHES]
                p50 = [median(found[f"{name}/b{b}"]) for b in BATCHES]
                entry[name]["latency_p50_ms"] = dict(zip(("b1", "b8"), p50, strict=True))
                entry[name]["speedup_vs_fp32"] = dict(zip(("b1", "b8"), speed, strict=True))
                lat_rows.append(
                    [
                        recipe,
                        name,
                        f"{p50[0]:.3f}",
                        f"{speed[0]:.2f}x",
                        f"{p50[1]:.3f}",
                        f"{speed[1]:.2f}x",
                    ]
                )
                profiled = bench_artifact(
                    dirs[name], {"iterations": 5, "warmup": 2, "profile": True}
                )
                branches = profiled.branch_ms or {}
                entry[name]["branch_ms"] = branches
                entry[name]["settings"] = profiled.settings
                total = sum(branches.values()) or 1.0
                branch_rows.append(
                    [recipe, name, str(profiled.settings.get("inference_precision"))]
                    + [
                        f"{branches.get(b, 0.0):.3f} ({100 * branches.get(b, 0.0) / total:.0f}%)"
                        for b in ("image", "text", "audio", "fusion", "other")
                    ]
                )
            entry["rounds"] = found
            results[recipe] = entry
    markdown = (
        "Size and accuracy of OpenVINO IRs vs PyTorch FP32 (`reference`: 540 held-out samples; "
        "`reference-large`: 32 synthetic samples, random weights).\n\n"
        + table(
            ["recipe", "variant", "IR MB", "vs FP32 IR", "accuracy", "top-1 agreement", "cosine"],
            size_rows,
        )
        + f"\nLatency (`mmedge bench`, latency mode, 2 threads, opt shapes; p50 median of "
        f"{args.rounds} alternating rounds; speed-up: median of per-round ratios vs FP32).\n\n"
        + table(
            ["recipe", "variant", "b1 p50 ms", "b1 speed-up", "b8 p50 ms", "b8 speed-up"], lat_rows
        )
        + "\nTime per branch at batch 1 (OpenVINO per-layer counters, sum of per-layer medians "
        "over 20 profiled runs; 'other' holds top-level ops such as the fusion concat and "
        "precision conversions).\n\n"
        + table(
            [
                "recipe",
                "variant",
                "ran in",
                "image ms",
                "text ms",
                "audio ms",
                "fusion ms",
                "other ms",
            ],
            branch_rows,
        )
    )
    write_results("openvino_precisions", {"results": results}, markdown)


if __name__ == "__main__":
    main()
