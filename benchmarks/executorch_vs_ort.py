"""ExecuTorch (XNNPACK) against ONNX Runtime on both reference recipes, batch 1.

For each recipe: build ExecuTorch and ONNX Runtime artifacts at FP32 and INT8, compare each
with PyTorch FP32 (the held-out split for `reference`, 32 synthetic samples for the
random-weight `reference-large`), and time them with `mmedge bench` in interleaved rounds. The
ExecuTorch programs are built twice: with every axis dynamic, and with the audio `frames` axis
fixed at its opt size (`targets.executorch.static_axes`), which lets XNNPACK take the audio
Conv1d/BatchNorm1d. A static program is compared on the eval shards of that length only
(`reference`), and not compared on `reference-large` (its synthetic set spans min to max).
Latency ratios are ExecuTorch p50 over ONNX Runtime p50 at the same precision (below 1:
ExecuTorch faster), each the median of per-round ratios with its 95% bootstrap interval. The
build records what XNNPACK delegated and which ops fell back to portable kernels.

    python -m benchmarks.executorch_vs_ort [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RECIPES,
    build,
    interleaved,
    median,
    paired_interval,
    table,
    write_results,
)
from mmedge.artifacts import bench_artifact, compare_artifact

TARGETS = ("executorch", "executorch-static", "onnxruntime")
PRECISIONS = ("fp32", "int8")
STATIC = {"targets.executorch.static_axes": ["frames"]}


def _frames_subset(recipe: str, root: Path) -> Path | None:
    """The eval shards whose audio has the opt number of frames (what a static program takes)."""
    from mmedge.recipe import load_recipe

    loaded = load_recipe(RECIPES[recipe])
    if loaded.eval is None:
        return None
    opt = loaded.axes["frames"].opt
    out = root / f"{recipe}-eval-frames{opt}"
    out.mkdir(exist_ok=True)
    for shard in sorted(loaded.eval.path.glob("*.npz")):
        with np.load(shard) as npz:
            if npz["audio"].shape[-1] == opt:
                shutil.copy(shard, out / shard.name)
    return out


def built(root: Path, recipe: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    samples = None if recipe == "reference" else 32
    subset = _frames_subset(recipe, root)
    for target in TARGETS:
        for precision in PRECISIONS:
            key = f"{target}-{precision}"
            static = target.endswith("-static")
            manifest = build(
                recipe,
                precision,
                root / f"{recipe}-{key}",
                overrides=STATIC if static else None,
                target=target.removesuffix("-static"),
            )
            report = None
            if not static or subset is not None:
                where = root / f"{recipe}-{key}"
                report = compare_artifact(
                    where, samples=samples, eval_path=subset if static else None
                ).to_json()
            found[key] = {
                "bytes": manifest["artifact"]["bytes"],
                "build": manifest["steps"]["build"],
                "compare": report,
            }
    return found


def latency(root: Path, recipe: str, rounds: int) -> dict[str, Any]:
    iterations = 200 if recipe == "reference" else 30
    overrides = {"batch": 1, "iterations": iterations, "warmup": 10, "threads": 2}
    calls = {
        f"{t}-{p}": lambda d=root / f"{recipe}-{t}-{p}": bench_artifact(d, overrides).latency_ms.p50
        for t in TARGETS
        for p in PRECISIONS
    }
    found = interleaved(calls, rounds)
    ratio = {
        f"{t}-{p}": paired_interval(found[f"{t}-{p}"], found[f"onnxruntime-{p}"]).to_json()
        for t in TARGETS[:2]
        for p in PRECISIONS
    }
    return {
        "p50_ms": {k: median(v) for k, v in found.items()},
        "executorch_over_ort": ratio,
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            results[recipe] = {"built": built(Path(tmp), recipe)}
            results[recipe]["latency"] = latency(Path(tmp), recipe, args.rounds)
    write_results("executorch_vs_ort", {"results": results}, _markdown(results, args.rounds))


def _markdown(results: dict[str, Any], rounds: int) -> str:
    rows = []
    for recipe, r in results.items():
        lat = r["latency"]
        for t in TARGETS:
            for p in PRECISIONS:
                b = r["built"][f"{t}-{p}"]
                c = b["compare"] or {}
                acc = c.get("accuracy")
                ratio = lat["executorch_over_ort"].get(f"{t}-{p}")
                agreement = c.get("top1_agreement")
                rows.append(
                    [
                        recipe,
                        f"{t} {p}",
                        f"{b['bytes'] / 1e6:.2f}",
                        "-" if acc is None else f"{acc['candidate']:.2f}% ({c['samples']} samples)",
                        "-" if agreement is None else f"{100 * agreement:.2f}%",
                        f"{lat['p50_ms'][f'{t}-{p}']:.3f}",
                        "-"
                        if ratio is None
                        else f"{ratio['median']:.2f} [{ratio['low']:.2f}, {ratio['high']:.2f}]",
                    ]
                )
    text = (
        f"Batch 1, 2 threads, {rounds} interleaved rounds. Agreement: top-1 against PyTorch FP32. "
        "ET/ORT: ExecuTorch p50 over ONNX Runtime p50 at the same precision (below 1: "
        "ExecuTorch faster), median of per-round ratios [95% bootstrap interval].\n\n"
    )
    text += table(
        ["recipe", "variant", "MB", "accuracy", "top-1 agreement", "p50 ms", "ET/ORT p50"], rows
    )
    text += "\nWhat XNNPACK took, and what ran in portable kernels:\n\n"
    rows = []
    for recipe, r in results.items():
        for t in TARGETS[:2]:
            for p in PRECISIONS:
                d = r["built"][f"{t}-{p}"]["build"]["delegation"]
                top = ", ".join(f"{op} ({n})" for op, n in list(d["portable_ops"].items())[:6])
                rows.append(
                    [recipe, f"{t} {p}", d["subgraphs"], d["delegated_nodes"], d["portable_nodes"],
                     top or "-"]
                )  # fmt: skip
    text += table(
        ["recipe", "program", "XNNPACK subgraphs", "delegated nodes", "portable nodes",
         "portable ops (most frequent)"],
        rows,
    )  # fmt: skip
    return text


if __name__ == "__main__":
    main()
