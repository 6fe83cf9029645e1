"""Property tests: whatever a user feeds mmedge ends in a documented error, never a traceback.

Recipes, calibration shards, artifact manifests and run manifests are mutated at random
(Hypothesis) from valid ones, or replaced by arbitrary bytes. Each reader may succeed or raise
its documented `MmedgeError` subclass; any other exception propagates and fails the test, and
Hypothesis shrinks it to a minimal input.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from mmedge.data.datasets import ShardDataset, read_npz
from mmedge.data.inspect import inspect_set
from mmedge.errors import ArtifactError, InputSpecError, OutputExistsError, RecipeError
from mmedge.recipe import Recipe, load_recipe, parse_recipe
from mmedge.run.report import rerender
from mmedge.run.state import RunState
from mmedge.rundir import check_output_dir, manifest_problem, read_manifest
from tests.conftest import REFERENCE, TINY, tiny_feeds

# derandomize: CI runs the same examples every time (a property that fails, fails on every run
# and on every machine); MMEDGE_HYPOTHESIS_EXPLORE=1 draws new ones on each run.
FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    derandomize=not os.environ.get("MMEDGE_HYPOTHESIS_EXPLORE"),
)

# -- arbitrary JSON-like values and random mutations of a document ----------------------------

_AWKWARD_STRINGS = [
    "",
    " ",
    "batch",
    "seq",
    "float32",
    "int64",
    "image",
    "text",
    "logits",
    "head",
    "a:b",
    "tests.models:tiny_fusion",
    "~",
    "~nobody/x.npz",
    "../" * 8,
    "x.safetensors",
    "m.onnx",
    "a\x00b",
    "é" * 3,
    "x" * 300,
    "1e999",
    "nan",
    "null",
    "-",
    "onnxruntime-fp32",
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2, 17, 2**31, 2**63, -(2**63), 10**30, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e-300, 1e308, -0.0]),
    st.text(max_size=12),
    st.sampled_from(_AWKWARD_STRINGS),
)

JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(_AWKWARD_STRINGS), kids, max_size=4)
    ),
    max_leaves=10,
)

Where = tuple[str | int, ...]


def _outcome(what: str) -> None:
    """Tally outcomes in ``--hypothesis-show-statistics`` (not in plain parametrized tests)."""
    if currently_in_test_context():
        event(what)


def _paths(node: Any, prefix: Where = ()) -> Iterator[Where]:
    """Every place in a document: the root, then each dict value and list item."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _get(doc: Any, path: Where) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any, keys: list[str]) -> Any:
    """``base`` after one to four random edits: a value replaced (by arbitrary JSON or by
    another part of the document), a key or item deleted, an unknown or known key added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        value = draw(JSON | st.sampled_from(list(_paths(base))).map(lambda p: _get(base, p)))
        value = copy.deepcopy(value)
        if not path:
            if op == "replace":
                doc = value
            continue
        parent, last = _get(doc, path[:-1]), path[-1]
        target = _get(doc, path)
        if op == "replace":
            parent[last] = value
        elif op == "delete":
            del parent[last]
        elif isinstance(target, dict):
            target[draw(st.sampled_from(keys) | st.text(max_size=8))] = value
        elif isinstance(target, list):
            target.insert(draw(st.integers(0, len(target))), value)
        else:
            parent[last] = value
    return doc


def _keys(doc: Any) -> list[str]:
    return sorted({str(p[-1]) for p in _paths(doc) if p and isinstance(p[-1], str)})


# -- 1. recipes --------------------------------------------------------------------------------

REFERENCE_RAW = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
# The tiny recipe with every optional section present, so mutations reach their validators.
FULL = {
    **copy.deepcopy(TINY),
    "quantization": REFERENCE_RAW["quantization"],
    "preprocess": {
        "image": {"kind": "image", "input": "image", "size": [8, 8], "mode": "L"},
        "text": {"kind": "text", "tokenizer": "tok.json", "max_length": 16, "buckets": [4, 8]},
        "audio": {"kind": "audio", "input": "audio", "sample_rate": 8000, "buckets": [8, 16]},
    },
    "prune": {
        "ratio": 0.5,
        "branches": {"image": 0.25, "text": 0.5},
        "sparsity": {"mode": "2:4"},
        "recover": {"mode": "finetune", "data": {"factory": "a.b:c", "kwargs": {"n": 1}}},
    },
    "targets": {"tensorrt": {"timing_cache": "cache.bin", "workspace_mb": 512}},
    "run": {"variants": ["onnxruntime-fp32", "onnxruntime-int8"], "latency_rounds": 3},
}
BASES = [TINY, FULL, REFERENCE_RAW]
RECIPE_KEYS = sorted(set().union(*(_keys(b) for b in BASES)))
RECIPES = st.sampled_from(BASES).flatmap(lambda base: mutated(base, RECIPE_KEYS))


def test_the_bases_are_valid_recipes() -> None:
    for base in BASES:
        parse_recipe(copy.deepcopy(base), "base").artifact_sha256()


def _parsed_or_recipe_error(call: Any) -> Recipe | None:
    try:
        recipe: Recipe = call()
    except RecipeError as err:
        assert err.exit_code == 3
        assert err.message
        _outcome("RecipeError")
        return None
    _outcome("valid recipe")
    recipe.artifact_sha256()  # every command hashes the recipe it loaded
    return recipe


@FAST
@given(raw=RECIPES)
@example(raw={**TINY, "inputs": {"x": {"shape": ["batch", 10**400], "modality": "image"}}})
@example(raw={**TINY, "axes": {**TINY["axes"], "frames": {"min": 1, "opt": 1, "max": 10**400}}})
@example(raw={**TINY, "compare": {"min_cosine": float("nan")}})
@example(raw={**TINY, "bench": {"threads": 10**6}})
@example(raw=[TINY])
@example(raw=None)
def test_parse_recipe_raises_only_recipe_errors(raw: Any) -> None:
    _parsed_or_recipe_error(lambda: parse_recipe(raw, "fuzzed recipe"))


def _load_text(data: bytes) -> Recipe | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        return _parsed_or_recipe_error(lambda: load_recipe(path))


@settings(FAST, max_examples=100)
@given(raw=RECIPES)
@example(raw={**TINY, "calibration": {"path": "a\x00b"}})
@example(raw={**TINY, "model": {"factory": "a:b", "weights": "~\x00/w.pt"}})
def test_load_recipe_of_a_mutated_recipe_raises_only_recipe_errors(raw: Any) -> None:
    _load_text(yaml.safe_dump(raw, allow_unicode=True).encode())


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
# A valid recipe whose free-form kwargs contain themselves: validation alone cannot see it.
RECURSIVE_KWARGS = 'model: {factory: "a.b:c", kwargs: &k {x: [*k]}}\n' + yaml.safe_dump(
    {k: v for k, v in TINY.items() if k != "model"}
)


@settings(FAST, max_examples=150)
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
@example(data=ALIAS_BOMB.encode())
@example(data=b"[" * 20_000 + b"]" * 20_000)  # nesting deeper than the YAML composer's stack
@example(data=b"{a: " * 5_000 + b"1" + b"}" * 5_000)
@example(data=b"a:\n" + b"".join(b" " * k + b"- \n" for k in range(1, 3_000)))
@example(data=b"&a [*a]")  # recursive alias: a cycle, not an expansion
@example(data=b"&a {name: *a}")
@example(data=RECURSIVE_KWARGS.encode())
@example(data=b"name: " + b"1" * 5_000)  # beyond Python's int-from-string digit limit
@example(data=b"name: 2001-02-30")  # an implicit timestamp that is no date
@example(data=b"name: !!python/object:os.system x")
@example(data=b"name: !!binary '%%%'")
@example(data=b"? [a]\n: b")
@example(data=b"<<: 5")
@example(data=b"\xff\xfe\x00\x00")
@example(data=b"name: tiny\x00")
@example(data=b"\xef\xbb\xbfname: tiny")
@example(data=b"")
def test_load_recipe_of_arbitrary_bytes_raises_only_recipe_errors(data: bytes) -> None:
    _load_text(data)


# -- 2. calibration shards ---------------------------------------------------------------------

TINY_RECIPE = parse_recipe(copy.deepcopy(TINY), "tiny")
INPUT_NAMES = [*TINY["inputs"], "label", "y"]
DTYPES = [
    "float32",
    "float16",
    "float64",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "<U3",
    "S2",
    "datetime64[s]",
    "V4",
    "O",
    [("a", "<i4"), ("b", "<f4")],
]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=True)
    return buf.getvalue()


def _zip(members: dict[str, bytes], compress: bool) -> bytes:
    """What np.savez(_compressed) writes, with member names numpy's keyword API cannot take."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as archive:
        for name, data in members.items():
            # zipfile cuts a name at NUL (and fails on an empty one): not the reader under test
            archive.writestr(name.replace("\x00", "_"), data)
    return buf.getvalue()


