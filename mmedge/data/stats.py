"""Streaming statistics of a calibration set, and the warnings users of other tools lack.

One accumulator serves ``calib build`` (fed sample groups as they are written) and
``calib inspect`` (fed shards as they are read), so both report the same figures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NEAR_CONSTANT = 1e-6  # std below this (relative to max(1, |mean|)) is "near-constant"


@dataclass
class InputStats:
    dtype: str
    rank: int
    count: int = 0  # samples
    values: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    nonfinite: int = 0
    dims: list[Counter[int]] = field(default_factory=list)  # per non-batch dim: size -> samples

    def add(self, array: np.ndarray) -> None:
        n = int(array.shape[0])
        if not self.dims:
            self.dims = [Counter() for _ in array.shape[1:]]
        for counter, size in zip(self.dims, array.shape[1:], strict=False):
            counter[int(size)] += n
        self.count += n
        data = array.astype(np.float64, copy=False)
        finite = np.isfinite(data)
        self.nonfinite += int(finite.size - finite.sum())
        good = data.ravel() if finite.all() else data[finite]
        if good.size:
            self.values += int(good.size)
            self.total += float(good.sum())
            self.total_sq += float(np.square(good).sum())
            self.low = min(self.low, float(good.min()))
            self.high = max(self.high, float(good.max()))

    @property
    def mean(self) -> float:
        return self.total / self.values if self.values else float("nan")

    @property
    def std(self) -> float:
        if not self.values:
            return float("nan")
        var = self.total_sq / self.values - self.mean**2
        return float(np.sqrt(max(var, 0.0)))

    def shape(self) -> list[int | str]:
        """Per-sample shape: a size, or 'lo..hi' where samples differ."""
        out: list[int | str] = []
        for counter in self.dims:
            sizes = sorted(counter)
            out.append(sizes[0] if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": ["n", *self.shape()],
            "min": self.low,
            "max": self.high,
            "mean": self.mean,
            "std": self.std,
            "nonfinite": self.nonfinite,
            "sizes": [{str(k): v for k, v in sorted(c.items())} for c in self.dims],
        }


class SetStats:
    def __init__(self) -> None:
        self.inputs: dict[str, InputStats] = {}
        self.samples = 0
        self.labels: Counter[str] = Counter()

    def add(self, feeds: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        for name, array in feeds.items():
            stats = self.inputs.get(name)
            if stats is None:
                stats = self.inputs[name] = InputStats(str(array.dtype), array.ndim)
            stats.add(array)
        self.samples += int(next(iter(feeds.values())).shape[0])
        if labels is not None:
            self.labels.update(str(v) for v in labels.tolist())

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "inputs": {n: s.to_json() for n, s in self.inputs.items()},
            "labels": dict(sorted(self.labels.items())) if self.labels else None,
        }
