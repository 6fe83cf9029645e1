"""Interleaved timing rounds, and the intervals on what they measure: the one implementation
used by `run`'s latency step, `quantize --auto` and the benchmarks.

On a shared or throttling machine, one long measurement per variant compares different machine
states. Here every round times every variant once, in turn (odd rounds in reverse order, so
going first favours no one), and a ratio is taken within each round: drifting load hits both
sides of it alike. A figure is the median over rounds with a bootstrap confidence interval, and
a goal is met only when the whole interval clears it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

CONFIDENCE = 0.95
_RESAMPLES = 4000


@dataclass(frozen=True)
class Interval:
    """A median over rounds and its bootstrap percentile interval."""

    median: float
    low: float
    high: float
    rounds: int
    confidence: float = CONFIDENCE

    def clears(self, goal: float) -> bool:
        """The whole interval is at or above ``goal`` (a speed-up goal is met)."""
        return self.low >= goal

    def stays_below(self, limit: float) -> bool:
        """The whole interval is at or below ``limit`` (an overhead goal is met)."""
        return self.high <= limit

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "rounds": self.rounds,
            "confidence": self.confidence,
        }

    def text(self, fmt: str = "{:.2f}", unit: str = "x") -> str:
        return f"{fmt.format(self.median)}{unit} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def interleaved(calls: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each call once per round, in turn; odd rounds run the calls in reverse order."""
    found: dict[str, list[T]] = {name: [] for name in calls}
    names = list(calls)
    for k in range(rounds):
        for name in names if k % 2 == 0 else names[::-1]:
            found[name].append(calls[name]())
    return found


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """The median and a bootstrap percentile interval for it (resampling the rounds)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no rounds to summarize")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(data, size=(_RESAMPLES, data.size), replace=True), axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return Interval(float(statistics.median(data.tolist())), float(low), float(high), data.size)


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
    """Per-round ratios (numerator over denominator, measured back to back in each round):
    their median and its interval. A speed-up is baseline latency over variant latency."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return median_interval(ratios, confidence)
