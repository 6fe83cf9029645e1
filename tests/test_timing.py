"""The shared timing mechanics: alternating rounds and the intervals goals are judged by."""

from __future__ import annotations

import pytest

from mmedge.markdown import table
from mmedge.timing import interleaved, median_interval, ratio_interval


def test_rounds_alternate_the_order() -> None:
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n) or len(order)) for name in ("a", "b", "c")}
    found = interleaved(calls, 3)
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert found["a"] == [1, 6, 7]


def test_an_interval_holds_the_median_and_widens_with_noise() -> None:
    steady = ratio_interval([2.0] * 7, [1.0] * 7)
    assert (steady.low, steady.median, steady.high) == (2.0, 2.0, 2.0)
    noisy = median_interval([1.4, 1.9, 1.6, 2.2, 1.7, 1.5, 2.0])
    assert noisy.low < noisy.median == 1.7 < noisy.high
    assert noisy.clears(1.3) and not noisy.clears(1.6)  # met only when the interval clears it
    assert noisy.stays_below(2.5) and not noisy.stays_below(1.8)
    assert median_interval([1.4, 1.9, 1.6]).to_json() == median_interval([1.4, 1.9, 1.6]).to_json()
    with pytest.raises(ValueError, match="no rounds"):
        median_interval([])


def test_a_markdown_cell_cannot_split_its_row() -> None:
    text = table(["a", "b"], [["x|y", 1.5]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.5 |"]
