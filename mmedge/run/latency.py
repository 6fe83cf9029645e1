"""Latency of every variant measured in alternating rounds, for speed-ups that survive noise.

Each round times every variant once (a fixed duration each, mmedge/timing.py alternates the
order), and a variant's speed-up is the median over rounds of the per-round ratio against the
baseline, with its bootstrap interval. The p50, p99 and samples/s a report shows next to it
come from the same rounds' samples, so one row is one measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.rundir import atomic_write_json
from mmedge.timing import interleaved, ratio_interval


def interleaved_samples(
    calls: Mapping[str, tuple[Callable[[], object], int]], rounds: int, seconds: float
) -> dict[str, list[np.ndarray]]:
    """Per-round latency samples (ms) of each (call, warmup), every call timed once per round."""
    from mmedge.bench import time_calls

    timed = {
        name: (lambda c=call, w=warmup: time_calls(c, w, 1, seconds))
        for name, (call, warmup) in calls.items()
    }
    return interleaved(timed, rounds)


def interleaved_p50(
    calls: Mapping[str, tuple[Callable[[], object], int]], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Per-round p50 ms of each (call, warmup)."""
    found = interleaved_samples(calls, rounds, seconds)
    return {name: [float(np.median(s)) for s in per_round] for name, per_round in found.items()}


def interleaved_latency(
    directories: dict[str, Path], baseline: str, rounds: int, seconds: float, out: Path
) -> dict[str, Any]:
    from mmedge.artifacts import bench_settings, load_session, open_artifact
    from mmedge.inputs import dummy_feeds
    from mmedge.targets import Session, SessionConfig

    calls: dict[str, tuple[Callable[[], object], int]] = {}
    sessions: list[Session] = []
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
        samples = interleaved_samples(calls, rounds, seconds)
    finally:
        for session in sessions:
            session.close()
    p50 = {n: [float(np.median(s)) for s in per_round] for n, per_round in samples.items()}
    pooled = {n: np.concatenate(per_round) for n, per_round in samples.items()}
    batch = int(settings.get("batch", 1))
    speedup = {name: ratio_interval(p50[baseline], values) for name, values in p50.items()}
    record = {
        "rounds": rounds,
        "seconds_per_variant_and_round": seconds,
        "baseline": baseline,
        "settings": settings,
        "p50_ms_per_round": p50,
        # Pooled over every round's samples: p50, p99 and samples/s of one measurement.
        "p50_ms": {n: float(np.percentile(s, 50)) for n, s in pooled.items()},
        "p99_ms": {n: float(np.percentile(s, 99)) for n, s in pooled.items()},
        "samples_per_s": {n: batch * s.size / (float(s.sum()) / 1e3) for n, s in pooled.items()},
        "speedup": {name: i.median for name, i in speedup.items()},
        "speedup_interval": {name: i.to_json() for name, i in speedup.items()},
    }
    atomic_write_json(out, record)
    return record
