"""`mmedge run recipes/reference.yaml`: wall time of a whole run, then of a run with nothing
changed (every step's inputs hashed, every step skipped).

The whole run: prune + distillation recovery, ONNX Runtime and OpenVINO at FP32 and INT8, a
TensorRT INT8 bundle and its rule check, the unpruned baseline, compare, per-branch parity,
bench with per-branch profiling, report. Each run is a fresh process (imports counted).

    python -m benchmarks.run_cost
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RECIPES, fresh_process, table, write_results


def _report_row(v: dict[str, Any]) -> list[str]:
    worst = v.get("most_affected")
    sqnr = (v.get("branches") or {}).get(worst or "", {}).get("sqnr_db")
    lat = v.get("p50_rounds_ms")
    return [
        v["name"],
        "-" if v.get("accuracy") is None else f"{v['accuracy']:.2f}%",
        "-" if lat is None else f"{lat:.3f}",
        "-" if v.get("speedup") is None else f"{v['speedup']:.2f}x",
        "-" if worst is None else f"{worst} ({sqnr:.1f})",
        v.get("dominant_branch") or "-",
    ]


def main() -> None:
    mmedge = Path(sys.executable).with_name("mmedge")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [str(mmedge), "run", str(RECIPES["reference"]), "-o", str(out), "--json"]
        for label in ("first", "again"):
            result = fresh_process(cmd)
            steps = json.loads((out / "run.json").read_text())["steps"]
            if label == "first":
                results["report"] = json.loads((out / "report.json").read_text())["variants"]
            results[label] = {
                "wall_s": result["wall_s"],
                "peak_rss_mb": result["peak_rss_mb"],
                "statuses": {n: s["status"] for n, s in steps.items()},
                "step_seconds": {n: s.get("seconds") for n, s in steps.items()},
            }
    first, again = results["first"], results["again"]
    ran = sum(s == "ok" for s in first["statuses"].values())
    cached = sum(s == "cached" for s in again["statuses"].values())
    slowest = sorted(first["step_seconds"].items(), key=lambda kv: -(kv[1] or 0))[:4]
    markdown = (
        "`mmedge run recipes/reference.yaml` in a fresh process (targets: ONNX Runtime and "
        "OpenVINO FP32/INT8, TensorRT INT8 bundle; TensorRT engine steps skipped: no TensorRT "
        "here). Targets: whole run <= 300 s; unchanged re-run <= 10% of it.\n\n"
        + table(
            ["run", "wall s", "steps run", "steps skipped as unchanged", "peak RSS MB"],
            [
                ["first", f"{first['wall_s']:.1f}", str(ran), "0", f"{first['peak_rss_mb']:.0f}"],
                [
                    "again, nothing changed",
                    f"{again['wall_s']:.1f} ({100 * again['wall_s'] / first['wall_s']:.1f}%)",
                    str(sum(s == "ok" for s in again["statuses"].values())),
                    str(cached),
                    f"{again['peak_rss_mb']:.0f}",
                ],
            ],
        )
        + "\n\nSlowest steps of the first run: "
        + ", ".join(f"{n} {s:.1f} s" for n, s in slowest)
        + ".\n\nFrom the first run's report (accuracy: held-out split; p50: median over the "
        "run's latency rounds, which time every variant in turn; speed-up: median of the "
        "per-round ratios against the unpruned ONNX Runtime FP32 model; worst branch: lowest "
        "SQNR against the FP32 export, named below 40 dB):\n\n"
        + table(
            [
                "variant",
                "accuracy",
                "p50 ms",
                "speed-up",
                "worst branch (SQNR dB)",
                "slowest branch",
            ],
            [_report_row(v) for v in results["report"]],
        )
    )
    write_results("run_cost", {"results": results}, markdown)


if __name__ == "__main__":
    main()
