"""``mmedge calib build``: raw files → sharded ``.npz`` calibration set, streamed.

Two passes. The first lists the source and reads only what decides a sample's shape group
(token counts, audio headers, array headers); bad files are collected, not fatal one by one.
Sampling then picks the set (stratified by label, spread over length buckets). The second
pass decodes the chosen samples group by group and writes a shard whenever ``shard_size``
samples of one shape are ready, so memory holds one shard, whatever the number of samples.
Everything is written to a staging directory and published only when complete.
"""

from __future__ import annotations

import csv
import functools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.data.checks import check
from mmedge.data.sampling import choose, zeroed
from mmedge.data.sources import SampleRef, read_source
from mmedge.data.stats import SetStats
from mmedge.errors import InputSpecError
from mmedge.hashing import sha256_bytes, sha256_file, sha256_json
from mmedge.preprocess import Preprocessor, SampleError
from mmedge.preprocess.core import Key
from mmedge.preprocess.text import TextField
from mmedge.progress import Count, quiet
from mmedge.recipe import Recipe
from mmedge.rundir import check_output_dir, staged_output, write_manifest

SHOWN_ERRORS = 10
SOURCES = "sources.csv"  # per sample: files, their sha256, bucket, zeroed fields


def build_calibration(
    recipe: Recipe,
    source: Path,
    out: Path,
    samples: int | None = None,
    seed: int = 0,
    shard_size: int = 64,
    min_per_bucket: int = 8,
    skip_bad: bool = False,
    force: bool = False,
    progress: Count = quiet,
) -> dict[str, Any]:
    started = time.perf_counter()
    prep = Preprocessor.from_recipe(recipe)
    identity = {"target": "calibration", "precision": "-", "recipe_sha256": _prep_sha(recipe)}
    check_output_dir(out, identity, force)
    src = read_source(source, prep.specs)
    errors = list(src.problems)

    keys: list[Key | None] = []
    shared: dict[Key, Key] = {}  # one tuple per distinct key: most samples share a few
    for done, ref in enumerate(src.samples, 1):
        try:
            key = prep.key(src.values(ref))
            keys.append(shared.setdefault(key, key))
        except SampleError as err:
            keys.append(None)
            errors.append(f"{ref.id}: {err}")
        if done % 256 == 0 or done == len(src.samples):
            progress("scanning", done, len(src.samples))
    # Problems found so far are not raised yet: the build pass below finds those only decoding
    # reveals (a truncated image), and the user gets one complete list.
    usable = [i for i, k in enumerate(keys) if k is not None]
    if not usable:
        raise _summary(errors, len(src.samples)) if errors else InputSpecError("no usable samples")
    labels = [src.samples[i].label for i in usable]
    picked = [
        usable[j] for j in choose(labels, [keys[i] for i in usable], samples or len(usable), seed)
    ]
    drops = {name: spec.drop for name, spec in prep.specs.items() if spec.drop > 0}
    absent = [_missing(src.fields, tuple(v is None for v in src.samples[i].values)) for i in picked]
    zero = dict(zip(picked, zeroed(absent, drops, len(prep.specs), seed), strict=True))
    classes = _classes([src.samples[i].label for i in picked])

    stats = SetStats()
    shards: list[Path] = []
    fields = sorted(prep.specs)
    with staged_output(out) as stage, (stage / SOURCES).open("w", newline="") as listing:
        rows = csv.writer(listing)
        rows.writerow(_source_header(fields))
        writer = _ShardWriter(stage, shard_size, stats, shards)
        order = sorted(picked, key=lambda i: (str(keys[i]), i))  # one shape group at a time
        for done, i in enumerate(order, 1):
            ref, found = src.samples[i], keys[i]
            assert found is not None
            key = found
            try:
                values = src.values(ref)
                arrays = prep.process(values, key, zero[i])
            except SampleError as err:
                errors.append(f"{ref.id}: {err}")
                continue
            label = None if classes is None else classes[str(ref.label)]
            writer.add(key, arrays, label)
            rows.writerow(_source_row(ref, values, key, zero[i], fields))
            if done % 64 == 0 or done == len(order):
                progress("building", done, len(order))
        writer.flush()
        listing.close()
        if (errors and not skip_bad) or not shards:
            raise _summary(errors, len(src.samples) + len(src.problems))
        files = [*shards, *prep.save(stage), stage / SOURCES]
        truncated = {n: f.truncated for n, f in prep.fields.items() if isinstance(f, TextField)}
        summary = stats.to_json()
        findings = check(stats, recipe, min_per_bucket)
        manifest = write_manifest(
            stage,
            files,
            {
                "identity": identity,
                "target": "calibration",
                "precision": "-",
                "recipe": {"name": recipe.name, "inputs": list(recipe.inputs)},
                "calibration": {
                    **summary,
                    "shards": len(shards),
                    "label_key": "label" if classes is not None else None,
                    "classes": _class_names(classes),
                    "buckets": _bucket_counts(keys, picked),
                    "zeroed": dict(Counter(f for i in picked for f in zero[i])),
                    "missing": dict(Counter(f for fields in absent for f in fields)),
                    "truncated_text": truncated,
                    "warnings": [f.to_json() for f in findings],
                },
                "source": {
                    "kind": src.kind,
                    "path": str(source),
                    "available": len(src.samples),
                    "usable": len(usable),
                    "sampling": {
                        "requested": samples,
                        "seed": seed,
                        "by_label": classes is not None,
                    },
                    "skipped": errors[:100],
                    "skipped_count": len(errors),
                    "sources_sha256": sha256_file(stage / SOURCES),
                },
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
    return manifest


class _ShardWriter:
    """Buffers samples of one shape group (they arrive group by group) and writes
    ``shard-NNNN.npz`` when ``size`` are ready or the group ends: memory holds one shard."""

    def __init__(self, stage: Path, size: int, stats: SetStats, shards: list[Path]) -> None:
        self.stage, self.size, self.stats, self.shards = stage, size, stats, shards
        self.key: Key | None = None
        self.items: list[dict[str, np.ndarray]] = []
        self.labels: list[int] = []

    def add(self, key: Key, arrays: dict[str, np.ndarray], label: int | None) -> None:
        if key != self.key:
            self.flush()
            self.key = key
        self.items.append(arrays)
        if label is not None:
            self.labels.append(label)
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        items, labels = self.items, self.labels
        self.items, self.labels = [], []
        if not items:
            return
        feeds = {name: np.stack([it[name] for it in items]) for name in items[0]}
        label_array = np.asarray(labels, np.int64) if labels else None
        self.stats.add(feeds, label_array)
        arrays = {**feeds, "label": label_array} if label_array is not None else feeds
        path = self.stage / f"shard-{len(self.shards):04d}.npz"
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
        self.shards.append(path)


@functools.cache  # one frozenset per pattern of missing fields, not one per sample
def _missing(fields: tuple[str, ...], absent: tuple[bool, ...]) -> frozenset[str]:
    return frozenset(f for f, gone in zip(fields, absent, strict=True) if gone)


def _summary(errors: list[str], total: int) -> InputSpecError:
    errors = sorted(errors)  # by sample id: the scan's and the decode pass's problems together
    shown = "\n".join(f"  - {e}" for e in errors[:SHOWN_ERRORS])
    rest = len(errors) - SHOWN_ERRORS
    more = f"\n  … and {rest} more" if rest > 0 else ""
    return InputSpecError(
        f"{len(errors)} problem(s) among {total} samples; no calibration set was written:\n"
        f"{shown}{more}",
        hint="fix or remove these files, or pass --skip-bad to leave those samples out",
    )


def _classes(labels: list[str | None]) -> dict[str, int] | None:
    """Label strings → class indices: integers stay themselves; names are numbered sorted."""
    if not labels or any(label is None for label in labels):
        return None
    names = sorted(set(str(label) for label in labels))
    try:
        return {n: int(n) for n in names}
    except ValueError:
        return {n: i for i, n in enumerate(names)}


def _class_names(classes: dict[str, int] | None) -> list[str] | None:
    if classes is None or all(str(v) == k for k, v in classes.items()):
        return None
    return [k for k, _ in sorted(classes.items(), key=lambda kv: kv[1])]


def _bucket_counts(keys: list[Key | None], picked: list[int]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for i in picked:
        for field, bucket in keys[i] or ():
            if isinstance(bucket, int):
                out.setdefault(field, Counter())[str(bucket)] += 1
    return {f: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for f, c in out.items()}


def _source_row(
    ref: SampleRef,
    values: dict[str, Path | str | None],
    key: Key,
    zero: frozenset[str],
    fields: list[str],
) -> list[str]:
    row = [ref.id, ref.label or ""]
    for field in fields:
        value = values.get(field)
        if value is None:
            row += ["", ""]
        elif isinstance(value, Path):
            row += [str(value), _sha(value.read_bytes())]
        else:
            row += ["(inline text)", _sha(value.encode())]
    row += [";".join(f"{f}={b}" for f, b in key if isinstance(b, int)), ";".join(sorted(zero))]
    return row


def _source_header(fields: list[str]) -> list[str]:
    header = ["id", "label"]
    for field in fields:
        header += [field, f"{field}_sha256"]
    return [*header, "buckets", "zeroed"]


_sha = sha256_bytes


def _prep_sha(recipe: Recipe) -> str:
    return sha256_json(
        {
            "inputs": recipe.model_dump(mode="json", include={"inputs", "axes"}),
            "preprocess": {n: s.model_dump(mode="json") for n, s in recipe.preprocess.items()},
        }
    )
