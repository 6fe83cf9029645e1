from __future__ import annotations

import numpy as np
import pytest

from mmedge.bench import latency_stats, peak_rss_mb, summarize, throughput, time_calls


def test_latency_stats_known_values() -> None:
    stats = latency_stats(np.arange(1, 101, dtype=np.float64))
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert (stats.min, stats.max) == (1.0, 100.0)
    with pytest.raises(ValueError, match="no latency samples"):
        latency_stats(np.array([]))


def test_throughput_counts_samples_not_calls() -> None:
    assert throughput(batch=8, total_s=2.0, iterations=100) == 400.0


def test_time_calls_runs_warmup_then_iterations() -> None:
    calls: list[int] = []
    samples = time_calls(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(calls) == 10 and samples.shape == (7,)
    assert (samples >= 0).all()


def test_time_calls_for_a_duration() -> None:
    samples = time_calls(lambda: sum(range(1000)), warmup=0, iterations=1, duration_s=0.05)
    assert samples.size > 1
    assert samples.sum() <= 60.0  # ms: the loop stops once the duration has passed


def test_summary_json_has_the_documented_shape() -> None:
    result = summarize(
        np.array([1.0, 2.0, 3.0]),
        total_s=0.006,
        target="onnxruntime",
        precision="int8",
        mode="latency",
        batch=2,
        threads=1,
        shapes={"x": [2, 3]},
        settings={"threads": 1},
    ).to_json()
    assert {"target", "precision", "batch", "latency_ms", "throughput_per_s", "peak_rss_mb"} <= set(
        result
    )
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert result["throughput_per_s"] == pytest.approx(2 * 3 / 0.006)
    assert "int8_dot_product" in result["host"]
    assert result["mode"] == "latency" and result["branch_ms"] is None


def test_throughput_uses_wall_time_not_the_sum_of_latencies() -> None:
    # Four requests of 10 ms each, two in flight at a time: 20 ms of wall time.
    result = summarize(
        np.full(4, 10.0),
        total_s=0.020,
        target="openvino",
        precision="fp32",
        mode="throughput",
        batch=1,
        threads=2,
        shapes={},
        settings={},
    )
    assert result.throughput_per_s == pytest.approx(200.0)
    assert result.latency_ms.p50 == 10.0


def test_peak_rss_is_measured() -> None:
    rss = peak_rss_mb()
    assert rss is not None and rss > 1.0
