from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmedge.compare import (
    CompareReport,
    accuracy,
    compare_runners,
    cosine_per_sample,
    gate_failures,
    output_metrics,
    sqnr_db,
    top1_agreement,
)
from mmedge.recipe import CompareGate


def test_cosine_known_values() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    cand = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_per_sample(ref, cand), [0.0, 1.0, 1.0, 0.0])


def test_sqnr_known_values() -> None:
    ref = np.ones(100)
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # signal 1, noise 0.01 per element
    assert sqnr_db(np.zeros(4), np.ones(4)) == -math.inf


def test_output_metrics_count_nonfinite_without_propagating() -> None:
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[0, 0] = np.nan
    cand[1, 2] = np.inf
    m = output_metrics(ref, cand)
    assert m.nonfinite == 2
    assert np.isfinite(m.cosine) and np.isfinite(m.max_abs)
    assert m.max_abs == pytest.approx(1.0)


def test_output_metrics_over_chunks_of_different_shapes() -> None:
    a, b = np.ones((2, 4)), np.ones((3, 6))
    m = output_metrics([a, b], [a, b * 1.5])
    assert m.cosine == pytest.approx(1.0)
    assert m.max_abs == pytest.approx(0.5)
    assert m.mean_abs == pytest.approx(0.5 * 18 / 26)
    with pytest.raises(ValueError, match="shape mismatch"):
        output_metrics([a], [b])


def test_agreement_and_accuracy() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    cand = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    assert top1_agreement(ref, cand) == 0.75
    assert accuracy(ref, np.array([0, 1, 1, 1])) == 75.0


def _report(
    cosine: float, agree: float, acc: tuple[float, float] | None, nonfinite: int = 0
) -> CompareReport:
    m = output_metrics(np.ones((2, 2)), np.ones((2, 2)))
    m.cosine, m.nonfinite = cosine, nonfinite
    accs = None if acc is None else {"reference": acc[0], "candidate": acc[1]}
    return CompareReport({"logits": m}, agree, accs, samples=2)


def test_gate() -> None:
    gate = CompareGate(min_cosine=0.99, max_accuracy_drop=1.0, min_top1_agreement=0.98)
    assert gate_failures(_report(0.999, 0.99, (90.0, 89.5)), gate) == []
    fails = gate_failures(_report(0.95, 0.9, (90.0, 88.0), nonfinite=3), gate)
    assert fails == [
        "output 'logits' has 3 NaN/Inf values",
        "output 'logits' cosine 0.95000 < min_cosine 0.99",
        "top-1 agreement 0.9000 < min_top1_agreement 0.98",
        "accuracy drop 2.00 points > max_accuracy_drop 1.0",
    ]
    open_gate = CompareGate(min_cosine=None, max_accuracy_drop=None, min_top1_agreement=None)
    assert gate_failures(_report(0.1, 0.1, (90.0, 10.0)), open_gate) == []


class _Fixed:
    """A two-batch data source with labels."""

    samples = 6
    label_key = "label"

    def batches(self, batch: int):  # type: ignore[no-untyped-def]
        from mmedge.data.datasets import Batch

        yield Batch({"x": np.eye(3, dtype=np.float32)}, np.array([0, 1, 2]))
        yield Batch({"x": np.eye(3, dtype=np.float32)[::-1]}, np.array([2, 1, 0]))


def test_compare_runners_accumulates_over_batches() -> None:
    def reference(feeds):  # type: ignore[no-untyped-def]
        return {"scores": feeds["x"] * 2}

    def candidate(feeds):  # type: ignore[no-untyped-def]
        out = feeds["x"] * 2
        out[0] = out[0][::-1]  # the first sample of every batch is wrong
        return {"scores": out}

    report = compare_runners(reference, candidate, _Fixed(), batch=3, score_output=None)  # type: ignore[arg-type]
    assert report.samples == 6
    assert report.top1_agreement == pytest.approx(4 / 6)
    assert report.accuracy == {"reference": 100.0, "candidate": pytest.approx(400 / 6)}


