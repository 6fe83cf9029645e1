"""Calibration and eval sources: directories of ``.npz`` shards of named inputs, or synthetic.

A shard holds one array per model input (same leading sample count) and, for labelled splits,
a label array. Shards are read one at a time, so memory does not grow with the set's size, and
``np.load(allow_pickle=False)`` keeps pickled objects out. See ``calibration/README.md``.
Every consumer (quantizers of all targets, compare, bench) reads through ``DataSource``.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mmedge.errors import InputSpecError
from mmedge.inputs import Feeds, Point, batch_size, dummy_feeds, validate_feeds
from mmedge.recipe import DataFactory, Recipe


@dataclass(frozen=True)
class Batch:
    feeds: Feeds
    labels: np.ndarray | None


class DataSource(Protocol):
    samples: int
    label_key: str | None

    def batches(self, batch: int) -> Iterator[Batch]: ...

    def first(self, batch: int) -> Feeds: ...

    def limited(self, samples: int) -> DataSource: ...

    def describe(self) -> str: ...


class SyntheticDataset:
    """Seeded random inputs, cycling opt/min/max shapes so every dynamic axis's range is seen."""

    label_key: str | None = None

    def __init__(self, recipe: Recipe, samples: int, seed: int) -> None:
        self.recipe = recipe
        self.samples = samples
        self.seed = seed

    def batches(self, batch: int) -> Iterator[Batch]:
        points: tuple[Point, ...] = ("opt", "min", "max")
        for k, start in enumerate(range(0, self.samples, batch)):
            n = min(batch, self.samples - start)
            yield Batch(dummy_feeds(self.recipe, points[k % 3], batch=n, seed=self.seed + k), None)

    def first(self, batch: int) -> Feeds:
        return next(self.batches(batch)).feeds

    def limited(self, samples: int) -> SyntheticDataset:
        return SyntheticDataset(self.recipe, min(samples, self.samples), self.seed)

    def describe(self) -> str:
        return f"synthetic random inputs ({self.samples} samples, seed {self.seed})"


class ArrayDataset:
    """Samples already in memory (a bundle's parity set): one shape, batched in order."""

    def __init__(
        self,
        feeds: Feeds,
        labels: np.ndarray | None,
        description: str,
        label_key: str | None = None,
    ) -> None:
        self.feeds = feeds
        self.labels = labels
        self.label_key = label_key if labels is not None else None
        self.samples = batch_size(feeds)
        self.description = description

    def batches(self, batch: int) -> Iterator[Batch]:
        for start in range(0, self.samples, batch):
            stop = min(start + batch, self.samples)
            labels = None if self.labels is None else self.labels[start:stop]
            yield Batch({k: v[start:stop] for k, v in self.feeds.items()}, labels)

    def first(self, batch: int) -> Feeds:
        return next(self.batches(batch)).feeds

    def limited(self, samples: int) -> ArrayDataset:
        n = min(samples, self.samples)
        labels = None if self.labels is None else self.labels[:n]
        return ArrayDataset(
            {k: v[:n] for k, v in self.feeds.items()}, labels, self.description, self.label_key
        )

    def describe(self) -> str:
        return f"{self.description} ({self.samples} samples)"


