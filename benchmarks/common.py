"""Helpers shared by the benchmark scripts: building artifacts, interleaved timing, results.

Every figure a script records is produced by the run that writes it; results carry the host's
CPU features and library versions, since an INT8 figure means nothing without them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmedge import markdown
from mmedge.hardware import cpu_summary
from mmedge.rundir import atomic_write_json, atomic_write_text, versions

# The library's interleaved rounds (odd rounds reversed), re-exported for the scripts.
from mmedge.timing import Interval, ratio_interval
from mmedge.timing import interleaved as interleaved

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {
    "reference": ROOT / "recipes" / "reference.yaml",
    "reference-large": ROOT / "recipes" / "reference-large.yaml",
}


def build(
    recipe_name: str,
    precision: str,
    out: Path,
    overrides: dict[str, Any] | None = None,
    target: str = "onnxruntime",
) -> dict[str, Any]:
    from mmedge.artifacts import build_artifact
    from mmedge.recipe import load_recipe

    recipe = load_recipe(RECIPES[recipe_name], overrides)
    return build_artifact(recipe, target, precision, out, force=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the ratio of two figures measured back to back in each round
    (``paired_interval`` gives its interval too)."""
    return paired_interval(numerator, denominator).median


def paired_interval(numerator: list[float], denominator: list[float]) -> Interval:
    """This machine's load changes between rounds (p50s flip between modes ~1.7x apart when a
    neighbour is busy), so medians taken per side can land on different modes; a ratio within a
    round compares the two under the same conditions. The interval is a bootstrap over rounds."""
    return ratio_interval(numerator, denominator)


def p50_ms(samples_ms: np.ndarray) -> float:
    return float(np.percentile(samples_ms, 50))


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": cpu_summary(),
        "versions": versions(),
    }
    atomic_write_json(RESULTS / f"{name}.json", {"meta": meta, **data})
    cpu = meta["host"]
    header = (
        f"<!-- written by benchmarks/{Path(sys.argv[0]).name}; do not edit -->\n"
        f"Measured {meta['date']} on {cpu['name']} ({cpu['logical_cpus']} logical CPUs; "
        f"{', '.join(cpu['features']) or 'no SIMD features found'}); "
        f"onnxruntime {meta['versions'].get('onnxruntime', '-')}, "
        f"torch {meta['versions'].get('torch', '-')}.\n\n"
    )
    atomic_write_text(RESULTS / f"{name}.md", header + markdown)
    print(header + markdown)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """mmedge's own table renderer, ending with a newline for the records' Markdown."""
    return markdown.table(headers, rows) + "\n"


def fresh_process(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process: wall seconds, peak RSS (MB, from the kernel), stdout.

    A wrapper process per run, so RUSAGE_CHILDREN holds this command's peak alone.
    """
    code = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'wall_s': wall, 'peak_rss_mb': rss,"
        " 'stdout': p.stdout, 'stderr': p.stderr[-2000:]}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {result['stderr']}")
    return result
