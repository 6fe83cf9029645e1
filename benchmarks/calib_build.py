"""`mmedge calib build` from raw files: wall time and peak memory for 1,000 and 10,000 samples.

The raw files (PNG scans, text files, 8 kHz WAV clips, labels) are written first by
`python -m mmedge.reference.raw` and not timed. Each build runs the real command in a fresh
process, so Python start-up and imports are counted. Memory should not grow with N: the build
holds one shard of decoded samples at a time (plus a few hundred bytes of metadata per file).

    python -m benchmarks.calib_build [--repeats 3] [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RECIPES, build, fresh_process, median, table, write_results
from mmedge.reference import data
from mmedge.reference.raw import write_raw


def build_once(raw: Path, out: Path) -> dict[str, Any]:
    mmedge = Path(sys.executable).with_name("mmedge")
    cmd = [str(mmedge), "calib", "build", str(RECIPES["reference"]), "--from", str(raw)]
    result = fresh_process([*cmd, "-o", str(out), "--force", "--json"])
    manifest = json.loads(result["stdout"])
    return {
        "wall_s": result["wall_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "build_s": manifest["seconds"],
        "samples": manifest["calibration"]["samples"],
        "shards": manifest["calibration"]["shards"],
        "set_mb": manifest["artifact"]["bytes"] / 1e6,
    }


def accuracy_with_rebuilt_set(tmp: Path) -> dict[str, float]:
    """INT8 (ONNX Runtime) held-out accuracy calibrated on the shipped shards vs on the same
    256 samples rebuilt from raw files (seed 1000 = the shipped set's draws)."""
    from mmedge.artifacts import compare_artifact
    from mmedge.data.build import build_calibration
    from mmedge.recipe import load_recipe

    raw, calib = tmp / "raw-accuracy", tmp / "calib-accuracy"
    write_raw(raw, data.split("train"), samples=256, shard_size=64, seed=1000)
    build_calibration(load_recipe(RECIPES["reference"]), raw, calib)
    found: dict[str, float] = {}
    for name, overrides in (("shipped", None), ("rebuilt", {"calibration.path": str(calib)})):
        out = tmp / f"int8-{name}"
        build("reference", "int8", out, overrides)
        report = compare_artifact(out)
        assert report.accuracy is not None
        found[name] = report.accuracy["candidate"]
    found["fp32"] = report.accuracy["reference"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            raw = Path(tmp) / f"raw-{n}"
            write_raw(raw, data.split("train"), samples=n, shard_size=64, seed=1000)
            raw_mb = sum(f.stat().st_size for f in raw.rglob("*") if f.is_file()) / 1e6
            runs = [build_once(raw, Path(tmp) / f"calib-{n}") for _ in range(args.repeats)]
            summary = {
                k: median([r[k] for r in runs]) for k in ("wall_s", "peak_rss_mb", "build_s")
            }
            results[str(n)] = {"runs": runs, "median": summary, "raw_mb": raw_mb}
            rows.append(
                [
                    f"{n:,}",
                    f"{raw_mb:.0f}",
                    f"{summary['wall_s']:.1f}",
                    f"{summary['build_s']:.1f}",
                    f"{n / summary['build_s']:.0f}",
                    f"{summary['peak_rss_mb']:.0f}",
                    f"{runs[0]['set_mb']:.1f} ({runs[0]['shards']} shards)",
                ]
            )
        acc = accuracy_with_rebuilt_set(Path(tmp))
    results["accuracy"] = acc
    markdown = (
        "`mmedge calib build recipes/reference.yaml --from RAW` on raw tri-modal files (32x32 PNG, "
        "text, 8 kHz WAV of 0.5-2.1 s; labels), as a fresh process; median of "
        f"{args.repeats} runs. Target: 1,000 samples in <= 30 s; peak memory independent of N.\n\n"
        + table(
            [
                "samples",
                "raw files MB",
                "command wall s",
                "build s",
                "samples/s",
                "peak RSS MB",
                "set MB",
            ],
            rows,
        )
        + "\n\nINT8 (ONNX Runtime, MinMax) held-out accuracy of `reference` (FP32 "
        f"{acc['fp32']:.2f}%), calibrated on the shipped 256-sample set: {acc['shipped']:.2f}%; "
        f"on the same samples rebuilt from raw files: {acc['rebuilt']:.2f}%.\n"
    )
    write_results("calib_build", {"results": results}, markdown)


if __name__ == "__main__":
    main()
