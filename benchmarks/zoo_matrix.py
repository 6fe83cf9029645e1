"""The zoo matrix: every real architecture in ``tests/zoo.py`` through every mmedge command.

Each zoo entry (transformers BERT/DistilBERT/ViT/CLIP/Whisper/Wav2Vec2/ResNet/EfficientNet/
MobileNetV2/LeViT, GRU and LSTM branches, an MTCNN-style channel-last flatten; concat, gated
and cross-attention fusion) runs through the CLI in-process, exactly as a user types it. A
cell passes when the command exits 0; ``gate`` means compare ran and the recipe's accuracy
gate failed (a measurement, not a tool failure), ``rules`` that ``mmedge check`` found
TensorRT rule violations and named them. The tests (``tests/test_zoo.py``) run the same
cells and fail on any ``fail``; this script records the table the README shows.

    python -m benchmarks.zoo_matrix [--entries NAME ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import table, write_results
from tests.zoo import ZOO, zoo_recipe

# Cells in the order they run; later ones reuse earlier artifacts.
CELLS = (
    "inspect",
    "export torchscript",
    "export dynamo",
    "ort fp32 compare",
    "ort int8",
    "ort int8 compare",
    "openvino fp32",
    "openvino int8",
    "tensorrt bundle",
    "tensorrt check",
    "prune 0.3",
    "prune 0.5",
    "pruned compare",
    "bench",
)
PASSING = {"pass", "gate", "rules", "partial"}


@dataclass
class Cell:
    status: str  # pass | gate | rules | partial (a branch left whole) | fail | skipped
    seconds: float
    detail: str = ""  # the error's last line for a failure; what was measured otherwise


def _last_line(text: str) -> str:
    """The error line of mmedge's message (the hint follows it), else the last line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


class Matrix:
    """Runs one zoo entry's cells in a work directory."""

    def __init__(self, name: str, work: Path) -> None:
        from typer.testing import CliRunner

        self.name, self.work = name, work
        self.recipe = zoo_recipe(name, work / "recipe")
        self.runner = CliRunner()
        self.cells: dict[str, Cell] = {}

    def invoke(self, cell: str, *args: Any, ok: dict[int, str] | None = None) -> Any:
        from mmedge.cli import app

        start = time.perf_counter()
        result = self.runner.invoke(app, [str(a) for a in args])
        seconds = time.perf_counter() - start
        status = "pass" if result.exit_code == 0 else (ok or {}).get(result.exit_code, "fail")
        detail = "" if status == "pass" else _last_line(result.stderr or result.stdout)
        if status == "fail":
            detail = f"exit {result.exit_code}: {detail}"
        self.cells[cell] = Cell(status, round(seconds, 2), detail)
        return result

    def passed(self, *cells: str) -> bool:
        return all(self.cells.get(c, Cell("skipped", 0)).status in PASSING for c in cells)

    def skip(self, cell: str, why: str) -> None:
        self.cells[cell] = Cell("skipped", 0.0, why)

    def run(self) -> dict[str, Cell]:
        w, recipe = self.work, self.recipe
        self.invoke("inspect", "inspect", recipe)
        self.invoke("export torchscript", "export", recipe, "-o", w / "fp32", "--json")
        self.invoke("export dynamo", "export", recipe, "-o", w / "dynamo", "--exporter", "dynamo")
        if self.passed("export torchscript"):
            self._compare("ort fp32 compare", w / "fp32")
            self.invoke("bench", "bench", w / "fp32", "--json")
        else:
            self.skip("ort fp32 compare", "no FP32 export")
            self.skip("bench", "no FP32 export")
        self.invoke("ort int8", "quantize", recipe, "-o", w / "int8")
        if self.passed("ort int8"):
            self._compare("ort int8 compare", w / "int8")
        else:
            self.skip("ort int8 compare", "no INT8 artifact")
        for precision in ("fp32", "int8"):
            self.invoke(
                f"openvino {precision}",
                *("export", recipe, "-t", "openvino", "-p", precision, "-o", w / f"ov-{precision}"),
            )
        self.invoke("tensorrt bundle", "export", recipe, "-t", "tensorrt", "-o", w / "trt")
        if self.passed("tensorrt bundle"):
            self.invoke("tensorrt check", "check", w / "trt", ok={12: "rules"})
        else:
            self.skip("tensorrt check", "no bundle")
        for ratio in ("0.3", "0.5"):
            self.invoke(
                f"prune {ratio}",
                *("prune", recipe, "--ratio", ratio, "--recover", "distill", "--epochs", "1"),
                *("-o", w / f"pruned-{ratio}", "--json"),
            )
            if self.passed(f"prune {ratio}"):
                cell = self.cells[f"prune {ratio}"]
                cell.detail, whole = _pruned(w / f"pruned-{ratio}")
                cell.status = "partial" if whole else cell.status
        if self.passed("prune 0.5"):
            pruned = w / "pruned-0.5" / "recipe.yaml"
            self.invoke("pruned export", "export", pruned, "-o", w / "pruned-fp32")
            if self.passed("pruned export"):
                self._compare("pruned compare", w / "pruned-fp32")
            else:
                self.cells["pruned compare"] = self.cells["pruned export"]
            del self.cells["pruned export"]
        else:
            self.skip("pruned compare", "prune 0.5 failed")
        return {c: self.cells[c] for c in CELLS}

    def _compare(self, cell: str, artifact: Path) -> None:
        result = self.invoke(cell, "compare", artifact, "--json", ok={7: "gate"})
        if self.cells[cell].status in PASSING:
            try:
                outputs = json.loads(result.stdout)["outputs"]
                cosine = min(float(o["cosine"]) for o in outputs.values())
                self.cells[cell].detail = f"cosine {cosine:.4f}"
            except (ValueError, KeyError, TypeError):
                pass


