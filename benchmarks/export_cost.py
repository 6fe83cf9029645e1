"""Export time of the TorchScript and dynamo exporters on both reference recipes.

Times `export_onnx` alone (the model is loaded once; median of repeats), and records whether
each exporter kept every branch recoverable from ONNX node names.

    python -m benchmarks.export_cost [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from benchmarks.common import RECIPES, median, table, write_results
from mmedge.branches import UNASSIGNED, nodes_by_branch
from mmedge.export import export_onnx
from mmedge.model import load_torch_model
from mmedge.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("reference", "reference-large"):
            for exporter in ("torchscript", "dynamo"):
                recipe = load_recipe(
                    RECIPES[name], {"export.exporter": exporter, "export.fallback": False}
                )
                model = load_torch_model(recipe)
                out = Path(tmp) / f"{name}-{exporter}.onnx"
                seconds = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    export_onnx(model, recipe, out)
                    seconds.append(time.perf_counter() - start)
                branches = nodes_by_branch(onnx.load(str(out)), recipe.branches)
                counts = {b: len(nodes) for b, nodes in branches.items()}
                results[f"{name}/{exporter}"] = {"seconds": seconds, "nodes_per_branch": counts}
                every = all(counts[b] for b in recipe.branches)
                rows.append(
                    [
                        name,
                        exporter,
                        f"{median(seconds):.2f}",
                        ", ".join(f"{b} {n}" for b, n in counts.items() if b != UNASSIGNED),
                        counts[UNASSIGNED],
                        "yes" if every else "NO",
                    ]
                )
    markdown = (
        f"`export_onnx` wall time (median of {args.repeats}), and ONNX nodes mapped back to each "
        "branch through their names ('other' = top-level nodes such as the fusion concat).\n\n"
        + table(
            ["recipe", "exporter", "seconds", "nodes per branch", "other", "every branch found"],
            rows,
        )
    )
    write_results("export_cost", {"results": results}, markdown)


if __name__ == "__main__":
    main()