def _fill(dtype: Any, shape: tuple[int, ...], mode: str, seed: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "O":
        return np.full(shape, None, dtype=object)
    array = np.zeros(shape, dtype=dt)
    if dt.kind in "fc":
        values = {"random": np.random.default_rng(seed).standard_normal(shape)}
        with np.errstate(over="ignore"):  # 1e38 in a float16 is inf: one more odd value
            array[...] = values.get(mode, {"nan": np.nan, "inf": np.inf, "huge": 1e38}.get(mode, 0))
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        top = {"huge": info.max, "nan": info.min}.get(mode, 3)
        array[...] = np.random.default_rng(seed).integers(0, 4, size=shape) if top == 3 else top
    return array


ARRAYS = st.builds(
    _fill,
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 5), max_size=4).map(tuple),
    st.sampled_from(["random", "zeros", "nan", "inf", "huge"]),
    st.integers(0, 2**16),
)


@st.composite
def feeds(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """The tiny recipe's inputs (and labels), then random edits: arrays dropped, added,
    reshaped, re-typed, or filled with NaN/Inf or out-of-range token ids."""
    n = draw(st.integers(0, 4))
    seq, frames = draw(st.integers(2, 20)), draw(st.integers(1, 40))
    arrays: dict[str, np.ndarray] = dict(tiny_feeds(n, seq, frames, draw(st.integers(0, 99))))
    arrays["label"] = np.arange(n, dtype=draw(st.sampled_from(["int64", "float32", "int8"])))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(INPUT_NAMES) | st.text(min_size=1, max_size=6))
        op = draw(st.sampled_from(["drop", "new", "cast", "reshape", "poison"]))
        if op == "drop":
            arrays.pop(name, None)
        elif op == "new" or name not in arrays:
            arrays[name] = draw(ARRAYS)
        elif op == "cast" and arrays[name].dtype.kind in "biuf":
            arrays[name] = arrays[name].astype(draw(st.sampled_from(DTYPES[:8])))
        elif op == "reshape":
            arrays[name] = arrays[name].reshape(-1)
        else:
            poison = draw(st.sampled_from([np.nan, np.inf, 16, 2**40, -1]))
            flat = arrays[name].reshape(-1)
            if flat.size and flat.dtype.kind == "f":
                flat[0] = poison
            elif flat.size and flat.dtype.kind in "iu" and isinstance(poison, int):
                info = np.iinfo(flat.dtype)
                flat[0] = min(max(poison, info.min), info.max)
    return arrays