def _pruned(directory: Path) -> tuple[str, bool]:
    """What pruning did (parameters kept, layers left whole, branches pruned on their own
    graphs), and whether a whole branch was left unpruned."""
    report = json.loads((directory / "report.json").read_text())
    before, after = report["before"]["stats"]["total"], report["after"]["stats"]["total"]
    structured = report["structured"]
    whole = structured.get("left_whole", {})
    asked = report["config"]
    # A branch asked to shrink whose applied ratio mmedge set to 0 (it could not prune it).
    whole_branches = [
        b
        for b, ratio in structured["ratios"].items()
        if ratio == 0 and asked["branches"].get(b, asked["ratio"]) > 0
    ]
    parts = [f"params {after['params'] / before['params']:.0%} kept"]
    if whole:
        parts.append(f"{len(whole)} left whole")
    if structured.get("by_branch"):
        parts.append("each branch on its own graph")
    if whole_branches:
        parts.append(f"left whole: {', '.join(whole_branches)}")
    return "; ".join(parts), bool(whole_branches)


def run_matrix(names: list[str], root: Path) -> dict[str, dict[str, Cell]]:
    return {name: Matrix(name, root / name).run() for name in names}


SYMBOL = {
    "pass": "✓",
    "gate": "✓ (gate)",
    "rules": "✓ (rules)",
    "partial": "✓ (a branch whole)",
    "fail": "✗",
    "skipped": "-",
}


def markdown(found: dict[str, dict[str, Cell]]) -> str:
    rows = [[name, *(SYMBOL[c.status] for c in cells.values())] for name, cells in found.items()]
    total = sum(len(c) for c in found.values())
    passed = sum(c.status in PASSING for cells in found.values() for c in cells.values())
    notes = [
        f"- **{name} / {cell}**: {c.status}: {c.detail}"
        for name, cells in found.items()
        for cell, c in cells.items()
        if c.status in {"fail", "skipped", "rules", "gate"} or cell.startswith("prune ")
    ]
    return (
        table(["entry", *CELLS], rows)
        + f"\n{passed} of {total} cells pass.\n\n"
        + ("\n".join(notes) + "\n" if notes else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="*", default=list(ZOO))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmedge-zoo-") as tmp:
        start = time.perf_counter()
        found = run_matrix(args.entries, Path(tmp))
        seconds = time.perf_counter() - start
    data = {
        "entries": {n: ZOO[n].notes for n in args.entries},
        "cells": {n: {c: asdict(v) for c, v in cells.items()} for n, cells in found.items()},
        "seconds": round(seconds, 1),
    }
    write_results("zoo_matrix", data, markdown(found) + f"\nWhole matrix: {seconds:.0f} s.\n")


if __name__ == "__main__":
    main()
