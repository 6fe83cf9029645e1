"""Is `mmedge bench` honest on OpenVINO? Against `benchmark_app` on the same IR, in one run.

Latency mode: mmedge's p50 against benchmark_app's median with `-hint latency -api sync`.
Throughput mode: samples/s against benchmark_app's `-hint throughput -api async`. Same IR, same
static input shapes, same inference precision (f32; left alone, both would run bf16 on this
CPU), same time window; mmedge uses 2 threads, which is what benchmark_app's hints give on a
2-core machine (it refuses -nthreads with a hint; the recorded configs say what each ran).
Rounds alternate the tools; figures are medians over rounds of per-round ratios.

    python -m benchmarks.openvino_vs_benchmark_app [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import build, interleaved, median, paired_ratio, table, write_results
from mmedge.artifacts import bench_artifact, open_artifact
from mmedge.inputs import dummy_feeds


def benchmark_app(
    xml: Path, shapes: dict[str, tuple[int, ...]], hint: str, seconds: int
) -> dict[str, float]:
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    shape = ",".join(f"{name}[{','.join(map(str, dims))}]" for name, dims in shapes.items())
    api = "sync" if hint == "latency" else "async"
    cmd = [
        tool,
        "-m",
        str(xml),
        "-d",
        "CPU",
        "-hint",
        hint,
        "-api",
        api,
        "-shape",
        shape,
        "-t",
        str(seconds),
        "-infer_precision",
        "f32",
    ]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"Median:\s+([\d.]+)\s+(us|ms)", text).groups()  # type: ignore[union-attr]
    threads = re.search(r"INFERENCE_NUM_THREADS: (\d+)", text)
    streams = re.search(r"NUM_STREAMS: (\d+)", text)
    return {
        "median_ms": float(value) / (1000.0 if unit == "us" else 1.0),
        "throughput_per_s": float(re.search(r"Throughput:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
        "threads": float(threads.group(1)) if threads else float("nan"),
        "streams": float(streams.group(1)) if streams else float("nan"),
    }


def measure(directory: Path, rounds: int, seconds: int) -> dict[str, Any]:
    _, recipe, xml = open_artifact(directory)
    shapes = {k: tuple(v.shape) for k, v in dummy_feeds(recipe, "opt", batch=1).items()}
    ours = {"duration_s": seconds, "warmup": 10, "threads": 2, "batch": 1}
    runtime_p50: list[float] = []  # OpenVINO's own timer, from the same runs as the wall clock

    def ours_latency() -> float:
        result = bench_artifact(directory, ours)
        assert result.runtime_latency_ms is not None
        runtime_p50.append(result.runtime_latency_ms.p50)
        return result.latency_ms.p50

    found = interleaved(
        {
            "mmedge_latency": ours_latency,
            "app_latency": lambda: benchmark_app(xml, shapes, "latency", seconds)["median_ms"],
            "mmedge_tput": lambda: (
                bench_artifact(directory, {**ours, "mode": "throughput"}).throughput_per_s
            ),
            "app_tput": lambda: benchmark_app(xml, shapes, "throughput", seconds)[
                "throughput_per_s"
            ],
        },
        rounds,
    )
    found["mmedge_runtime_latency"] = runtime_p50
    config = {hint: benchmark_app(xml, shapes, hint, 1) for hint in ("latency", "throughput")}
    return {
        "runtime_latency_ratio": paired_ratio(runtime_p50, found["app_latency"]),
        "wall_latency_ratio": paired_ratio(found["mmedge_latency"], found["app_latency"]),
        "throughput_ratio": paired_ratio(found["mmedge_tput"], found["app_tput"]),
        "medians": {k: median(v) for k, v in found.items()},
        "benchmark_app_config": {
            h: {"threads": c["threads"], "streams": c["streams"]} for h, c in config.items()
        },
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="per measurement, whole seconds")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("reference", "reference-large"):
            for precision in ("fp32", "int8"):
                out = Path(tmp) / f"{recipe}-{precision}"
                build(recipe, precision, out, target="openvino")
                r = measure(out, args.rounds, args.seconds)
                results[f"{recipe}/{precision}"] = r
                m = r["medians"]
                rows.append(
                    [
                        recipe,
                        precision,
                        f"{m['app_latency']:.3f}",
                        f"{m['mmedge_runtime_latency']:.3f}",
                        f"{100 * (r['runtime_latency_ratio'] - 1):+.1f}%",
                        f"{m['mmedge_latency']:.3f}",
                        f"{100 * (r['wall_latency_ratio'] - 1):+.1f}%",
                        f"{m['app_tput']:.1f}",
                        f"{m['mmedge_tput']:.1f}",
                        f"{100 * (r['throughput_ratio'] - 1):+.1f}%",
                    ]
                )
    markdown = (
        "`mmedge bench` against `benchmark_app` on the same OpenVINO IR (batch 1, opt shapes, "
        f"f32 inference precision, {args.seconds} s windows, {args.rounds} alternating rounds). "
        "benchmark_app's latency is OpenVINO's own per-request timer; mmedge records that timer "
        "and, as its headline figure, the wall clock around the inference call (which adds the "
        "Python call). Differences are medians of per-round ratios; other columns are medians. "
        "Target: within 5%.\n\n"
        + table(
            [
                "recipe",
                "IR",
                "benchmark_app median ms",
                "mmedge, OpenVINO timer p50 ms",
                "diff",
                "mmedge, wall clock p50 ms",
                "diff",
                "benchmark_app FPS",
                "mmedge samples/s",
                "diff",
            ],
            rows,
        )
    )
    write_results("openvino_vs_benchmark_app", {"results": results}, markdown)


if __name__ == "__main__":
    main()
