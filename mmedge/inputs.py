"""Named multimodal inputs: concrete shapes, dummy feeds, and validation of real feeds.

The same ``dict[name, np.ndarray]`` feeds PyTorch, every target session, calibration,
comparison and benchmarking, so validation lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from mmedge.errors import InputSpecError
from mmedge.recipe import InputSpec, Recipe

Point = Literal["min", "opt", "max"]
Feeds = dict[str, np.ndarray]

NP_DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(name) for name in ("float32", "float16", "int64", "int32", "bool", "uint8")
}


def concrete_shape(
    spec: InputSpec, recipe: Recipe, point: Point = "opt", batch: int | None = None
) -> tuple[int, ...]:
    """Resolve named axes to the (min|opt|max) value; ``batch`` overrides the batch axis."""
    dims = []
    for dim in spec.shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif dim == recipe.batch_axis and batch is not None:
            dims.append(batch)
        else:
            dims.append(getattr(recipe.axes[dim], point))
    return tuple(dims)


def dummy_feeds(
    recipe: Recipe, point: Point = "opt", batch: int | None = None, seed: int = 0
) -> Feeds:
    """Random feeds of the right shapes and dtypes (ints drawn from the spec's range)."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for name, spec in recipe.inputs.items():
        shape = concrete_shape(spec, recipe, point, batch)
        dtype = NP_DTYPES[spec.dtype]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = np.ones(shape, dtype=dtype)
        else:
            low, high = spec.range or (0, 2)
            feeds[name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
    return feeds


def validate_feeds(
    feeds: Mapping[str, np.ndarray], recipe: Recipe, where: str, values: bool = True
) -> None:
    """Check names, dtypes, ranks, static dims, axis ranges and shared-axis agreement; with
    ``values``, also token ids below the range's end and no NaN/Inf (scans of the data).

    ``where`` names the source in messages (e.g. "calibration shard shard-0003.npz").
    """
    missing = [n for n in recipe.inputs if n not in feeds]
    extra = [n for n in feeds if n not in recipe.inputs]
    if missing or extra:
        raise InputSpecError(
            f"{where}: inputs do not match the recipe: missing {missing}, unexpected {extra}; "
            f"{where} has: {', '.join(feeds) or 'nothing'}; recipe expects: {', '.join(recipe.inputs)}"
        )
    axis_sizes: dict[str, tuple[int, str]] = {}
    for name, spec in recipe.inputs.items():
        _check_one(name, np.asarray(feeds[name]), spec, recipe, where, axis_sizes, values)


def _check_one(
    name: str,
    array: np.ndarray,
    spec: InputSpec,
    recipe: Recipe,
    where: str,
    axis_sizes: dict[str, tuple[int, str]],
    values: bool = True,
) -> None:
    if array.dtype != NP_DTYPES[spec.dtype]:
        hint = " (token ids and masks must stay integer)" if spec.modality == "text" else ""
        raise InputSpecError(
            f"{where}: input '{name}' has dtype {array.dtype}, expected {spec.dtype}{hint}"
        )
    if array.ndim != len(spec.shape):
        raise InputSpecError(
            f"{where}: input '{name}' has rank {array.ndim} (shape {list(array.shape)}), "
            f"expected rank {len(spec.shape)} for shape {spec.shape}"
        )
    if array.shape[0] == 0:
        raise InputSpecError(f"{where}: input '{name}' has zero samples")
    for i, (size, dim) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if isinstance(dim, int):
            if size != dim:
                raise InputSpecError(
                    f"{where}: input '{name}' dim {i} is {size}, expected {dim} (shape {spec.shape})"
                )
            continue
        if dim in axis_sizes and axis_sizes[dim][0] != size:
            other_size, other = axis_sizes[dim]
            raise InputSpecError(
                f"{where}: axis '{dim}' is {size} in '{name}' but {other_size} in '{other}'"
            )
        axis_sizes[dim] = (size, name)
        rng = recipe.axes[dim]
        if dim != recipe.batch_axis and not rng.min <= size <= rng.max:
            raise InputSpecError(
                f"{where}: input '{name}' axis '{dim}' is {size}, outside the recipe's "
                f"range [{rng.min}, {rng.max}]"
            )
    if not values:
        return
    if spec.range is not None and np.issubdtype(array.dtype, np.integer) and array.size:
        # For integer inputs the range's upper end is a hard limit (token ids below the
        # embedding's size); its lower end only shapes dummy inputs (a mask of ones: [1, 2]).
        top = int(array.max())
        if top >= spec.range[1]:
            raise InputSpecError(
                f"{where}: input '{name}' holds the value {top}, not below the recipe's range "
                f"end {spec.range[1]:g} (for token ids: the embedding's size)"
            )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputSpecError(f"{where}: input '{name}' holds {bad} NaN/Inf values")


def batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])
