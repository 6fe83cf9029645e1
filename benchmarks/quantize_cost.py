"""Wall time and peak memory of `mmedge quantize` with 256 calibration samples.

Each measurement runs the real command in a fresh process (so torch import, export, parity
check and calibration are all counted) and reads that process's peak RSS from the kernel.

    python -m benchmarks.quantize_cost [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RECIPES, fresh_process, median, table, write_results

METHODS = ("minmax", "entropy", "percentile")


def run_once(method: str, out: Path) -> dict[str, Any]:
    mmedge = Path(sys.executable).with_name("mmedge")
    cmd = [
        str(mmedge),
        "quantize",
        str(RECIPES["reference"]),
        "--samples",
        "256",
        "--method",
        method,
        "-o",
        str(out),
        "--force",
        "--json",
    ]
    result = fresh_process(cmd)
    manifest = json.loads(result.pop("stdout"))
    build = manifest["steps"]["build"]
    return {
        "wall_s": result["wall_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "quantize_step_s": build["seconds"],
        "samples": build["calibration_samples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            runs = [run_once(method, Path(tmp) / method) for _ in range(args.repeats)]
            summary = {
                key: median([r[key] for r in runs])
                for key in ("wall_s", "peak_rss_mb", "quantize_step_s")
            }
            results[method] = {"median": summary, "runs": runs}
            rows.append(
                [
                    method,
                    runs[0]["samples"],
                    f"{summary['wall_s']:.1f}",
                    f"{summary['quantize_step_s']:.2f}",
                    f"{summary['peak_rss_mb']:.0f}",
                ]
            )
    markdown = (
        "`mmedge quantize recipes/reference.yaml --samples 256` as a fresh process (torch import, "
        f"export, parity check, calibration, write); median of {args.repeats} runs. "
        "Target: ≤ 60 s wall.\n\n"
        + table(
            ["method", "calibration samples", "command wall s", "quantize step s", "peak RSS MB"],
            rows,
        )
    )
    write_results("quantize_cost", {"results": results}, markdown)


if __name__ == "__main__":
    main()
