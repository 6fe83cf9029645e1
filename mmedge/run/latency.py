"""Latency of every variant measured in alternating rounds, for speed-ups that survive noise.

On a shared or thermally throttled machine one long measurement per variant compares
different machine states. Here each round times every variant once (a fixed duration each),
and a variant's speed-up is the median over rounds of the per-round ratio against the
baseline: drifting load hits both sides of each ratio alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmedge.rundir import atomic_write_json


def interleaved_p50(
    calls: Mapping[str, tuple[Callable[[], object], int]], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Per-round p50 ms of each (call, warmup): every call timed once per round, in turn."""
    from mmedge.bench import time_calls

    p50: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (call, warmup) in calls.items():
            samples = time_calls(call, warmup, 1, seconds)
            p50[name].append(float(statistics.median(samples.tolist())))
    return p50


def interleaved_latency(
    directories: dict[str, Path], baseline: str, rounds: int, seconds: float, out: Path
) -> dict[str, Any]:
    from mmedge.inputs import dummy_feeds
    from mmedge.pipeline import bench_settings, load_session, open_artifact
    from mmedge.targets import SessionConfig

    calls, sessions = {}, []
    settings: dict[str, Any] = {}
    try:
        for name, directory in directories.items():
            manifest, recipe, artifact = open_artifact(directory)
            cfg = bench_settings(recipe, {})
            feeds = dummy_feeds(recipe, cfg.shape, batch=cfg.batch)
            shapes = {k: tuple(v.shape) for k, v in feeds.items()}
            session = load_session(
                manifest, recipe, artifact, SessionConfig(cfg.threads, "latency", None, shapes)
            )
            sessions.append(session)
            calls[name] = (session.prepare(feeds), cfg.warmup)
            settings = {"batch": cfg.batch, "threads": cfg.threads, "shape": cfg.shape}
        p50 = interleaved_p50(calls, rounds, seconds)
    finally:
        for session in sessions:
            session.close()
    speedup = {
        name: statistics.median(b / v for b, v in zip(p50[baseline], values, strict=True))
        for name, values in p50.items()
    }
    record = {
        "rounds": rounds,
        "seconds_per_variant_and_round": seconds,
        "baseline": baseline,
        "settings": settings,
        "p50_ms_per_round": p50,
        "p50_ms": {name: statistics.median(values) for name, values in p50.items()},
        "speedup": speedup,
    }
    atomic_write_json(out, record)
    return record