class ShardDataset:
    """A validated, streamable set of shards; ``limit`` caps the samples taken (in file order)."""

    def __init__(
        self,
        path: Path,
        recipe: Recipe,
        label_key: str | None = None,
        limit: int | None = None,
        ignore: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self.recipe = recipe
        self.label_key = label_key
        self.limit = limit
        self.ignore = ignore  # arrays dropped on read: labels of a set used unlabelled
        self.shards = _list_shards(path)
        self.samples = self._validate()

    def _read(self, shard: Path) -> tuple[Feeds, np.ndarray | None]:
        where = f"{self.path.name}/{shard.name}"
        arrays = read_npz(shard)
        for name in self.ignore:
            arrays.pop(name, None)
        labels = None
        if self.label_key is not None:
            if self.label_key not in arrays:
                raise InputSpecError(
                    f"{where}: label array '{self.label_key}' missing; shard has: {', '.join(arrays)}"
                )
            labels = arrays.pop(self.label_key)
        validate_feeds(arrays, self.recipe, where)
        if labels is not None:
            _check_labels(labels, batch_size(arrays), where)
        return arrays, labels

    def _validate(self) -> int:
        """One pass over every shard before any long step starts, so bad data fails fast."""
        total = 0
        for shard in self.shards:
            feeds, _ = self._read(shard)
            total += batch_size(feeds)
            if self.limit is not None and total >= self.limit:
                return self.limit
        if total == 0:
            raise InputSpecError(f"{self.path}: the data set holds zero samples")
        return total

    def batches(self, batch: int) -> Iterator[Batch]:
        """Batches of at most ``batch`` samples; a batch never spans two shards (shapes differ)."""
        left = self.samples
        for shard in self.shards:
            feeds, labels = self._read(shard)
            n = min(batch_size(feeds), left)
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                yield Batch(
                    {k: np.ascontiguousarray(v[start:stop]) for k, v in feeds.items()},
                    None if labels is None else labels[start:stop],
                )
            left -= n
            if left <= 0:
                return

    def first(self, batch: int) -> Feeds:
        return next(self.batches(batch)).feeds

    def limited(self, samples: int) -> ShardDataset:
        return ShardDataset(
            self.path, self.recipe, self.label_key, min(samples, self.samples), self.ignore
        )

    def describe(self) -> str:
        return f"{self.path} ({self.samples} samples)"


def read_npz(shard: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file: no pickles, and no header believed beyond the file's size."""
    try:
        with shard.open("rb") as fh:
            magic = fh.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load takes for a .npz
            # (np.load would read a lone .npy, allocating whatever its header declares)
            raise InputSpecError(f"cannot read shard {shard}: not a .npz (zip) archive")
        with np.load(shard, allow_pickle=False) as npz:
            _check_declared_sizes(npz.zip, shard)
            return {k: npz[k] for k in npz.files}
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,  # a corrupt compressed member
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted member
        OverflowError,  # a dimension beyond a C long
        tokenize.TokenError,  # a garbled .npy header (numpy tokenizes it)
    ) as err:
        raise InputSpecError(f"cannot read shard {shard}: {err}") from None


def _check_declared_sizes(archive: zipfile.ZipFile, shard: Path) -> None:
    """Each array's header against the bytes the archive holds for it, before numpy allocates
    what the header declares (a 116 TiB shape in a 1 kB file would otherwise end in a
    MemoryError, or in the OOM killer)."""
    for info in archive.infolist():  # all: np.load reads a member without .npy as an array too
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            header = fh.tell()
        name = info.filename.removesuffix(".npy")
        if any(d < 0 for d in shape):  # numpy's header reader lets them through (seen: -20)
            raise InputSpecError(
                f"shard {shard}: array '{name}' declares shape {list(shape)}, with a negative "
                "dimension: a corrupt or forged shard"
            )
        declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if declared > info.file_size - header:
            gib = f"{declared / 2**30:.3g}" if declared < 2**1000 else "over 10^290"
            raise InputSpecError(
                f"shard {shard}: array '{name}' declares shape "
                f"{list(shape)} ({gib} GiB) but the file holds "
                f"{info.file_size - header} bytes for it: a corrupt or forged shard"
            )


def _list_shards(path: Path) -> list[Path]:
    if not path.exists():
        raise InputSpecError(f"data path not found: {path}")
    if path.is_file():
        if path.suffix != ".npz":
            raise InputSpecError(f"{path}: expected a directory of .npz shards or one .npz file")
        return [path]
    shards = sorted(path.glob("*.npz"))
    if not shards:
        raise InputSpecError(f"{path}: no .npz shards found (the data set holds zero samples)")
    return shards


def _check_labels(labels: np.ndarray, n: int, where: str) -> None:
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputSpecError(f"{where}: labels have shape {list(labels.shape)}, expected [{n}]")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputSpecError(f"{where}: labels have dtype {labels.dtype}, expected an integer type")


def open_calibration(recipe: Recipe) -> DataSource:
    cfg = recipe.calibration
    if cfg is None:
        raise InputSpecError(
            "this step needs calibration data: add a 'calibration: {path: ...}' section to the "
            "recipe or pass --calib PATH"
        )
    if cfg.synthetic is not None:
        return SyntheticDataset(recipe, cfg.samples or cfg.synthetic.samples, cfg.synthetic.seed)
    assert cfg.path is not None  # the schema requires one of the two
    # A labelled set (e.g. built by `mmedge calib build` from labelled files) calibrates too.
    labels = {"label", (recipe.eval.label_key if recipe.eval else None) or "label"}
    return ShardDataset(cfg.path, recipe, limit=cfg.samples, ignore=_not_inputs(labels, recipe))


def open_eval(recipe: Recipe) -> ShardDataset | None:
    if recipe.eval is None:
        return None
    key = recipe.eval.label_key
    # Unlabelled (label_key: null): a 'label' array a set happens to carry is dropped, unread.
    ignore = _not_inputs({"label"}, recipe) if key is None else frozenset()
    return ShardDataset(recipe.eval.path, recipe, key, recipe.eval.samples, ignore)


def _not_inputs(names: set[str], recipe: Recipe) -> frozenset[str]:
    return frozenset(names - set(recipe.inputs))


def open_compare_data(recipe: Recipe, samples: int | None = None) -> DataSource:
    """The eval split (so accuracy is measured) or else the calibration source."""
    data: DataSource | None = open_eval(recipe)
    if data is None and recipe.calibration is not None:
        data = open_calibration(recipe)
    if data is None:
        raise InputSpecError(
            "compare needs data: add an 'eval' (labelled) or 'calibration' section to the recipe"
        )
    return data.limited(samples) if samples is not None else data


def data_from_factory(spec: DataFactory, recipe: Recipe) -> DataSource:
    """Call ``spec.factory(**spec.kwargs)`` and check what it returns against the recipe."""
    import importlib

    from mmedge.model import user_code

    module_name, attr = spec.factory.split(":")
    with user_code(f"cannot load data factory {spec.factory}:", InputSpecError):
        factory = getattr(importlib.import_module(module_name), attr)
    with user_code(f"data factory {spec.factory} failed:", InputSpecError):
        data = factory(**spec.kwargs)
    if not all(hasattr(data, a) for a in ("batches", "samples", "describe", "limited")):
        raise InputSpecError(
            f"data factory {spec.factory} returned {type(data).__name__}, expected a data source "
            "(batches(), samples, describe(), limited(): see mmedge.data.datasets.DataSource)"
        )
    first = next(data.batches(1))
    validate_feeds(first.feeds, recipe, f"data factory {spec.factory}")
    return data  # type: ignore[no-any-return]
