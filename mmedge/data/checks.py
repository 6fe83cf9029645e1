"""Warnings about a calibration set: what silently ruins INT8 ranges in other tools.

Constant inputs, NaN/Inf, token ids outside the vocabulary, dtypes and shapes that disagree
with the recipe, and dynamic axes covered thinly or only in part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mmedge.data.stats import NEAR_CONSTANT, SetStats
from mmedge.recipe import Recipe


@dataclass(frozen=True)
class Finding:
    code: str
    input: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check(stats: SetStats, recipe: Recipe | None, min_per_bucket: int) -> list[Finding]:
    found: list[Finding] = []
    for name, s in stats.inputs.items():
        if s.nonfinite:
            found.append(Finding("nonfinite", name, f"{name}: {s.nonfinite} NaN/Inf values"))
        if s.values and s.std <= NEAR_CONSTANT * max(1.0, abs(s.mean)):
            what = "constant" if s.low == s.high else "near-constant"
            found.append(
                Finding(
                    "constant",
                    name,
                    f"{name}: {what} (every value ≈ {s.mean:.4g}); its calibrated range is "
                    "degenerate and the path that varies at deploy time is never seen",
                )
            )
    if recipe is not None:
        found += _against_recipe(stats, recipe)
        found += _buckets_by_axis(stats, recipe, min_per_bucket)
    else:
        found += _buckets_by_dim(stats, min_per_bucket)
    return found


def _against_recipe(stats: SetStats, recipe: Recipe) -> list[Finding]:
    found = []
    for name in sorted(set(recipe.inputs) - set(stats.inputs)):
        found.append(Finding("missing_input", name, f"{name}: the recipe's input is absent"))
    for name in sorted(set(stats.inputs) - set(recipe.inputs)):
        found.append(Finding("unknown_input", name, f"{name}: not an input of the recipe"))
    for name, s in stats.inputs.items():
        spec = recipe.inputs.get(name)
        if spec is None:
            continue
        if s.dtype != spec.dtype:
            found.append(
                Finding("dtype", name, f"{name}: dtype {s.dtype}, the recipe says {spec.dtype}")
            )
        want = spec.shape[1:]
        got = s.shape()
        if len(got) != len(want) or any(
            isinstance(w, int) and g != w for g, w in zip(got, want, strict=False)
        ):
            found.append(
                Finding(
                    "shape",
                    name,
                    f"{name}: per-sample shape {got}, the recipe says {want}",
                )
            )
        if name in _token_inputs(recipe) and spec.range is not None and s.values:
            low, high = spec.range
            if s.high >= high or s.low < low:
                found.append(
                    Finding(
                        "token_range",
                        name,
                        f"{name}: values {s.low:g}..{s.high:g} fall outside [{low:g}, {high:g}) "
                        "(ids at or above the vocabulary size index past the embedding table)",
                    )
                )
    return found


def _buckets_by_axis(stats: SetStats, recipe: Recipe, min_per_bucket: int) -> list[Finding]:
    found = []
    for axis, bounds in recipe.axes.items():
        if axis == recipe.batch_axis:
            continue
        sizes = None
        for name, spec in recipe.inputs.items():
            s = stats.inputs.get(name)
            if s is not None and axis in spec.shape[1:] and len(s.dims) == len(spec.shape) - 1:
                sizes = s.dims[spec.shape[1:].index(axis)]
                break
        if not sizes:
            continue
        found += _thin(sizes, min_per_bucket, None, f"axis {axis}")
        if min(sizes) > bounds.min or max(sizes) < bounds.max:
            found.append(
                Finding(
                    "axis_coverage",
                    None,
                    f"axis {axis}: the set covers {min(sizes)}..{max(sizes)} of the recipe's "
                    f"{bounds.min}..{bounds.max}; ranges at the missing lengths are extrapolated",
                )
            )
    return found


def _buckets_by_dim(stats: SetStats, min_per_bucket: int) -> list[Finding]:
    found = []
    for name, s in stats.inputs.items():
        for position, sizes in enumerate(s.dims, 1):
            if len(sizes) < 2:
                continue
            found += _thin(sizes, min_per_bucket, name, f"{name} dim {position}")
    return found


def _token_inputs(recipe: Recipe) -> set[str]:
    """Inputs holding token ids: a text preprocess's ``ids``; without one, integer text inputs
    other than masks (whose recipe range describes dummy inputs, not the vocabulary)."""
    declared = {spec.ids for spec in recipe.preprocess.values() if spec.kind == "text"}
    if declared:
        return declared
    return {
        name
        for name, spec in recipe.inputs.items()
        if spec.modality == "text" and spec.dtype.startswith("int") and "mask" not in name
    }


def _thin(sizes: Mapping[int, int], least: int, name: str | None, what: str) -> list[Finding]:
    """One warning listing the sizes (lengths) with fewer than ``least`` samples."""
    thin = {k: v for k, v in sorted(sizes.items()) if v < least}
    if not thin:
        return []
    listed = ", ".join(f"{k}: {v}" for k, v in thin.items())
    return [Finding("thin_bucket", name, f"{what}: fewer than {least} samples at size(s) {listed}")]