def test_unlabelled_eval_is_compared_by_agreement(tmp_path: Path) -> None:
    """`eval.label_key: null`: no accuracy, agreement and the output metrics still gate."""
    from mmedge.artifacts import build_artifact, compare_artifact
    from mmedge.recipe import load_recipe
    from tests.conftest import write_recipe

    path = write_recipe(tmp_path, {"compare.max_accuracy_drop": 1.0})
    text = path.read_text().replace("  batch: 16\n", "  batch: 16\n  label_key: null\n", 1)
    path.write_text(text)
    recipe = load_recipe(path)
    assert recipe.eval is not None and recipe.eval.label_key is None
    build_artifact(recipe, "onnxruntime", "fp32", tmp_path / "a")
    report = compare_artifact(tmp_path / "a")
    assert report.accuracy is None and report.top1_agreement == 1.0
    assert any("max_accuracy_drop was not checked" in w for w in report.warnings)


def test_a_pruned_artifact_is_compared_with_the_model_before_pruning(tmp_path: Path) -> None:
    """Agreement with the pruned model alone hides what pruning cost; and `--eval` swaps the
    data without a rebuild."""
    import json

    from typer.testing import CliRunner

    from mmedge.cli import app
    from tests.conftest import write_recipe

    runner = CliRunner()
    recipe = write_recipe(
        tmp_path, {"prune": {"ratio": 0.5, "round_to": 2, "recover": {"mode": "none"}}}
    )
    assert runner.invoke(app, ["prune", str(recipe), "-o", str(tmp_path / "p")]).exit_code == 0
    out = tmp_path / "a"
    result = runner.invoke(app, ["export", str(tmp_path / "p" / "recipe.yaml"), "-t", "onnxruntime",
                                 "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    result = runner.invoke(app, ["compare", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["top1_agreement"] == 1.0  # the FP32 export of the pruned model itself
    original = data["original"]
    assert original["model"] == "tests.models:tiny_fusion"
    # Pruning half of every branch moves the outputs: the pruned export matches its own model
    # to float rounding, and the original far less closely.
    assert original["sqnr_db"] < 30 < data["outputs"]["logits"]["sqnr_db"], (original, data)

    (tmp_path / "other").mkdir()
    shard = dict(np.load(tmp_path / "eval" / "shard-000.npz"))
    np.savez(tmp_path / "other" / "shard-000.npz", **{k: v[:5] for k, v in shard.items()})
    result = runner.invoke(app, ["compare", str(out), "--eval", str(tmp_path / "other"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 5


def test_pytorch_reference_outputs_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second compare of the same model and data does not load PyTorch's model at all; a
    changed input misses the cache."""
    import mmedge.model
    from mmedge.artifacts import build_artifact, compare_artifact
    from mmedge.recipe import load_recipe
    from tests.conftest import write_recipe

    recipe = load_recipe(write_recipe(tmp_path))
    build_artifact(recipe, "onnxruntime", "int8", tmp_path / "a")
    first = compare_artifact(tmp_path / "a", parity=False)

    def no_model(_recipe: object) -> None:
        raise AssertionError("the model was loaded although its outputs are cached")

    monkeypatch.setattr(mmedge.model, "load_torch_model", no_model)
    second = compare_artifact(tmp_path / "a", parity=False)
    assert second.to_json()["outputs"] == first.to_json()["outputs"]
    with pytest.raises(AssertionError, match="was loaded"):
        compare_artifact(tmp_path / "a", parity=False, samples=5)  # other batches: a miss


def test_compare_takes_the_gate_and_eval_set_of_an_edited_recipe(
    built: Any, tmp_path: Path
) -> None:
    """`compare --recipe`: a fixed gate or eval path needs no rebuild; a recipe for another
    model is refused (it would judge this artifact as someone else's)."""
    import yaml
    from typer.testing import CliRunner

    from mmedge.cli import app

    runner = CliRunner()
    raw = yaml.safe_load(built.recipe.read_text())
    raw["compare"]["min_cosine"] = 0.999999999  # stricter than INT8 can meet
    for key in ("calibration", "eval"):  # resolved against the new recipe's folder
        raw[key]["path"] = str(built.recipe.parent / raw[key]["path"])
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["compare", str(built.int8), "--recipe", str(edited)])
    assert result.exit_code == 7 and "min_cosine 0.999999999" in result.stderr, result.stderr

    raw["model"]["factory"] = "tests.models:tiny_mha"
    edited.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["compare", str(built.int8), "--recipe", str(edited)])
    assert result.exit_code == 3, result.stderr
    assert "its 'model' differs from the recipe the artifact was built from" in result.stderr
