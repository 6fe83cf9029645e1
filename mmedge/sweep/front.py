"""Pareto fronts per device, and the front's recipes written out ready to run.

A point is (trial, variant, device) with accuracy (higher is better), p50 latency and size
(lower is better), over the objectives the sweep chose. Points outside the constraints are
never on a front. Points with the same figures (the same artifact reached by two trials) are
one point, named by the first trial that made it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mmedge.rundir import atomic_write_text
from mmedge.sweep.search import MAXIMIZE

COLUMN = {"accuracy": "accuracy", "latency": "p50_ms", "size": "mb"}


def values(point: dict[str, Any], objectives: Sequence[str]) -> list[float] | None:
    """The point's objective values, or None when one is missing."""
    got = [point.get(COLUMN[o]) for o in objectives]
    return None if any(v is None for v in got) else [float(v) for v in got]  # type: ignore[arg-type]


def _better_or_equal(a: list[float], b: list[float], objectives: Sequence[str]) -> bool:
    return all(
        (x >= y) if o in MAXIMIZE else (x <= y) for x, y, o in zip(a, b, objectives, strict=True)
    )


def pareto(points: list[dict[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """The non-dominated points (dominated: another is no worse anywhere and better somewhere)."""
    scored = [(p, values(p, objectives)) for p in points if p.get("within", True)]
    ready = [(p, v) for p, v in scored if v is not None]
    front: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    for p, v in ready:
        dominated = any(_better_or_equal(w, v, objectives) and w != v for _, w in ready)
        if not dominated and tuple(v) not in seen:
            seen.add(tuple(v))
            front.append(p)
    return sorted(front, key=lambda p: -(p.get("accuracy") or 0))


def fronts(
    points: list[dict[str, Any]], objectives: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    devices = sorted({p["device"] for p in points})
    return {d: pareto([p for p in points if p["device"] == d and p["status"] == "ok"], objectives)
            for d in devices}  # fmt: skip


def front_recipe(
    base: dict[str, Any], overrides: dict[str, Any], variant: str, isa: str | None
) -> dict[str, Any]:
    """The recipe that rebuilds a front point: the sweep's recipe, its trial's overrides, one
    variant, and the INT8 types pinned to those measured (``isa: auto`` would follow the next
    machine's CPU and build another artifact)."""
    from mmedge.recipe import apply_overrides

    raw = copy.deepcopy(base)
    raw.pop("sweep", None)
    apply_overrides(raw, {**overrides, "run.variants": [variant]})
    if isa is not None and variant.endswith("-int8"):
        apply_overrides(raw, {"quantization.isa": isa})
    return raw


def write_front_recipes(
    out: Path,
    fronts_by_device: dict[str, list[dict[str, Any]]],
    base: dict[str, Any],
    trials: dict[str, dict[str, Any]],
    isa: str | None,
) -> dict[str, list[str]]:
    """``out/DEVICE/TRIAL-VARIANT.yaml`` for every front point; the paths written. Written
    aside and swapped in whole: no recipe of an older front stays behind."""
    import shutil

    stage = out.with_name(f".{out.name}.new")
    shutil.rmtree(stage, ignore_errors=True)
    written: dict[str, list[str]] = {}
    for device, front in fronts_by_device.items():
        for point in front:
            trial = trials[point["trial"]]
            raw = front_recipe(base, trial["overrides"], point["variant"], isa)
            path = out / device / f"{point['trial']}-{point['variant']}.yaml"
            (stage / device).mkdir(parents=True, exist_ok=True)
            head = (
                f"# A front point of `mmedge sweep` on {device}: {trial['label']}, "
                f"{point['variant']}.\n# Measured: accuracy {_fmt(point.get('accuracy'))}%, "
                f"p50 {_fmt(point.get('p50_ms'), 3)} ms, {_fmt(point.get('mb'), 2)} MB.\n"
                f"# Rebuild and measure it: mmedge run {path}\n"
            )
            atomic_write_text(
                stage / device / path.name, head + yaml.safe_dump(raw, sort_keys=False)
            )
            written.setdefault(device, []).append(str(path))
    stage.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    return written


def _fmt(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
