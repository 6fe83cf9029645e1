"""Is `mmedge bench` honest? Its p50 against a bare `InferenceSession.run` loop, same run.

Both sides time the same artifact on the same inputs with the same session options (2 intra-op
threads, sequential execution, all graph optimizations). Rounds alternate between the two so
drifting machine load hits both alike; the figure is the median over rounds of each side's p50.

    python -m benchmarks.bench_overhead [--rounds 11] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (
    build,
    interleaved,
    median,
    p50_ms,
    paired_interval,
    table,
    write_results,
)
from mmedge.artifacts import bench_artifact, open_artifact
from mmedge.bench import time_calls
from mmedge.inputs import dummy_feeds


def bare_session_p50(
    artifact: Path, feeds: dict[str, np.ndarray], threads: int, warmup: int, iterations: int
) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(artifact), opts, providers=["CPUExecutionProvider"])
    return p50_ms(time_calls(lambda: session.run(None, feeds), warmup, iterations))


def measure(directory: Path, rounds: int, iterations: int, batch: int) -> dict[str, object]:
    _, recipe, artifact = open_artifact(directory)
    feeds = dummy_feeds(recipe, "opt", batch=batch)
    threads, warmup = 2, 30
    overrides = {"iterations": iterations, "warmup": warmup, "threads": threads, "batch": batch}
    found = interleaved(
        {
            "mmedge": lambda: bench_artifact(directory, overrides).latency_ms.p50,
            "bare": lambda: bare_session_p50(artifact, feeds, threads, warmup, iterations),
        },
        rounds,
    )
    interval = paired_interval(found["mmedge"], found["bare"])
    ours, bare = median(found["mmedge"]), median(found["bare"])
    return {
        "mmedge_p50_ms": ours,
        "bare_p50_ms": bare,
        "ratio": interval.median,
        "ratio_interval": interval.to_json(),
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=11)
    # Per round and side; `reference-large` runs a tenth as many (each call is ~100x longer).
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, object] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            for precision in ("fp32", "int8"):
                out = Path(tmp) / f"{recipe}-{precision}"
                build(recipe, precision, out)
                iterations = args.iterations if recipe == "reference" else args.iterations // 10
                r = measure(out, args.rounds, iterations, batch=1)
                results[f"{recipe}/{precision}"] = r
                i: dict[str, float] = r["ratio_interval"]  # type: ignore[assignment]
                rows.append(
                    [
                        recipe,
                        precision,
                        f"{r['mmedge_p50_ms']:.3f}",
                        f"{r['bare_p50_ms']:.3f}",
                        f"{100 * (r['ratio'] - 1):+.1f}%",
                        f"[{100 * (i['low'] - 1):+.1f}%, {100 * (i['high'] - 1):+.1f}%]",
                        "met"
                        if abs(i["low"] - 1) <= 0.03 and abs(i["high"] - 1) <= 0.03
                        else "not met",
                    ]
                )
    markdown = (
        "`mmedge bench` p50 vs a bare `InferenceSession.run` loop (batch 1, 2 threads, opt "
        f"shapes), {args.rounds} rounds alternating the two. 'difference' is the median over "
        "rounds of the per-round ratio, with its 95% bootstrap interval; the p50 columns are medians "
        "over rounds of each side. Target: within 3%, met when the whole interval is.\n\n"
        + table(
            [
                "recipe",
                "precision",
                "mmedge p50 ms",
                "bare p50 ms",
                "difference",
                "interval",
                "within 3%",
            ],
            rows,
        )
    )
    write_results("bench_overhead", {"results": results}, markdown)


if __name__ == "__main__":
    main()
