"""Shared fixtures: a tiny recipe written to disk with its data, and artifacts built from it once."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _has_tensorrt() -> bool:
    # Not a bare import: tensorrt-stubs (installed for mypy) leaves an empty, importable
    # namespace package called tensorrt.
    from mmedge.targets.tensorrt.engine import tensorrt_version

    return tensorrt_version() is not None


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``tensorrt``/``gpu`` skip cleanly where the library or a device is absent."""
    skips = {
        "tensorrt": (_has_tensorrt(), "needs the tensorrt package"),
        "gpu": (_has_cuda(), "needs a CUDA device"),
    }
    for item in items:
        for marker, (available, why) in skips.items():
            # get_closest_marker, not `in item.keywords`: keywords include parameter ids.
            if item.get_closest_marker(marker) is not None and not available:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _own_reference_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no cached PyTorch outputs (mmedge.refcache): a hit left by another
    test would hide the path under test."""
    monkeypatch.setenv("MMEDGE_CACHE_DIR", str(tmp_path / ".mmedge-cache"))


REFERENCE = REPO / "recipes" / "reference.yaml"
REFERENCE_LARGE = REPO / "recipes" / "reference-large.yaml"

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"factory": "tests.models:tiny_fusion"},
    "inputs": {
        "image": {"shape": ["batch", 1, 8, 8], "dtype": "float32", "modality": "image"},
        "input_ids": {
            "shape": ["batch", "seq"],
            "dtype": "int64",
            "modality": "text",
            "range": [0, 16],
        },
        "attention_mask": {
            "shape": ["batch", "seq"],
            "dtype": "int64",
            "modality": "text",
            "range": [1, 2],
        },
        "audio": {"shape": ["batch", 4, "frames"], "dtype": "float32", "modality": "audio"},
    },
    "axes": {
        "batch": {"min": 1, "opt": 2, "max": 16},
        "seq": {"min": 4, "opt": 8, "max": 16},
        "frames": {"min": 8, "opt": 16, "max": 32},
    },
    "outputs": ["logits"],
    "branches": {
        "image": ["image_encoder"],
        "text": ["text_encoder"],
        "audio": ["audio_encoder"],
        "fusion": ["head"],
    },
    "calibration": {"path": "calib", "batch": 8},
    "eval": {"path": "eval", "batch": 16},
    # Random weights and labels: the gate checks numerics only; tests that need a gate to fail
    # set it themselves.
    "compare": {"min_cosine": 0.9, "max_accuracy_drop": None, "min_top1_agreement": None},
    "bench": {"warmup": 2, "iterations": 10, "threads": 1},
}


def tiny_feeds(n: int, seq: int, frames: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int64)
    mask[:, seq - 2 :] = rng.integers(0, 2, size=(n, 2))  # some padding at the end
    return {
        "image": rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
        "input_ids": rng.integers(0, 16, size=(n, seq)).astype(np.int64),
        "attention_mask": mask,
        "audio": rng.standard_normal((n, 4, frames)).astype(np.float32),
    }


def write_shards(
    directory: Path, shapes: list[tuple[int, int, int]], labels: bool = False, seed: int = 0
) -> None:
    """One shard per (samples, seq, frames); labels in 0..4 when asked."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, (n, seq, frames) in enumerate(shapes):
        arrays = tiny_feeds(n, seq, frames, seed + k)
        if labels:
            arrays["label"] = np.random.default_rng(seed + k).integers(0, 5, size=n)
        np.savez(directory / f"shard-{k:03d}.npz", **arrays)  # type: ignore[arg-type]


def write_recipe(directory: Path, changes: dict[str, Any] | None = None) -> Path:
    """The tiny recipe plus its calibration (32 samples) and eval (24) shards under directory.

    ``changes`` maps dotted keys to values (None deletes the key).
    """
    raw = copy.deepcopy(TINY)
    for dotted, value in (changes or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "calib").exists():
        write_shards(directory / "calib", [(16, 8, 16), (16, 12, 24)])
        write_shards(directory / "eval", [(12, 8, 16), (12, 16, 32)], labels=True, seed=100)
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path)


@dataclass(frozen=True)
class Built:
    recipe: Path
    fp32: Path
    int8: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """FP32 and INT8 ONNX Runtime artifacts of the tiny recipe, built once per session.

    Tests that write into these directories (compare.json, bench-*.json) only add files.
    """
    from mmedge.artifacts import build_artifact
    from mmedge.recipe import load_recipe

    root = tmp_path_factory.mktemp("built")
    recipe_path = write_recipe(root)
    recipe = load_recipe(recipe_path)
    build_artifact(recipe, "onnxruntime", "fp32", root / "fp32")
    build_artifact(recipe, "onnxruntime", "int8", root / "int8")
    yield Built(recipe_path, root / "fp32", root / "int8")
