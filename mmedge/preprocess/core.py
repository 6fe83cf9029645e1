"""A sample's raw fields → the model's named inputs, from a recipe or from ``preprocess.json``.

The recipe's ``preprocess`` section is checked against its ``inputs`` here (every input made by
exactly one field, dtypes and static dims agreeing, buckets inside the axes' ranges), resolved
(default buckets, tokenizer files), and written as ``preprocess.json`` so the deploy side can
run the same code without the recipe: ``Preprocessor.load(path)({"image": "a.png", ...})``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import TypeAdapter, ValidationError

from mmedge.errors import InputSpecError, RecipeError
from mmedge.preprocess.array import ArrayField
from mmedge.preprocess.audio import AudioField
from mmedge.preprocess.buckets import default_buckets
from mmedge.preprocess.errors import SampleError
from mmedge.preprocess.image import ImageField
from mmedge.preprocess.spec import AudioPrep, ImagePrep, PrepSpec, TextPrep
from mmedge.preprocess.text import TextField, load_tokenizer

FORMAT = "mmedge-preprocess/1"
Value = Path | str  # a file, or inline text
Key = tuple[tuple[str, Any], ...]  # per bucketed field: its bucket (or an array's shape)


class Field(Protocol):
    @property
    def inputs(self) -> list[str]: ...

    def length(self, value: Value) -> int | None: ...

    def process(self, value: Value, bucket: int | None) -> dict[str, np.ndarray]: ...

    def zeros(self, bucket: int | None) -> dict[str, np.ndarray]: ...


class InputInfo(Protocol):
    shape: list[int | str]
    dtype: str


_FLOAT = ("float32", "float16")
_INT = ("int64", "int32")


class Preprocessor:
    """Applies every field's preprocessing; knows the model inputs' dtypes and static shapes."""

    def __init__(
        self,
        specs: Mapping[str, PrepSpec],
        inputs: Mapping[str, tuple[list[int | str], str]],
        axes: Mapping[str, tuple[int, int]],
    ) -> None:
        self.specs = dict(specs)
        self.inputs = dict(inputs)  # name -> (shape, dtype)
        self.axes = dict(axes)  # name -> (min, max)
        _check_coverage(self.specs, self.inputs)
        self.fields: dict[str, Field] = {
            name: self._field(name, spec) for name, spec in self.specs.items()
        }

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_recipe(cls, recipe: Any) -> Preprocessor:
        if not recipe.preprocess:
            raise RecipeError(
                "the recipe has no 'preprocess' section: mmedge cannot turn raw files into "
                "this model's inputs",
                hint="declare one entry per raw field (image/text/audio/array); see calibration/README.md",
            )
        inputs = {n: (list(s.shape), str(s.dtype)) for n, s in recipe.inputs.items()}
        axes = {n: (a.min, a.max) for n, a in recipe.axes.items()}
        return cls(recipe.preprocess, inputs, axes)

    @classmethod
    def load(cls, path: Path) -> Preprocessor:
        """From a ``preprocess.json`` written by ``save`` (tokenizers beside it)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputSpecError(f"cannot read preprocessing file {path}: {err}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputSpecError(f"{path} is not an mmedge preprocessing file ({FORMAT})")
        adapter: TypeAdapter[PrepSpec] = TypeAdapter(PrepSpec)
        if not all(isinstance(raw.get(k), dict) for k in ("fields", "inputs", "axes")):
            raise InputSpecError(f"{path} lacks its 'fields', 'inputs' or 'axes' section")
        specs = {}
        for name, spec in raw["fields"].items():
            if isinstance(spec, dict) and spec.get("kind") == "text":
                spec = {**spec, "tokenizer": str(path.parent / spec["tokenizer"])}
            try:
                specs[name] = adapter.validate_python(spec)
            except ValidationError as err:
                raise InputSpecError(f"{path}: field {name!r} is invalid: {err}") from None
        inputs = {n: (v["shape"], v["dtype"]) for n, v in raw["inputs"].items()}
        axes = {n: (v[0], v[1]) for n, v in raw["axes"].items()}
        return cls(specs, inputs, axes)

    def save(self, directory: Path) -> list[Path]:
        """``preprocess.json`` plus one ``tokenizer-FIELD.json`` per text field; paths written."""
        written = []
        fields: dict[str, Any] = {}
        for name, spec in self.specs.items():
            data = spec.model_dump(mode="json")
            field = self.fields[name]
            if isinstance(field, TextField):
                target = directory / f"tokenizer-{name}.json"
                target.write_text(field.tokenizer.to_str(), encoding="utf-8")
                written.append(target)
                data["tokenizer"] = target.name
                data["buckets"] = field.buckets
            elif isinstance(field, AudioField):
                data["buckets"] = field.buckets
            fields[name] = data
        document = {
            "format": FORMAT,
            "fields": fields,
            "inputs": {n: {"shape": s, "dtype": d} for n, (s, d) in self.inputs.items()},
            "axes": self.axes,
        }
        path = directory / "preprocess.json"
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        return [path, *written]

    def _field(self, name: str, spec: PrepSpec) -> Field:
        where = f"preprocess.{name}"
        if isinstance(spec, ImagePrep):
            shape, dtype = self.inputs[spec.input]
            _need_dtype(where, spec.input, dtype, _FLOAT)
            channels = 1 if spec.mode == "L" else 3
            h, w = spec.size
            want = [channels, h, w] if spec.layout == "NCHW" else [h, w, channels]
            _need_static(where, spec.input, shape[1:], want)
            return ImageField(spec)
        if isinstance(spec, TextPrep):
            shape, dtype = self.inputs[spec.ids]
            _need_dtype(where, spec.ids, dtype, _INT)
            if spec.mask:
                _need_dtype(where, spec.mask, self.inputs[spec.mask][1], (*_INT, "bool"))
            if len(shape) != 2:
                raise RecipeError(f"{where}: input {spec.ids!r} must be [batch, length]")
            buckets = self._buckets(where, shape[1], spec.buckets)
            if spec.max_length > buckets[-1]:
                raise RecipeError(
                    f"{where}.max_length is {spec.max_length}, above the longest bucket "
                    f"{buckets[-1]} (the input's axis max)"
                )
            return TextField(spec, buckets, load_tokenizer(spec.tokenizer))
        if isinstance(spec, AudioPrep):
            shape, dtype = self.inputs[spec.input]
            _need_dtype(where, spec.input, dtype, _FLOAT)
            if spec.features == "log_mel":
                _need_static(where, spec.input, shape[1:-1], [spec.log_mel.n_mels])
            elif len(shape) != 2:
                raise RecipeError(f"{where}: a waveform input must be [batch, samples]")
            return AudioField(spec, self._buckets(where, shape[-1], spec.buckets))
        shape, dtype = self.inputs[spec.input]
        return ArrayField(spec, dtype, shape)

    def _buckets(self, where: str, dim: int | str, given: list[int] | None) -> list[int]:
        if isinstance(dim, int):
            if given not in (None, [dim]):
                raise RecipeError(f"{where}.buckets {given}: the input's length is fixed at {dim}")
            return [dim]
        low, high = self.axes[dim]
        if given is None:
            return default_buckets(low, high)
        outside = [b for b in given if not low <= b <= high]
        if outside:
            raise RecipeError(
                f"{where}.buckets {outside} lie outside axis {dim!r}'s range [{low}, {high}]"
            )
        return sorted(set(given))

    # -- use ----------------------------------------------------------------------------------

    def key(self, sample: Mapping[str, Value | None]) -> Key:
        """The shape group a sample is built in: each bucketed field's bucket, each array's
        shape. Reads only headers and token counts. Raises SampleError."""
        parts: list[tuple[str, Any]] = []
        for name, field in self.fields.items():
            value = sample.get(name)
            if value is None:
                self._require(name)
                part = _first_bucket(field)
            else:
                try:
                    part = _key_part(field, value)
                except SampleError as err:
                    raise SampleError(f"{name}: {err}") from None
            if part is not None:
                parts.append((name, part))
        return tuple(parts)

    def process(
        self, sample: Mapping[str, Value | None], key: Key, zeroed: frozenset[str] = frozenset()
    ) -> dict[str, np.ndarray]:
        """One sample's arrays (no batch axis), in the inputs' dtypes. Raises SampleError."""
        buckets = dict(key)
        arrays: dict[str, np.ndarray] = {}
        for name, field in self.fields.items():
            value = sample.get(name)
            bucket = buckets.get(name)
            bucket = bucket if isinstance(bucket, int) else None
            if value is None or name in zeroed:
                if value is None:
                    self._require(name)
                arrays.update(field.zeros(bucket))
            else:
                try:
                    arrays.update(field.process(value, bucket))
                except SampleError as err:
                    raise SampleError(f"{name}: {err}") from None
        return {n: a.astype(self.inputs[n][1], copy=False) for n, a in arrays.items()}

    def __call__(self, sample: Mapping[str, Value | None]) -> dict[str, np.ndarray]:
        """Deploy side: one sample → feeds with a batch axis of 1."""
        try:
            arrays = self.process(sample, self.key(sample))
        except SampleError as err:
            raise InputSpecError(str(err)) from None
        return {n: a[None] for n, a in arrays.items()}

    def _require(self, name: str) -> None:
        if self.specs[name].missing != "zeros":
            raise SampleError(f"no {name} (the model needs it; preprocess.{name}.missing: error)")


def _key_part(field: Field, value: Value) -> Any:
    """A field's bucket (text, audio), shape (arrays), or None (images: header checked)."""
    if isinstance(field, ArrayField):
        return field.shape_of(value)
    length = field.length(value)
    if isinstance(field, TextField | AudioField):
        assert length is not None
        return field.bucket(length)
    return None


def _first_bucket(field: Field) -> int | None:
    if isinstance(field, TextField | AudioField):
        return field.buckets[0]
    return None


def _check_coverage(
    specs: Mapping[str, PrepSpec], inputs: Mapping[str, tuple[list[int | str], str]]
) -> None:
    made: dict[str, str] = {}
    for name, spec in specs.items():
        for target in spec.input_names():
            if target not in inputs:
                raise RecipeError(
                    f"preprocess.{name} fills input {target!r}, which the recipe does not "
                    f"declare (inputs: {', '.join(inputs)})"
                )
            if target in made:
                raise RecipeError(
                    f"input {target!r} is filled by both preprocess.{made[target]} and "
                    f"preprocess.{name}"
                )
            made[target] = name
    missing = [n for n in inputs if n not in made]
    if missing:
        raise RecipeError(
            f"no preprocess entry fills input(s) {', '.join(missing)}",
            hint="every model input needs one preprocess entry (kind: array for precomputed .npy)",
        )


def _need_dtype(where: str, name: str, dtype: str, allowed: tuple[str, ...]) -> None:
    if dtype not in allowed:
        raise RecipeError(f"{where} makes {'/'.join(allowed)} values but input {name!r} is {dtype}")


def _need_static(where: str, name: str, dims: list[int | str], want: list[int]) -> None:
    if len(dims) != len(want) or any(
        isinstance(d, int) and d != w for d, w in zip(dims, want, strict=True)
    ):
        raise RecipeError(
            f"{where} makes per-sample shape {want} but input {name!r} is {dims} "
            "(without the batch axis)"
        )
