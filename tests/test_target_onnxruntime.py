from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mmedge.errors import TargetBuildError
from mmedge.targets import SessionConfig, get_target
from mmedge.targets.onnxruntime import OnnxRuntimeTarget, OrtSession
from tests.conftest import Built, tiny_feeds

pytest.importorskip("onnxruntime")


def test_probe_reports_version_and_providers() -> None:
    probe = OnnxRuntimeTarget().probe()
    assert probe.installed and probe.version
    assert "CPUExecutionProvider" in probe.devices


def test_fp32_artifact_is_the_optimized_graph(built: Built) -> None:
    source = onnx.load(str(built.fp32 / "model.onnx"))
    # ORT's saved "extended" graph fuses Conv+ReLU into its FusedConv contrib op.
    assert any(n.op_type == "FusedConv" for n in source.graph.node)
    assert (
        "graph_optimization"
        in __import__("json").loads((built.fp32 / "manifest.json").read_text())["steps"]["build"]
    )


def test_session_speaks_named_dicts(built: Built) -> None:
    target = get_target("onnxruntime")
    session = target.load(built.int8 / "model.onnx", _recipe(built), "int8", SessionConfig(1))
    assert session.input_names == ["image", "input_ids", "attention_mask", "audio"]
    assert session.output_names == ["logits"]
    out = session.run(tiny_feeds(3, 8, 16))
    assert list(out) == ["logits"] and out["logits"].shape == (3, 5)
    assert np.isfinite(out["logits"]).all()
    session.close()


def test_unloadable_model_is_a_build_error(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(TargetBuildError, match=r"ONNX Runtime cannot load x\.onnx"):
        OrtSession(tmp_path / "x.onnx", threads=1)


def test_unknown_target_is_a_recipe_error() -> None:
    from mmedge.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown target 'tflite'; available: onnxruntime"):
        get_target("tflite")


def test_layer_times_map_to_every_branch(built: Built) -> None:
    from mmedge.branches import time_by_branch

    recipe = _recipe(built)
    session = get_target("onnxruntime").load(
        built.fp32 / "model.onnx", recipe, "fp32", SessionConfig(1, profile=True)
    )
    layers = session.layer_times(tiny_feeds(2, 8, 16), runs=5)
    session.close()
    by_branch = time_by_branch(layers, recipe.branches)
    assert all(by_branch[b] > 0 for b in ("image", "text", "audio", "fusion")), by_branch


def test_throughput_mode_is_refused_clearly(built: Built) -> None:
    from typer.testing import CliRunner

    from mmedge.cli import app

    result = CliRunner().invoke(app, ["bench", str(built.fp32), "--mode", "throughput"])
    assert result.exit_code == 3 and "onnxruntime has no throughput mode" in result.stderr
    result = CliRunner().invoke(app, ["bench", str(built.fp32), "--device", "GPU"])
    assert result.exit_code == 3 and "onnxruntime has no --device" in result.stderr


def _recipe(built: Built):  # type: ignore[no-untyped-def]
    from mmedge.recipe import load_recipe

    return load_recipe(built.recipe)
