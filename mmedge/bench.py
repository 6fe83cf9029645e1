"""Latency benchmarking: a lean timing loop, separate from the pure statistics.

The loop times only the call it is given (feeds are prepared before, outputs are not copied),
so an mmedge figure can be held against a bare ``InferenceSession.run`` loop: see
``benchmarks/bench_overhead.py``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    std: float
    # Every 5th percentile (0..100): enough to draw the distribution without the raw samples.
    quantiles: tuple[float, ...] = ()


def latency_stats(samples_ms: np.ndarray) -> LatencyStats:
    """Percentiles use linear interpolation (numpy's default), all in milliseconds."""
    if samples_ms.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return LatencyStats(
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(np.mean(samples_ms)),
        min=float(np.min(samples_ms)),
        max=float(np.max(samples_ms)),
        std=float(np.std(samples_ms)),
        quantiles=tuple(float(q) for q in np.percentile(samples_ms, np.arange(0, 101, 5))),
    )


def throughput(batch: int, total_s: float, iterations: int) -> float:
    """Samples per second over the timed iterations."""
    return batch * iterations / total_s if total_s > 0 else float("inf")


def time_calls(
    call: Callable[[], object], warmup: int, iterations: int, duration_s: float | None = None
) -> np.ndarray:
    """Per-call wall times in ms; with ``duration_s`` run until that much time has passed."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    if duration_s is None:
        out = np.empty(iterations, dtype=np.int64)
        for i in range(iterations):
            t0 = clock()
            call()
            out[i] = clock() - t0
        return out / 1e6
    times: list[int] = []
    deadline = clock() + int(duration_s * 1e9)
    while clock() < deadline:
        t0 = clock()
        call()
        times.append(clock() - t0)
    return np.asarray(times, dtype=np.int64) / 1e6


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (the bench command loads no torch)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


@dataclass
class BenchResult:
    target: str
    precision: str
    mode: str  # latency (one request at a time) or throughput (several in flight)
    batch: int
    threads: int
    iterations: int
    # Latency mode: wall clock around one inference call (inputs bound once). Throughput mode:
    # the runtime's own per-request measure (requests overlap; a caller's clock cannot split them).
    latency_ms: LatencyStats
    latency_timer: str
    runtime_latency_ms: LatencyStats | None  # the runtime's own measure, where it has one
    throughput_per_s: float  # samples (not requests) per second
    peak_rss_mb: float | None
    shapes: dict[str, list[int]]  # the input shapes that were timed
    settings: dict[str, object]  # what the backend actually ran with (device, precision...)
    branch_ms: dict[str, float] | None  # per-layer times summed per branch, when profiled
    host: dict[str, object]
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    samples_ms: np.ndarray,
    *,
    runtime_ms: np.ndarray | None = None,
    total_s: float,
    target: str,
    precision: str,
    mode: str,
    batch: int,
    threads: int,
    shapes: dict[str, list[int]],
    settings: dict[str, object],
    branch_ms: dict[str, float] | None = None,
    warnings: list[str] | None = None,
) -> BenchResult:
    """``total_s``: wall time of the timed part (in latency mode, the sum of the calls)."""
    from mmedge.hardware import cpu_summary

    return BenchResult(
        target=target,
        precision=precision,
        mode=mode,
        batch=batch,
        threads=threads,
        iterations=int(samples_ms.size),
        latency_ms=latency_stats(samples_ms),
        latency_timer="runtime" if mode == "throughput" else "wall clock",
        runtime_latency_ms=None if runtime_ms is None else latency_stats(runtime_ms),
        throughput_per_s=throughput(batch, total_s, int(samples_ms.size)),
        peak_rss_mb=peak_rss_mb(),
        shapes=shapes,
        settings=settings,
        branch_ms=branch_ms,
        host=cpu_summary(),
        warnings=warnings or [],
    )
