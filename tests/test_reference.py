"""The shipped reference model and data: reproducible, and accurate enough after INT8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmedge.artifacts import build_artifact, compare_artifact
from mmedge.recipe import load_recipe
from mmedge.reference import data
from mmedge.reference.train import CALIB_SAMPLES, EVAL_SAMPLES, SHARD, WEIGHTS
from tests.conftest import REFERENCE, REFERENCE_LARGE, REPO


def test_train_and_heldout_scans_are_disjoint() -> None:
    train, heldout = data.split("train"), data.split("heldout")
    assert len(train.labels) + len(heldout.labels) == 1797
    flat = {img.tobytes() for img in train.images}
    overlap = sum(img.tobytes() in flat for img in heldout.images)
    # sklearn's digits hold a handful of byte-identical scans; the split itself is by index.
    assert overlap <= 5
    assert set(np.unique(heldout.labels)) == set(range(10))


def test_shipped_data_sets_are_reproduced_by_the_generator(tmp_path: Path) -> None:
    data.write_shards(tmp_path / "calib", data.split("train"), CALIB_SAMPLES, SHARD, 1000, False)
    data.write_shards(tmp_path / "eval", data.split("heldout"), EVAL_SAMPLES, SHARD, 2000, True)
    for name, shipped in (("calib", "reference"), ("eval", "reference-eval")):
        ours = sorted((tmp_path / name).glob("*.npz"))
        theirs = sorted((REPO / "calibration" / shipped).glob("*.npz"))
        assert [p.name for p in ours] == [p.name for p in theirs]
        for a, b in zip(ours, theirs, strict=True):
            with np.load(a) as x, np.load(b) as y:
                assert x.files == y.files
                for key in x.files:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{b.name}:{key}")


def test_no_single_branch_reaches_the_fused_accuracy() -> None:
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    acc = meta["heldout_accuracy"]
    assert acc["fused"] >= 90.0
    for branch in ("image", "text", "audio"):
        assert acc[branch] < acc["fused"] - 15, (branch, acc)


def test_training_code_runs_and_learns() -> None:
    from mmedge.reference.train import train

    _, info = train(epochs=3, seed=1)
    assert info["heldout_accuracy"]["fused"] > 20.0  # chance is 10%


@pytest.mark.slow
def test_reference_int8_meets_the_accuracy_gate(tmp_path: Path) -> None:
    recipe = load_recipe(REFERENCE)
    fp32 = build_artifact(recipe, "onnxruntime", "fp32", tmp_path / "fp32")
    int8 = build_artifact(recipe, "onnxruntime", "int8", tmp_path / "int8")
    assert int8["artifact"]["bytes"] < 0.4 * fp32["artifact"]["bytes"]

    exported = compare_artifact(tmp_path / "fp32")
    assert exported.passed and exported.top1_agreement == 1.0
    assert exported.accuracy is not None and exported.accuracy["reference"] > 90.0

    report = compare_artifact(tmp_path / "int8")
    assert report.samples == EVAL_SAMPLES
    assert report.accuracy is not None
    assert report.accuracy["reference"] - report.accuracy["candidate"] <= 1.0
    assert report.top1_agreement is not None and report.top1_agreement >= 0.98
    assert report.passed, report.failures


@pytest.mark.slow
def test_reference_large_exports_and_quantizes(tmp_path: Path) -> None:
    recipe = load_recipe(REFERENCE_LARGE)
    fp32 = build_artifact(recipe, "onnxruntime", "fp32", tmp_path / "fp32")
    int8 = build_artifact(recipe, "onnxruntime", "int8", tmp_path / "int8")
    assert int8["steps"]["calibration"].startswith("synthetic random inputs")
    assert int8["artifact"]["bytes"] <= 0.30 * fp32["artifact"]["bytes"]
    report = compare_artifact(tmp_path / "int8", samples=8)
    assert report.accuracy is None and report.passed, report.failures
