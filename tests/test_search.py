"""`quantize --auto`: on a tiny model with one deliberately fragile layer, every backend's search
must return that layer to float, and the artifact must really hold it in float."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from mmedge.artifacts import build_artifact
from mmedge.errors import AccuracyError, RecipeError
from mmedge.quantize.search import workdir_for as search_workdir
from mmedge.recipe import load_recipe
from mmedge.run.report import _pareto
from tests.conftest import write_recipe

FRAGILE = "/head/fragile/Gemm"  # the ONNX node of FragileHead.fragile
GATE = {"metric": "sqnr_db", "target": 30, "ranking_samples": 16, "latency_seconds": 0.05}
pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, gate: dict[str, Any] | None = None, **changes: Any) -> Path:
    return write_recipe(
        tmp_path,
        {
            "model.factory": "tests.models:fragile_fusion",
            "quantization.accuracy": gate or GATE,
            **changes,
        },
    )


def _search(tmp_path: Path, target: str) -> tuple[dict[str, Any], dict[str, Any]]:
    recipe = load_recipe(_recipe(tmp_path))
    manifest = build_artifact(recipe, target, "int8", tmp_path / target, auto=True)
    record = json.loads((tmp_path / target / "search.json").read_text())
    return manifest, record


def _layer_route(record: dict[str, Any]) -> dict[str, Any]:
    """The real build of the single-layer route (the search may still pick another)."""
    return next(s for s in record["steps"] if s["built"] and s["float_layers"])


def _dq_fed(model: onnx.ModelProto, node_name: str) -> list[bool]:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input]


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_qdq_search_returns_the_fragile_layer_to_float(tmp_path: Path, target: str) -> None:
    manifest, record = _search(tmp_path, target)
    full = record["steps"][0]
    assert full["name"] == "full INT8" and not full["passed"]
    route = _layer_route(record)
    assert route["float_layers"] == [FRAGILE] and route["passed"]
    assert record["layer_gain_db"][FRAGILE] == max(record["layer_gain_db"].values())
    assert record["chosen"]["passed"] and record["chosen"]["metric"] >= GATE["target"]
    # Whichever route won, the fragile layer is float in the artifact, the rest is INT8.
    model = onnx.load(str(tmp_path / target / "model.onnx"))
    assert not any(_dq_fed(model, FRAGILE))
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert manifest["recipe"]["quantization"]["accuracy"] is None
    if target == "tensorrt":
        assert manifest["steps"]["build"]["rules"]["errors"] == 0
    assert not search_workdir(tmp_path / target).exists()  # its record is in the artifact


@pytest.mark.parametrize("route", ["as found", "layers from full INT8 on AVX2"])
def test_nncf_search_returns_the_fragile_layer_to_float(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    pytest.importorskip("nncf")
    import openvino as ov

    from mmedge.quantize import search
    from mmedge.quantize.space import _quantized_input

    changes: dict[str, Any] = {}
    if route != "as found":
        # Which switch is "affordable" depends on timing a 0.02 ms model; CI's AVX2 machine
        # took the layer route from full INT8 (7-bit weights), where NNCF's quantizers of a
        # skipped concat move and the estimate overshoots the real build.
        monkeypatch.setattr(search, "LATENCY_BUDGET", 0.0)
        changes["quantization.isa"] = "x86-avx2"
    recipe = load_recipe(_recipe(tmp_path, **changes))
    build_artifact(recipe, "openvino", "int8", tmp_path / "openvino", auto=True)
    record = json.loads((tmp_path / "openvino" / "search.json").read_text())
    assert not record["steps"][0]["passed"]
    if route != "as found":  # (a switch stack may also pass, with no layer ranking)
        assert record["layer_gain_db"][FRAGILE + "/WithoutBiases"] > 0
    chosen = record["chosen"]
    assert chosen["passed"]
    model = ov.Core().read_model(str(tmp_path / "openvino" / "model.xml"))
    fragile = [op for op in model.get_ops() if op.get_friendly_name().startswith(FRAGILE)]
    assert fragile, "the fragile layer's op keeps its ONNX name"
    for op in fragile:  # neither its input nor its weights are quantized
        assert not any(_quantized_input(i.get_source_output().get_node()) for i in op.inputs())
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def test_found_policy_rebuilds_without_searching(tmp_path: Path) -> None:
    _search(tmp_path, "onnxruntime")
    policy = yaml.safe_load((tmp_path / "onnxruntime" / "policy.yaml").read_text())
    assert policy["quantization"]["isa"] != "auto"  # pinned: it builds the same anywhere
    again = load_recipe(tmp_path / "onnxruntime" / "recipe.yaml")
    assert again.quantization.accuracy is None
    build_artifact(again, "onnxruntime", "int8", tmp_path / "again")
    first = (tmp_path / "onnxruntime" / "model.onnx").read_bytes()
    assert (tmp_path / "again" / "model.onnx").read_bytes() == first


def test_run_report_shows_the_search(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from mmedge.run.html import plots
    from mmedge.run.report import render_markdown, search_rows

    _, record = _search(tmp_path, "onnxruntime")
    variant = {"name": "onnxruntime-int8", "search": _search_summary(record)}
    rows = search_rows({"variants": [variant]})
    assert len(rows) == len(record["steps"])
    assert sum("(chosen)" in r[1] for r in rows) >= 1
    titles = [t for t, _ in plots({"variants": [variant], "pareto": []})]
    assert any("policy search" in t for t in titles)
    report = {"variants": [], "pareto": [], "steps": []}
    assert "INT8 policy searches" not in render_markdown(report)


def _search_summary(record: dict[str, Any]) -> dict[str, Any]:
    from mmedge.run.report import _search

    found = _search(record)
    assert found is not None
    return found


def test_gate_already_met_costs_one_build(tmp_path: Path) -> None:
    recipe = load_recipe(_recipe(tmp_path, {**GATE, "target": 5}))
    build_artifact(recipe, "onnxruntime", "int8", tmp_path / "out", auto=True)
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert [s["name"] for s in record["steps"]] == ["full INT8"]


def test_gate_unreachable_even_in_fp32(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    # OpenVINO's FP32 IR differs from the ONNX export by float rounding: no SQNR reaches 400 dB.
    recipe = load_recipe(_recipe(tmp_path, {**GATE, "target": 400}))
    with pytest.raises(AccuracyError, match=r"cannot be met even in floating point.*FP32"):
        build_artifact(recipe, "openvino", "int8", tmp_path / "out", auto=True)
    assert not (tmp_path / "out").exists()


def test_bad_search_settings(tmp_path: Path) -> None:
    too_many = load_recipe(_recipe(tmp_path, {**GATE, "ranking_samples": 500}))
    with pytest.raises(RecipeError, match=r"ranking_samples is 500, larger than the eval set \(24"):
        build_artifact(too_many, "onnxruntime", "int8", tmp_path / "a", auto=True)
    with pytest.raises(RecipeError, match="outside"):
        load_recipe(_recipe(tmp_path, {"metric": "top1_agreement", "target": 1.5}))
    plain = load_recipe(write_recipe(tmp_path / "plain"))
    with pytest.raises(RecipeError, match="--auto needs a gate"):
        build_artifact(plain, "onnxruntime", "int8", tmp_path / "b", auto=True)
    with pytest.raises(RecipeError, match="searches INT8"):
        build_artifact(
            load_recipe(_recipe(tmp_path)), "onnxruntime", "fp32", tmp_path / "c", auto=True
        )


def test_interrupted_search_resumes_from_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmedge.targets.onnxruntime import OnnxRuntimeTarget

    builds: list[str] = []
    armed = [True]
    real_build = OnnxRuntimeTarget.build

    def counting(self: Any, *args: Any) -> Any:
        builds.append(args[2])
        if len(builds) == 4 and armed and armed.pop():  # Ctrl-C once, in the 4th build
            raise KeyboardInterrupt
        return real_build(self, *args)

    monkeypatch.setattr(OnnxRuntimeTarget, "build", counting)
    recipe = load_recipe(_recipe(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        build_artifact(recipe, "onnxruntime", "int8", tmp_path / "out", auto=True)
    workdir = search_workdir(tmp_path / "out")
    assert (workdir / "best-policy.yaml").is_file() and not (tmp_path / "out").exists()
    done = len(builds) - 1
    builds.clear()
    build_artifact(recipe, "onnxruntime", "int8", tmp_path / "out", auto=True)
    record = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(builds) == len([s for s in record["steps"] if s["built"]]) + 1 - done


def test_failing_variant_is_never_pareto_optimal() -> None:
    variants = [
        {"name": "fast-bad", "p50_rounds_ms": 1.0, "accuracy": 99.0, "gate_passed": False},
        {"name": "slow-good", "p50_rounds_ms": 2.0, "accuracy": 98.0, "gate_passed": True},
    ]
    assert _pareto(variants) == ["slow-good"]


def test_compare_names_the_branch_and_what_to_try(tmp_path: Path) -> None:
    from mmedge.artifacts import compare_artifact

    path = _recipe(tmp_path, None, **{"compare.min_cosine": 0.9999})
    build_artifact(load_recipe(path), "onnxruntime", "int8", tmp_path / "int8")
    report = compare_artifact(tmp_path / "int8")
    assert not report.passed and report.parity is not None
    assert report.parity["most_affected"] == "fusion"  # where the fragile layer is
    assert any("--keep-fp32 fusion" in s for s in report.next_steps)
    assert any("--auto" in s for s in report.next_steps)
    saved = json.loads((tmp_path / "int8" / "compare.json").read_text())
    assert saved["parity"]["most_affected"] == "fusion"


def test_compare_against_an_artifact_needs_no_model_for_parity(tmp_path: Path) -> None:
    from mmedge.artifacts import compare_artifact

    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": "tests.models:failing_factory"}))
    ok = load_recipe(write_recipe(tmp_path / "ok"))
    build_artifact(ok, "onnxruntime", "fp32", tmp_path / "fp32")
    build_artifact(ok, "onnxruntime", "int8", tmp_path / "int8")
    # The artifact's recipe now names a factory that fails: parity is skipped, compare works.
    manifest_path = tmp_path / "int8" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["recipe"]["model"] = recipe.model.model_dump(mode="json")
    manifest_path.write_text(json.dumps(manifest))
    report = compare_artifact(tmp_path / "int8", reference_dir=tmp_path / "fp32")
    assert report.parity is None and report.samples > 0
