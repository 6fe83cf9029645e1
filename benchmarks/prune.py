"""Structured pruning at 50% on both reference recipes: latency, accuracy, size, MACs.

For each recipe: `mmedge prune` with the recipe's own prune section (50% of every branch's
channels and heads; `reference` then distils from the unpruned model, `reference-large` has
random weights and nothing to recover), then ONNX Runtime FP32 artifacts of the original and
the pruned model and an INT8 artifact of the pruned one. Timed with `mmedge bench`, 2 threads,
batch 1 and 8, in interleaved rounds; speedups are medians of per-round ratios.

MACs are checked against an independent count: Torch-Pruning's module-hook counter on a model
pruned the same way (magnitude importance is deterministic). That counter sees Conv and Linear
modules (it adds bias adds, which are taken out here) but not the attention matmuls written as
``q @ k`` in a module's forward, so those are added analytically: 2 x B x S x S x width per
transformer layer.

    python -m benchmarks.prune [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RECIPES, interleaved, median, paired_ratio, table, write_results
from mmedge.artifacts import bench_artifact, build_artifact, compare_artifact
from mmedge.recipe import Recipe, load_recipe

BATCHES = (1, 8)


def independent_macs(recipe: Recipe, pruned: bool) -> dict[str, int]:
    """Per-branch MACs from Torch-Pruning's counter (Conv/Linear) plus attention matmuls."""
    import torch
    import torch_pruning as tp
    from torch import nn

    from mmedge.branches import branch_of
    from mmedge.export import trace_feeds
    from mmedge.inputs import dummy_feeds
    from mmedge.model import load_torch_model
    from mmedge.prune.structured import structured_prune

    model = load_torch_model(recipe)
    if pruned:
        assert recipe.prune is not None
        traced = {k: torch.from_numpy(v) for k, v in trace_feeds(recipe).items()}
        model = structured_prune(model, traced, recipe, recipe.prune).model
    feeds = {k: torch.from_numpy(v) for k, v in dummy_feeds(recipe, "opt", batch=1).items()}
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, feeds, layer_wise=True)
    found = dict.fromkeys(recipe.branches, 0)
    seq = int(feeds["input_ids"].shape[1])
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            count = _without_bias(module, int(layer_macs[module] or 0))
            found[branch_of(name, recipe.branches)] += count
        if type(module).__name__ == "Attention":  # q @ k^T and softmax @ v, batch 1
            width = module.q_proj.out_features
            found[branch_of(name, recipe.branches)] += 2 * seq * seq * int(width)
    return found


def _without_bias(module: Any, count: int) -> int:
    """Take out what Torch-Pruning's counter adds for a bias: one add per output feature for
    Linear (once, not per row), one per output element for Conv (count = n x (fan_in + 1))."""
    if module.bias is None:
        return count
    if type(module).__name__ == "Linear":
        return count - int(module.out_features)
    fan_in = int(module.weight[0].numel())
    return count // (fan_in + 1) * fan_in


def prune_and_build(root: Path, name: str) -> dict[str, Any]:
    from mmedge.prune.artifact import RECIPE, prune_artifact

    recipe = load_recipe(RECIPES[name])
    manifest = prune_artifact(recipe, root / f"{name}-pruned", force=True)
    report = manifest["steps"]["prune"]
    pruned = load_recipe(root / f"{name}-pruned" / RECIPE)
    sizes = {}
    for tag, rec, precision in (
        ("original-fp32", recipe, "fp32"),
        ("pruned-fp32", pruned, "fp32"),
        ("pruned-int8", pruned, "int8"),
    ):
        built = build_artifact(rec, "onnxruntime", precision, root / f"{name}-{tag}", force=True)
        sizes[tag] = built["artifact"]["bytes"]
    samples = None if name == "reference" else 32
    compares = {
        tag: compare_artifact(root / f"{name}-{tag}", samples=samples).to_json()
        for tag in ("original-fp32", "pruned-fp32", "pruned-int8")
    }
    macs_report = {
        when: {b: s["macs"] for b, s in report[when]["stats"].items() if b in recipe.branches}
        for when in ("before", "after")
    }
    macs_counted = {
        "before": independent_macs(recipe, pruned=False),
        "after": independent_macs(recipe, pruned=True),
    }
    return {
        "structured": report["structured"],
        "accuracy": {
            "before": report["before"]["accuracy"],
            "after_pruning": report["after_pruning_accuracy"],
            "after_recovery": report["after"]["accuracy"],
            "recovery_seconds": report.get("recovery", {}).get("seconds"),
        },
        "params": {w: report[w]["stats"]["total"]["params"] for w in ("before", "after")},
        "macs": {"report": macs_report, "independent": macs_counted},
        "bytes": sizes,
        "int8_size_vs_original_fp32": sizes["pruned-int8"] / sizes["original-fp32"],
        "compare": compares,
    }


