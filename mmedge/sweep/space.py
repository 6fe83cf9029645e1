"""The search space: recipe field paths, their values, and the trials a grid makes of them.

Every field path is checked against the recipe schema and every value by validating the
recipe with it, all before a cluster starts: a typo must cost a message, not a sweep.
"""

from __future__ import annotations

import itertools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, RootModel

from mmedge.errors import RecipeError
from mmedge.hashing import sha256_json
from mmedge.recipe import Recipe, with_overrides
from mmedge.sweep.spec import Range

Space = dict[str, list[Any] | Range]
_FORBIDDEN = ("name", "sweep")  # a trial renamed, or a sweep inside a sweep, means nothing


@dataclass(frozen=True)
class Trial:
    """One point of the space: the overrides it puts on the recipe."""

    overrides: dict[str, Any]

    @property
    def id(self) -> str:
        """Stable across runs and grids: a resumed or widened sweep finds its trials again."""
        return sha256_json(self.overrides)[:10]

    def label(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.overrides.items()) or "(the recipe)"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return str(value)


def _unwrap(annotation: Any) -> Any:
    """X from Optional[X], Annotated[X, ...]; the annotation itself otherwise."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation


def field_annotation(path: str, recipe: Recipe) -> Any:
    """The annotation at a dotted recipe path; a RecipeError naming the first wrong part."""
    from mmedge.targets import specs

    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise RecipeError(f"sweep field {path!r} is not a dotted recipe path (e.g. prune.ratio)")
    if parts[0] in _FORBIDDEN:
        raise RecipeError(f"sweep field {path!r}: {parts[0]!r} cannot be swept")
    node: Any = Recipe
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the recipe"
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, RootModel):  # targets: name -> section
            registered = specs()
            if part not in registered:
                raise RecipeError(
                    f"sweep field {path!r}: {part!r} is not a target; expected one of "
                    f"{', '.join(registered)}"
                )
            node = registered[part].config
        elif isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                raise RecipeError(
                    f"sweep field {path!r}: {here} has no field {part!r}; expected one of "
                    f"{', '.join(fields)}"
                )
            node = fields[part].annotation
        elif typing.get_origin(node) is dict:
            if parts[i - 1] == "branches" and recipe.branches and part not in recipe.branches:
                raise RecipeError(
                    f"sweep field {path!r}: {part!r} is not a branch of the recipe; expected "
                    f"one of {', '.join(recipe.branches)}"
                )
            node = typing.get_args(node)[1]
        else:
            raise RecipeError(f"sweep field {path!r}: {here} is a value, it has no field {part!r}")
    return _unwrap(node)


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def parse_values(text: str) -> list[Any] | Range:
    """``V1,V2,...`` (each read as YAML: 0.5, true, null, minmax) or ``LOW..HIGH``."""
    if ".." in text and "," not in text:
        low, _, high = text.partition("..")
        try:
            return Range(low=float(low), high=float(high))
        except ValueError as err:
            raise RecipeError(f"{text!r} is not a range LOW..HIGH of numbers ({err})") from None
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise RecipeError(f"{text!r} has an empty value; expected V1,V2,... or LOW..HIGH")
        values.append(_yaml(item, "a sweep value"))
    return values


def parse_grid(items: list[str]) -> Space:
    """``--grid FIELD=V1,V2`` flags; a field given twice is refused."""
    space: Space = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise RecipeError(f"--grid {item!r}: expected FIELD=V1,V2,... or FIELD=LOW..HIGH")
        if field.strip() in space:
            raise RecipeError(f"--grid names {field.strip()!r} twice")
        space[field.strip()] = parse_values(text)
    return space


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` flags: overrides every trial shares."""
    sets: dict[str, Any] = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise RecipeError(f"--set {item!r}: expected FIELD=VALUE")
        sets[field.strip()] = _yaml(text, f"--set {field.strip()}") if text.strip() else None
    return sets


def normalized_sets(sets: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """--set values as --grid values are: a list field takes one item, a path is absolute."""
    out = {}
    for field, value in sets.items():
        annotation = field_annotation(field, recipe)
        if _is_list(annotation) and value is not None:
            value = _as_list(value)
        out[field] = absolute(value) if annotation is Path else value
    return out


def normalized(space: Space, recipe: Recipe) -> Space:
    """Fields checked, list fields' values made lists (``run.variants=openvino-int8`` is one
    variant; ``a+b`` two), and every value validated on the recipe."""
    out: Space = {}
    for field, values in space.items():
        annotation = field_annotation(field, recipe)
        if isinstance(values, Range):
            if _is_list(annotation) or annotation not in (float, int):
                raise RecipeError(
                    f"sweep field {field!r} takes {getattr(annotation, '__name__', annotation)} "
                    f"values, not a range {values.low}..{values.high}; list them instead"
                )
            if annotation is int and not all(
                float(v).is_integer() for v in (values.low, values.high, values.step or 1)
            ):
                raise RecipeError(
                    f"sweep field {field!r} takes integers; the range {values.low}..{values.high} "
                    "(and its step) must be whole numbers"
                )
            for end in (values.low, values.high):
                _check(recipe, {field: int(end) if annotation is int else end})
            out[field] = values.model_copy(update={"as_int": annotation is int})
            continue
        if _is_list(annotation):
            values = [_as_list(v) for v in values]
        if annotation is Path:  # relative to where the command runs, not to each worker's
            values = [absolute(v) for v in values]
        for value in values:
            _check(recipe, {field: value})
        if len({sha256_json(v) for v in values}) != len(values):
            raise RecipeError(f"sweep field {field!r} lists a value twice: {values}")
        out[field] = values
    return out


def absolute(value: Any) -> Any:
    if isinstance(value, str) and value:
        return str(Path(value).expanduser().resolve())
    return value


def _yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{what}: {text!r} is not a YAML value ({err})") from None


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str) and "+" in value:
        return value.split("+")
    return [value]


def _check(recipe: Recipe, overrides: dict[str, Any]) -> None:
    try:
        with_overrides(recipe, overrides)
    except RecipeError as err:
        (field, value), *_ = overrides.items()
        raise RecipeError(f"sweep value {field}={_show(value)} is invalid: {err.message}") from None


def grid_trials(space: Space, cap: int | None = None) -> list[Trial]:
    """Every combination, in the order the fields were given; a range is refused (it has no
    grid points: list the values, or search it with --search optuna)."""
    for field, values in space.items():
        if isinstance(values, Range):
            raise RecipeError(
                f"sweep field {field!r} is a range ({values.low}..{values.high}); a grid needs "
                "listed values",
                hint="list them (FIELD=V1,V2,...), or use --search optuna",
            )
    fields = list(space)
    lists = [typing.cast(list[Any], space[f]) for f in fields]
    trials = [Trial(dict(zip(fields, combo, strict=True))) for combo in itertools.product(*lists)]
    return trials[:cap] if cap is not None else trials


def trial_recipe(recipe: Recipe, trial: Trial) -> Recipe:
    return with_overrides(recipe, trial.overrides)
