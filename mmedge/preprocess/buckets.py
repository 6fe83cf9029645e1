"""Length buckets: which padded or trimmed length a sample of a given length is built at."""

from __future__ import annotations

from collections.abc import Sequence


def default_buckets(low: int, high: int) -> list[int]:
    """Powers of two strictly inside [low, high], plus both ends: covers an axis from min to max
    with few distinct shapes (each bucket is one calibration shape)."""
    values = {low, high}
    p = 1
    while p < high:
        if p > low:
            values.add(p)
        p *= 2
    return sorted(values)


def smallest_holding(buckets: Sequence[int], length: int) -> int:
    """For padded sequences (text): the smallest bucket >= length; the largest if none is."""
    for b in buckets:
        if b >= length:
            return b
    return buckets[-1]


def nearest(buckets: Sequence[int], length: int) -> int:
    """For clips (audio): the nearest bucket, ties to the longer one (padding loses nothing)."""
    return min(buckets, key=lambda b: (abs(b - length), -b))
