"""``mmedge calib inspect``: statistics and warnings for any set of ``.npz`` shards.

Reads shards raw (no recipe validation, which would stop at the first problem) so that every
problem is reported at once; with a recipe, also checks names, dtypes, shapes, token ranges
and how the set covers the recipe's dynamic axes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmedge.data.checks import check
from mmedge.data.datasets import read_npz
from mmedge.data.stats import SetStats
from mmedge.errors import InputSpecError
from mmedge.recipe import Recipe


def inspect_set(
    path: Path, recipe: Recipe | None = None, label_key: str = "label", min_per_bucket: int = 8
) -> dict[str, Any]:
    if not path.exists():
        raise InputSpecError(f"calibration set not found: {path}")
    shards = [path] if path.is_file() else sorted(path.glob("*.npz"))
    if not shards:
        raise InputSpecError(f"{path}: no .npz shards found")
    stats = SetStats()
    problems: list[str] = []
    for shard in shards:
        try:
            arrays = read_npz(shard)
        except InputSpecError as err:
            problems.append(f"{shard.name}: {err.message}")
            continue
        labels = arrays.pop(label_key, None)
        counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
        if len(counts) != 1 or 0 in counts:
            problems.append(f"{shard.name}: arrays disagree on the sample count or are empty")
            continue
        odd = {k: str(a.dtype) for k, a in arrays.items() if a.dtype.kind not in "biuf"}
        if odd or (labels is not None and labels.ndim != 1):
            what = f"arrays that are not numbers {odd}" if odd else "labels that are not 1-D"
            problems.append(f"{shard.name}: holds {what}")
            continue
        stats.add(arrays, labels)
    if not stats.samples:
        raise InputSpecError(f"{path}: no readable samples:\n  " + "\n  ".join(problems))
    findings = check(stats, recipe, min_per_bucket)
    manifest = _manifest(path)
    return {
        "path": str(path),
        "shards": len(shards),
        **stats.to_json(),
        "unreadable": problems,
        "warnings": [f.to_json() for f in findings]
        + [{"code": "unreadable", "input": None, "message": p} for p in problems],
        "built_from": manifest.get("source") if manifest else None,
    }


def _manifest(path: Path) -> dict[str, Any] | None:
    file = path / "manifest.json" if path.is_dir() else None
    if file is None or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