def _shard(arrays: dict[str, np.ndarray], compress: bool) -> bytes:
    return _zip({f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}, compress)


def _npy_with_header(header: str, payload: bytes = b"\0" * 16) -> bytes:
    """A version 1.0 .npy whose header says whatever ``header`` says."""
    text = header.encode("utf-8")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + payload


FORGED_HEADERS = st.one_of(
    st.builds(
        lambda descr, order, shape: repr(
            {"descr": descr, "fortran_order": order, "shape": tuple(shape)}
        ),
        st.sampled_from(["<f4", "<i8", "|b1", "|O", "<U1000000000", "|V0", "xyz", "<f4 ", "|S0"]),
        st.booleans(),
        st.lists(
            st.sampled_from([0, 1, 4, -1, 2**31, 2**62, 2**64, 10**200]) | st.integers(), max_size=4
        ),
    ),
    st.text(max_size=60),
    st.just("{'descr': '<f4', 'shape': (2,)}"),
    st.just("{'descr': '<f4', 'fortran_order': False, 'shape': 'x'}"),
)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A valid shard with its bytes cut short, flipped or spliced."""
    data = bytearray(_shard(draw(feeds()), draw(st.booleans())))
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=16)) + bytes(data[at:])


SHARD_BYTES = st.one_of(
    st.builds(_shard, feeds(), st.booleans()),
    st.builds(
        _shard, st.dictionaries(st.sampled_from(INPUT_NAMES), ARRAYS, max_size=3), st.booleans()
    ),
    corrupted(),
    st.builds(
        lambda header, name, compress: _zip({f"{name}.npy": _npy_with_header(header)}, compress),
        FORGED_HEADERS,
        st.sampled_from(INPUT_NAMES),
        st.booleans(),
    ),
    st.binary(max_size=200),
)

_VALID = _shard(tiny_feeds(4, 8, 16), False)


def _forged(shape: Any, descr: str = "<f4", compress: bool = False) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape})
    return _zip({"image.npy": _npy_with_header(header)}, compress)


_EXAMPLES = [
    _npy_bytes(np.zeros((2, 3), np.float32)),  # a lone .npy named .npz: not an archive
    b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",  # a pickle
    _forged((10**200, 10**200)),  # more elements than a float64 can count
    _forged((-1, 4)),
    _forged((2**40, 2**40), compress=True),
    _forged((1,), descr="|O"),  # pickled objects
    _forged((3,), descr="<U1000000000"),
    _zip({"image.npy": b"not an array", "label": b"neither"}, True),
    _zip({"image": _npy_bytes(np.zeros(3))}, False),  # a member without .npy
    _VALID[: len(_VALID) // 2],
    _shard({"image": np.zeros((0, 1, 8, 8), np.float32)}, True),
    _shard({}, False),
]


def _read_or_input_error(call: Any) -> Any:
    try:
        result = call()
    except InputSpecError as err:
        assert err.exit_code == 4
        assert err.message
        _outcome("InputSpecError")
        return None
    _outcome("read")
    return result


@contextlib.contextmanager
def _with_shards(shards: list[bytes]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "set"
        directory.mkdir()
        for k, data in enumerate(shards):
            (directory / f"shard-{k:03d}.npz").write_bytes(data)
        yield directory


@settings(FAST, max_examples=200)
@given(data=SHARD_BYTES)
def test_read_npz_raises_only_input_errors(data: bytes) -> None:
    _check_read_npz(data)


@pytest.mark.parametrize("data", _EXAMPLES, ids=range(len(_EXAMPLES)))
def test_read_npz_of_forged_and_odd_files_raises_only_input_errors(data: bytes) -> None:
    _check_read_npz(data)


def _check_read_npz(data: bytes) -> None:
    with _with_shards([data]) as directory:
        arrays = _read_or_input_error(lambda: read_npz(directory / "shard-000.npz"))
        if arrays is not None:
            assert isinstance(arrays, dict)
            assert all(isinstance(a, np.ndarray) for a in arrays.values())


@settings(FAST, max_examples=150)
@given(
    shards=st.lists(SHARD_BYTES | st.sampled_from(_EXAMPLES), min_size=1, max_size=3),
    label_key=st.sampled_from([None, "label", "y"]),
    limit=st.none() | st.integers(1, 10),
)
def test_shard_dataset_raises_only_input_errors(
    shards: list[bytes], label_key: str | None, limit: int | None
) -> None:
    with _with_shards(shards) as directory:
        data = _read_or_input_error(
            lambda: ShardDataset(directory, TINY_RECIPE, label_key=label_key, limit=limit)
        )
        if data is not None:
            assert data.samples >= 1
            batches = list(data.batches(3))  # shards are read again: still validated
            assert sum(len(next(iter(b.feeds.values()))) for b in batches) == data.samples
        for recipe in (None, TINY_RECIPE):
            report = _read_or_input_error(lambda r=recipe: inspect_set(directory, r))
            if report is not None:
                json.dumps(report)  # `calib inspect --json` prints it


# -- 3. artifact and run manifests -------------------------------------------------------------

SHA = "0" * 64
MANIFEST = {
    "format": "mmedge-artifact/1",
    "created": "2025-01-01T00:00:00+0000",
    "identity": {"target": "onnxruntime", "precision": "int8", "recipe_sha256": "abc"},
    "artifact": {
        "path": "model.onnx",
        "bytes": 5,
        "sha256": SHA,
        "files": [{"path": "model.onnx", "bytes": 5, "sha256": SHA}],
    },
    "versions": {"mmedge": "0.1.0"},
}
IDENTITIES = st.sampled_from([MANIFEST["identity"], {"target": "openvino"}, {}]) | st.dictionaries(
    st.text(max_size=6), st.text(max_size=6), max_size=3
)
MANIFEST_BYTES = st.one_of(
    mutated(MANIFEST, _keys(MANIFEST)).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=100),
    st.just(json.dumps(MANIFEST).encode()),
)
MANIFEST_EXAMPLES = [
    b"[" * 100_000 + b"]" * 100_000,  # nesting beyond json's recursion limit
    b'{"format": ' + b"1" * 5_000 + b"}",  # an int beyond Python's digit limit
    b"\xff\xfe",
    b"NaN",
    b"",
]
EXTRA_FILES = st.lists(
    st.sampled_from(["compare.json", "model.engine", "notes.txt", "data", "weights.bin"]),
    max_size=2,
    unique=True,
)


@settings(FAST, max_examples=200)
@given(
    manifest=MANIFEST_BYTES | st.sampled_from(MANIFEST_EXAMPLES) | st.none(),
    extra=EXTRA_FILES,
    identity=IDENTITIES,
    force=st.booleans(),
)
@example(manifest=MANIFEST_EXAMPLES[0], extra=[], identity={}, force=True)
@example(manifest=MANIFEST_EXAMPLES[1], extra=[], identity={}, force=True)
@example(manifest=json.dumps(MANIFEST).encode(), extra=["notes.txt"], identity={}, force=True)
@example(manifest=json.dumps(MANIFEST).encode(), extra=[], identity={}, force=False)
def test_artifact_manifests_raise_only_documented_errors(
    manifest: bytes | None, extra: list[str], identity: dict[str, str], force: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        (out / "model.onnx").write_bytes(b"model")
        if manifest is not None:
            (out / "manifest.json").write_bytes(manifest)
        for name in extra:
            (out / name).write_bytes(b"{}")

        try:
            data = read_manifest(out)
        except ArtifactError as err:
            assert err.exit_code == 10
            _outcome("read_manifest: ArtifactError")
        else:
            assert isinstance(data, dict)
            _outcome("read_manifest: read")

        problem = None if manifest is None else manifest_problem(out / "manifest.json")
        try:
            check_output_dir(out, identity, force)
        except OutputExistsError as err:
            assert err.exit_code == 9
            _outcome("check_output_dir: refused")
        else:
            _outcome("check_output_dir: allowed")
            # The data-loss guard: --force replaces only a directory mmedge wrote.
            assert manifest is not None and problem is None, "would replace a foreign directory"


RUN = {
    "format": "mmedge-run/1",
    "recipe": {"name": "tiny", "path": "/recipes/tiny.yaml"},
    "started": "2025-01-01T00:00:00+0000",
    "updated": "2025-01-01T00:01:00+0000",
    "steps": {
        "build:onnxruntime-fp32": {"status": "ok", "key": "k1", "seconds": 1.5},
        "build:onnxruntime-int8": {"status": "running", "key": "k2"},
        "compare:onnxruntime-int8": {
            "status": "failed",
            "error": "gate failed",
            "exit_code": 7,
            "seconds": 0.2,
        },
        "bench:onnxruntime-fp32": {"status": "skipped", "reason": "no data"},
        "latency": {"status": "cached", "seconds": 3.0},
    },
    "versions": {"mmedge": "0.1.0"},
    "host": {"platform": "Linux", "cpu": {"name": "cpu", "logical_cpus": 2, "features": ["avx2"]}},
}
RUN_BYTES = st.one_of(
    mutated(RUN, _keys(RUN)).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=100),
)


@settings(FAST, max_examples=150)
@given(run=RUN_BYTES | st.sampled_from(MANIFEST_EXAMPLES), take_over=st.booleans())
@example(run=json.dumps(RUN).encode(), take_over=False)
@example(run=MANIFEST_EXAMPLES[0], take_over=False)
@example(run=MANIFEST_EXAMPLES[1], take_over=True)
def test_run_manifests_raise_only_documented_errors(run: bytes, take_over: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "run"
        directory.mkdir()
        (directory / "run.json").write_bytes(run)
        try:
            state = RunState.open(directory, "tiny", Path("tiny.yaml"), take_over=take_over)
        except OutputExistsError as err:
            assert err.exit_code == 9
            _outcome("RunState.open: OutputExistsError")
        else:
            _outcome("RunState.open: opened")
            assert all(isinstance(r, dict) for r in state.steps.values())
            state.fresh("build:onnxruntime-fp32", "k1", [])

        try:
            report = rerender(directory)
        except ArtifactError as err:
            assert err.exit_code == 10
        else:
            assert isinstance(report, dict)
            assert (directory / "report.html").is_file()