def latency(root: Path, name: str, rounds: int) -> dict[str, Any]:
    iterations = 200 if name == "reference" else 30
    calls = {}
    for tag in ("original-fp32", "pruned-fp32", "pruned-int8"):
        for batch in BATCHES:
            overrides = {"batch": batch, "iterations": iterations, "warmup": 10, "threads": 2}
            calls[f"{tag}/b{batch}"] = lambda d=root / f"{name}-{tag}", o=overrides: (
                bench_artifact(d, o).latency_ms.p50
            )
    found = interleaved(calls, rounds)
    speedup = {
        f"b{b}": {
            tag: paired_ratio(found[f"original-fp32/b{b}"], found[f"{tag}/b{b}"])
            for tag in ("pruned-fp32", "pruned-int8")
        }
        for b in BATCHES
    }
    return {
        "p50_ms": {k: median(v) for k, v in found.items()},
        "speedup_vs_original_fp32": speedup,
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RECIPES:
            entry = prune_and_build(Path(tmp), name)
            entry["latency"] = latency(Path(tmp), name, args.rounds)
            results[name] = entry
    write_results("prune", {"results": results}, _markdown(results, args.rounds))


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _markdown(results: dict[str, Any], rounds: int) -> str:
    rows = []
    for name, r in results.items():
        lat = r["latency"]
        for b in BATCHES:
            p50 = lat["p50_ms"]
            s = lat["speedup_vs_original_fp32"][f"b{b}"]
            rows.append(
                [
                    name,
                    b,
                    _ms(p50[f"original-fp32/b{b}"]),
                    _ms(p50[f"pruned-fp32/b{b}"]),
                    f"{s['pruned-fp32']:.2f}x",
                    _ms(p50[f"pruned-int8/b{b}"]),
                    f"{s['pruned-int8']:.2f}x",
                ]
            )
    text = f"ONNX Runtime, 2 threads; p50 ms, median of {rounds} interleaved rounds; speedups are "
    text += "medians of per-round ratios against the unpruned FP32 model.\n\n"
    text += table(
        [
            "recipe",
            "batch",
            "unpruned FP32",
            "pruned FP32",
            "speedup",
            "pruned INT8",
            "speedup",
        ],
        rows,
    )
    rows = []
    for name, r in results.items():
        acc = r["accuracy"]
        b = r["bytes"]

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}%"

        rows.append(
            [
                name,
                f"{r['params']['before'] / 1e6:.2f}M -> {r['params']['after'] / 1e6:.2f}M",
                pct(acc["before"]),
                pct(acc["after_pruning"]),
                pct(acc["after_recovery"]),
                pct(r["compare"]["pruned-int8"]["accuracy"]["candidate"])
                if r["compare"]["pruned-int8"].get("accuracy")
                else "-",
                f"{b['original-fp32'] / 1e6:.2f} MB",
                f"{b['pruned-int8'] / 1e6:.2f} MB ({100 * r['int8_size_vs_original_fp32']:.1f}%)",
            ]
        )
    text += "\nAccuracy on the held-out split (`reference` only; `reference-large` has random "
    text += "weights). Sizes are the ONNX Runtime artifacts' bytes.\n\n"
    text += table(
        [
            "recipe",
            "params",
            "unpruned",
            "pruned",
            "recovered",
            "pruned INT8 (ORT)",
            "unpruned FP32 size",
            "pruned INT8 size",
        ],
        rows,
    )
    rows = []
    for name, r in results.items():
        for when in ("before", "after"):
            rep, ind = r["macs"]["report"][when], r["macs"]["independent"][when]
            for branch in rep:
                same = "yes" if rep[branch] == ind[branch] else "NO"
                rows.append([name, when, branch, f"{rep[branch]:,}", f"{ind[branch]:,}", same])
    text += "\nMACs per branch, batch 1 at the recipe's opt shapes: the prune report against "
    text += "Torch-Pruning's counter (Conv/Linear, bias adds removed) plus attention matmuls.\n\n"
    text += table(["recipe", "when", "branch", "report", "independent", "equal"], rows)
    return text


if __name__ == "__main__":
    main()
