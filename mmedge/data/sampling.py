"""Which samples a calibration set takes: stratified by label, spread over length buckets.

Labels get their share of the budget (largest remainder, so proportions hold). Shape groups
(length buckets) are then visited round-robin, each visit taking one sample of the label with
the most budget left, so every bucket from the shortest to the longest is represented rather
than only the common one, whatever the labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np


def choose(
    labels: Sequence[str | None], groups: Sequence[Hashable], n: int, seed: int
) -> list[int]:
    """Indices of ``n`` samples (all of them if ``n`` >= the count), in input order."""
    total = len(labels)
    if n >= total:
        return list(range(total))
    rng = np.random.default_rng(seed)
    sizes: dict[str | None, int] = defaultdict(int)
    for label in labels:
        sizes[label] += 1
    left = _allocate(dict(sizes), n)
    # queues[group][label]: that group's samples of that label, shuffled
    queues: dict[Hashable, dict[str | None, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (label, group) in enumerate(zip(labels, groups, strict=True)):
        queues[group][label].append(i)
    order = sorted(queues, key=str)
    order = [order[k] for k in rng.permutation(len(order))]
    for by_label in queues.values():
        for members in by_label.values():
            rng.shuffle(members)
    chosen: list[int] = []
    while len(chosen) < n:
        progressed = False
        for group in order:
            candidates = [lb for lb, q in queues[group].items() if q and left[lb] > 0]
            if not candidates or len(chosen) >= n:
                continue
            label = max(candidates, key=lambda lb: (left[lb], str(lb)))
            chosen.append(queues[group][label].pop())
            left[label] -= 1
            progressed = True
        if not progressed:
            break
    return sorted(chosen)


def _allocate(sizes: dict[str | None, int], n: int) -> dict[str | None, int]:
    """Largest-remainder apportionment of ``n`` over strata, capped by their sizes."""
    total = sum(sizes.values())
    exact = {k: n * v / total for k, v in sizes.items()}
    quota = {k: min(sizes[k], int(e)) for k, e in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: (-(exact[k] - int(exact[k])), str(k)))
    while sum(quota.values()) < n:
        progressed = False
        for k in by_remainder:
            if sum(quota.values()) < n and quota[k] < sizes[k]:
                quota[k] += 1
                progressed = True
        if not progressed:
            break
    return quota


def zeroed(
    missing: Sequence[frozenset[str]], fractions: dict[str, float], fields: int, seed: int
) -> list[frozenset[str]]:
    """Per chosen sample (``missing``: the fields it has no file for), the fields to build
    zeroed so calibration sees the model's missing-modality path: a fraction of the samples
    that do have the field, and never every field of one sample."""
    rng = np.random.default_rng((seed, 1))
    n = len(missing)
    out: list[set[str]] = [set() for _ in range(n)]
    for field, fraction in sorted(fractions.items()):
        open_ = [
            i for i in range(n) if field not in missing[i] and len(out[i] | missing[i]) < fields - 1
        ]
        count = min(round(fraction * n), len(open_))
        for i in rng.choice(open_, size=count, replace=False):
            out[int(i)].add(field)
    shared: dict[frozenset[str], frozenset[str]] = {}  # a handful of distinct sets, N samples
    return [shared.setdefault(frozenset(s), frozenset(s)) for s in out]
