"""The pretrained recipe through every target: FP32 → pruned → INT8, agreement, size, latency.

``mmedge run recipes/pretrained.yaml`` (three pretrained branches from PyPI wheels, see
recipes/PRETRAINED.md; 30% per branch, distilled at mmedge's defaults), then its report's
figures recorded here. ``--from RUN_DIR`` records a run already made instead of running again
(the run takes ~6 minutes on 2 cores).

    python -m benchmarks.realmodel.data runs/realmodel
    python -m benchmarks.pretrained_run [--from runs/pretrained/run]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, table, write_results

RECIPE = ROOT / "recipes" / "pretrained.yaml"


def run(directory: Path) -> None:
    from typer.testing import CliRunner

    from mmedge.cli import app

    result = CliRunner().invoke(app, ["run", str(RECIPE), "-o", str(directory)])
    if result.exit_code not in (0, 7):  # 7: some gate failed, which is a figure too
        raise SystemExit(f"mmedge run failed ({result.exit_code}): {result.stderr[-2000:]}")


def record(directory: Path) -> None:
    from mmedge.run.report import VARIANT_HEADERS, variant_rows

    report: dict[str, Any] = json.loads((directory / "report.json").read_text())
    # The run report's own variant rows, plus which branch INT8 hurt most and the gate.
    rows = [
        [*row, v.get("most_affected") or "-", _gate(v)]
        for row, v in zip(variant_rows(report), report["variants"], strict=True)
    ]
    text = (
        "`mmedge run recipes/pretrained.yaml`: agreement and cosine against PyTorch FP32 of the "
        "model each variant was built from (the pruned model for the pruned variants); accuracy "
        "on the recipe's eval split (256 samples); p50 and speed-up from the run's interleaved "
        "rounds against the unpruned ONNX Runtime FP32 model; TensorRT: bundle only (no "
        "TensorRT here).\n\n" + table([*VARIANT_HEADERS, "most affected branch", "gate"], rows)
    )
    write_results("pretrained_run", {"report": report}, text)
    print(text)


def _gate(variant: dict[str, Any]) -> str:
    if variant.get("status") != "ok":
        return str(variant.get("status", "-"))
    if variant.get("top1_agreement") is None:
        return "not compared here"
    return "passed" if variant.get("gate_passed") else "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=None)
    args = parser.parse_args()
    if args.source is not None:
        record(args.source)
        return
    with tempfile.TemporaryDirectory(prefix="mmedge-pretrained-") as tmp:
        run(Path(tmp) / "run")
        record(Path(tmp) / "run")


if __name__ == "__main__":
    main()
