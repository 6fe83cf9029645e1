"""Recorded references: inputs, their labels and the FP32 reference's outputs in one .npz.

What makes ``mmedge compare`` work where the reference cannot run: on a device without torch
or the recipe's data (a TensorRT bundle's parity set, a fleet device's compare). The replay
checks it is fed the recorded inputs, in order, so a result is never scored against the
outputs of other inputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.data.datasets import ArrayDataset, Batch, DataSource
from mmedge.errors import ArtifactError
from mmedge.inputs import Feeds
from mmedge.recipe import Recipe

EXPECTED_PREFIX = "expected."  # arrays holding reference outputs
LABEL_KEY = "label"

Replay = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


GROUP = re.compile(r"^g(\d+)\.(.*)$")  # g0.image, g0.expected.logits, g1.label...


def write_recorded(
    out: Path, data: DataSource, reference: Any, outputs: list[str], samples: int | None = None
) -> dict[str, Any]:
    """Record up to ``samples`` real inputs (all of ``data`` by default) with their labels and
    the reference's outputs, one group of arrays per shape (eval sets bucket by length)."""
    import io

    from mmedge.rundir import atomic_write_bytes

    wanted = samples or data.samples
    groups: list[list[dict[str, np.ndarray]]] = []
    taken = 0
    for item in data.batches(min(wanted, 64)):
        n = min(int(next(iter(item.feeds.values())).shape[0]), wanted - taken)
        feeds = {k: v[:n] for k, v in item.feeds.items()}
        expected = reference(feeds)
        part = {**feeds, **{EXPECTED_PREFIX + o: expected[o][:n] for o in outputs}}
        if item.labels is not None:
            part[LABEL_KEY] = item.labels[:n]
        last = groups[-1][-1] if groups else None
        same = (
            last is not None
            and all(last[k].shape[1:] == v.shape[1:] for k, v in part.items() if k in last)
            and last.keys() == part.keys()
        )
        groups[-1].append(part) if same else groups.append([part])
        taken += n
        if taken >= wanted:
            break
    arrays: dict[str, Any] = {
        f"g{i}.{k}": np.concatenate([p[k] for p in parts])
        for i, parts in enumerate(groups)
        for k in parts[0]
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out, buffer.getvalue())
    return {"samples": taken, "shapes": len(groups), "labels": any(LABEL_KEY in p[0] for p in groups),
            "source": data.describe()}  # fmt: skip


class RecordedDataset:
    """Recorded groups (one shape each), batched in order within each group."""

    def __init__(self, groups: list[ArrayDataset], description: str) -> None:
        self.groups = groups
        self.samples = sum(g.samples for g in groups)
        self.label_key = groups[0].label_key if groups else None
        self.description = description

    def batches(self, batch: int) -> Iterator[Batch]:
        for group in self.groups:
            yield from group.batches(batch)

    def first(self, batch: int) -> Feeds:
        return next(self.batches(batch)).feeds

    def limited(self, samples: int) -> RecordedDataset:
        kept, left = [], samples
        for group in self.groups:
            if left <= 0:
                break
            kept.append(group.limited(left))
            left -= kept[-1].samples
        return RecordedDataset(kept, self.description)

    def describe(self) -> str:
        return f"{self.description} ({self.samples} samples)"


def recorded_source(path: Path, recipe: Recipe, what: str) -> tuple[DataSource, Replay]:
    """The recorded inputs as a data source, and a runner that replays the recorded outputs
    for them batch by batch."""
    if not path.is_file():
        raise ArtifactError(f"{what} {path} not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise ArtifactError(f"{what} {path} cannot be read: {err}") from None
    grouped: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        m = GROUP.match(key)
        index, name = (int(m.group(1)), m.group(2)) if m else (0, key)  # one-group files
        grouped.setdefault(index, {})[name] = value
    groups, expected = [], []
    for index in sorted(grouped):
        part = grouped[index]
        missing = [k for k in recipe.inputs if k not in part]
        if missing:
            raise ArtifactError(f"{what} {path} lacks the recipe's inputs {missing}")
        feeds = {k: part[k] for k in recipe.inputs}
        groups.append(ArrayDataset(feeds, part.get(LABEL_KEY), f"{what} {path.name}", LABEL_KEY))
        expected.append({k.removeprefix(EXPECTED_PREFIX): v for k, v in part.items()
                         if k.startswith(EXPECTED_PREFIX)})  # fmt: skip
    first = next(iter(recipe.inputs))
    at = [0, 0]  # group, offset

    def recorded(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        group, offset = at
        n = batch[first].shape[0]
        fed = groups[group].feeds[first][offset : offset + n] if group < len(groups) else None
        if fed is None or not np.array_equal(batch[first], fed):
            raise ArtifactError("the recorded outputs are replayed only for the recorded inputs")
        out = {k: v[offset : offset + n] for k, v in expected[group].items()}
        at[:] = [group + 1, 0] if offset + n >= groups[group].samples else [group, offset + n]
        return out

    return RecordedDataset(groups, f"{what} {path.name}"), recorded
