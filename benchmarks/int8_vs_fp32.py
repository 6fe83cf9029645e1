"""ONNX Runtime INT8 against FP32 on both reference recipes: size, accuracy, latency.

For each recipe: build FP32 and INT8 artifacts, compare each with PyTorch FP32 (the held-out
split for `reference`, synthetic inputs for the random-weight `reference-large`), and time
both at batch 1 and 8 with `mmedge bench` in interleaved rounds (median of per-round p50s).
Whether INT8 is faster depends on the CPU's integer dot-product instructions (VNNI, AMX, ARM
dot-product): the results record them, and the figures stand as measured either way.

    python -m benchmarks.int8_vs_fp32 [--rounds 5] [--artifacts DIR]

``--artifacts DIR`` benches artifacts built earlier (DIR/RECIPE-PRECISION), e.g. on another
machine with only the runtime side of mmedge installed; it skips building and comparing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import build, interleaved, median, paired_interval, table, write_results
from mmedge.artifacts import bench_artifact, compare_artifact

BATCHES = (1, 8)


def accuracy_and_size(root: Path, recipe: str) -> dict[str, Any]:
    fp32 = build(recipe, "fp32", root / f"{recipe}-fp32")
    int8 = build(recipe, "int8", root / f"{recipe}-int8")
    samples = None if recipe == "reference" else 32
    report = compare_artifact(root / f"{recipe}-int8", samples=samples).to_json()
    return {
        "fp32_bytes": fp32["artifact"]["bytes"],
        "int8_bytes": int8["artifact"]["bytes"],
        "size_ratio": int8["artifact"]["bytes"] / fp32["artifact"]["bytes"],
        "compare": report,
    }


def latency(root: Path, recipe: str, rounds: int) -> dict[str, Any]:
    iterations = 200 if recipe == "reference" else 30
    calls = {}
    for precision in ("fp32", "int8"):
        for batch in BATCHES:
            directory = root / f"{recipe}-{precision}"
            overrides = {"batch": batch, "iterations": iterations, "warmup": 10, "threads": 2}
            calls[f"{precision}/b{batch}"] = lambda d=directory, o=overrides: (
                bench_artifact(d, o).latency_ms.p50
            )
    found = interleaved(calls, rounds)
    p50 = {key: median(values) for key, values in found.items()}
    intervals = {
        f"b{b}": paired_interval(found[f"fp32/b{b}"], found[f"int8/b{b}"]) for b in BATCHES
    }
    return {
        "p50_ms": p50,
        "int8_speedup": {k: i.median for k, i in intervals.items()},
        "int8_speedup_interval": {k: i.to_json() for k, i in intervals.items()},
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--artifacts", type=Path, help="bench prebuilt artifacts only")
    parser.add_argument("--name", default="int8_vs_fp32", help="results file name")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.artifacts or Path(tmp)
        for recipe in ("reference", "reference-large"):
            entry = {} if args.artifacts else accuracy_and_size(root, recipe)
            entry["latency"] = latency(root, recipe, args.rounds)
            results[recipe] = entry
    write_results(args.name, {"results": results}, _markdown(results, args.rounds))


def _markdown(results: dict[str, Any], rounds: int) -> str:
    text = ""
    if "compare" in results["reference"]:
        rows = []
        for recipe, r in results.items():
            c = r["compare"]
            acc = c["accuracy"]
            rows.append(
                [
                    recipe,
                    f"{r['fp32_bytes'] / 1e6:.2f}",
                    f"{r['int8_bytes'] / 1e6:.2f}",
                    f"{100 * r['size_ratio']:.1f}%",
                    "-" if acc is None else f"{acc['reference']:.2f}% → {acc['candidate']:.2f}%",
                    f"{100 * c['top1_agreement']:.2f}%",
                    f"{c['outputs']['logits']['cosine']:.5f}",
                ]
            )
        text += "Size and accuracy (INT8 static QDQ, MinMax, per-channel, vs PyTorch FP32):\n\n"
        text += (
            table(
                [
                    "recipe",
                    "FP32 MB",
                    "INT8 MB",
                    "INT8/FP32",
                    "eval accuracy FP32 → INT8",
                    "top-1 agreement",
                    "cosine",
                ],
                rows,
            )
            + "\n"
        )
    rows = []
    for recipe, r in results.items():
        lat = r["latency"]
        for b in BATCHES:
            rows.append(
                [
                    recipe,
                    b,
                    f"{lat['p50_ms'][f'fp32/b{b}']:.3f}",
                    f"{lat['p50_ms'][f'int8/b{b}']:.3f}",
                    _interval(lat["int8_speedup_interval"][f"b{b}"]),
                ]
            )
    text += (
        f"Latency, ONNX Runtime CPU, 2 threads, opt shapes, {rounds} rounds alternating all "
        "variants. p50 columns: median over rounds; speed-up: median over rounds of the "
        "per-round FP32/INT8 ratio [95% bootstrap interval].\n\n"
    )
    text += table(["recipe", "batch", "FP32 p50 ms", "INT8 p50 ms", "INT8 speed-up"], rows)
    return text


def _interval(i: dict[str, float]) -> str:
    return f"{i['median']:.2f}x [{i['low']:.2f}, {i['high']:.2f}]"


if __name__ == "__main__":
    main()
