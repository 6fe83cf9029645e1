"""OpenVINO target: IR conversion, FP16 and NNCF INT8 numerics, per-branch scope, sessions, errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from onnx import helper
from typer.testing import CliRunner

from mmedge.artifacts import bench_artifact, build_artifact, compare_artifact
from mmedge.branches import branch_of, scope_of_name
from mmedge.cli import app
from mmedge.compare import output_metrics
from mmedge.errors import DeviceUnavailable
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe
from mmedge.targets import SessionConfig
from mmedge.targets.openvino import OpenVinoConfig, OvSession, check_device, inference_precision
from tests.conftest import tiny_feeds, write_recipe

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
runner = CliRunner()


@dataclass(frozen=True)
class IRs:
    recipe: Path
    root: Path

    def __getitem__(self, precision: str) -> Path:
        return self.root / precision


@pytest.fixture(scope="session")
def irs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IRs]:
    root = tmp_path_factory.mktemp("openvino")
    path = write_recipe(root)
    recipe = load_recipe(path)
    for precision in ("fp32", "fp16", "int8"):
        build_artifact(recipe, "openvino", precision, root / precision)
    yield IRs(path, root)


def _session(irs: IRs, precision: str, **config: object) -> OvSession:
    recipe = load_recipe(irs.recipe)
    return OvSession(irs[precision] / "model.xml", recipe, precision, SessionConfig(1, **config))  # type: ignore[arg-type]


def test_ir_keeps_named_inputs_and_dynamic_axes(irs: IRs) -> None:
    model = ov.Core().read_model(str(irs["fp32"] / "model.xml"))
    shapes = {i.get_any_name(): i.get_partial_shape() for i in model.inputs}
    assert set(shapes) == {"image", "input_ids", "attention_mask", "audio"}
    assert shapes["image"][0].is_dynamic and shapes["image"][2].get_length() == 8
    assert shapes["input_ids"][1].is_dynamic and shapes["audio"][2].is_dynamic
    assert [o.get_any_name() for o in model.outputs] == ["logits"]
    files = {p.name for p in irs["fp32"].iterdir()}
    assert {"model.xml", "model.bin", "manifest.json"} <= files


@pytest.mark.parametrize(
    ("precision", "min_cosine"), [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.98)]
)
def test_every_precision_stays_close_to_pytorch(
    irs: IRs, precision: str, min_cosine: float
) -> None:
    reference = torch_runner(load_torch_model(load_recipe(irs.recipe)), ["logits"])
    session = _session(irs, precision)
    for n, seq, frames in [(1, 4, 8), (6, 13, 29)]:  # one dynamic IR serves every shape
        feeds = tiny_feeds(n, seq, frames, seed=n)
        metrics = output_metrics(reference(feeds)["logits"], session.run(feeds)["logits"])
        assert metrics.cosine >= min_cosine, (precision, metrics)
    assert session.settings()["inference_precision"] == "f32"


def test_fp16_halves_the_weights_and_int8_quantizes(irs: IRs) -> None:
    fp32, fp16 = ((irs[p] / "model.bin").stat().st_size for p in ("fp32", "fp16"))
    assert fp16 <= 0.55 * fp32
    int8 = ov.Core().read_model(str(irs["int8"] / "model.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in int8.get_ops())


def _quantized_inputs(model: object, branch: str, branches: dict[str, list[str]]) -> list[bool]:
    """For each MatMul/Convolution of a branch: does any input come through a FakeQuantize?"""
    found = []
    for op in model.get_ops():  # type: ignore[attr-defined]
        if op.get_type_name() not in ("MatMul", "Convolution"):
            continue
        if branch_of(scope_of_name(op.get_friendly_name()), branches) != branch:
            continue
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        # Weights reach the op through FakeQuantize, or Convert/Multiply after compression.
        found.append(
            any(s.get_type_name() in ("FakeQuantize", "Multiply", "Convert") for s in sources)
        )
    return found


def test_keep_fp32_branch_really_stays_float_in_the_ir(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"quantization.keep_fp32": ["text"]}))
    manifest = build_artifact(recipe, "openvino", "int8", tmp_path / "int8")
    assert manifest["steps"]["build"]["kept_fp32_branches"] == ["text"]
    model = ov.Core().read_model(str(tmp_path / "int8" / "model.xml"))
    text, image = (_quantized_inputs(model, b, recipe.branches) for b in ("text", "image"))
    assert text and not any(text), "the text branch must stay in float"
    assert image and all(image), "the image branch must still be INT8"


def test_int8_on_the_reference_model_passes_its_gate(tmp_path: Path) -> None:
    from tests.conftest import REFERENCE

    recipe = load_recipe(REFERENCE)
    build_artifact(recipe, "openvino", "int8", tmp_path / "int8")
    report = compare_artifact(tmp_path / "int8")
    assert report.accuracy is not None
    assert report.accuracy["reference"] - report.accuracy["candidate"] <= 1.0
    assert report.top1_agreement is not None and report.top1_agreement >= 0.98


def test_latency_and_throughput_modes(irs: IRs) -> None:
    latency = bench_artifact(irs["int8"], {"iterations": 20, "warmup": 2})
    assert latency.mode == "latency" and latency.settings["performance_hint"] == "LATENCY"
    assert latency.settings["requests"] == 1 and latency.iterations == 20
    tput = bench_artifact(irs["int8"], {"iterations": 40, "warmup": 4, "mode": "throughput"})
    assert tput.mode == "throughput" and tput.settings["performance_hint"] == "THROUGHPUT"
    assert tput.iterations == 40 and int(str(tput.settings["requests"])) >= 1
    assert tput.throughput_per_s > 0 and tput.latency_ms.p50 > 0


def test_profile_attributes_layers_to_every_branch(irs: IRs) -> None:
    recipe = load_recipe(irs.recipe)
    session = _session(irs, "fp32", profile=True)
    layers = session.layer_times(tiny_feeds(2, 8, 16), runs=3)
    session.close()
    owners = {branch_of(scope_of_name(name), recipe.branches) for name in layers}
    assert {"image", "text", "audio", "fusion"} <= owners
    # Counters tick in microseconds: the tiny head can read 0; the branches with convolutions
    # and attention cannot.
    result = bench_artifact(irs["fp32"], {"iterations": 5, "warmup": 1, "profile": True})
    assert result.branch_ms is not None and set(result.branch_ms) >= owners
    assert all(result.branch_ms[b] > 0 for b in ("image", "text", "audio")), result.branch_ms


def test_inference_precision_follows_the_artifact() -> None:
    cfg = OpenVinoConfig()
    assert inference_precision(cfg, "fp32", ["FP32", "BF16"]) == "f32"
    assert inference_precision(cfg, "int8", ["FP32", "INT8", "BF16"]) == "f32"
    assert inference_precision(cfg, "fp16", ["FP32", "FP16"]) == "f16"
    assert inference_precision(cfg, "fp16", ["FP32", "BF16"]) == "f32"
    assert (
        inference_precision(OpenVinoConfig(inference_precision="device-default"), "fp32", [])
        is None
    )
    assert inference_precision(OpenVinoConfig(inference_precision="bf16"), "fp32", []) == "bf16"


def test_device_checks() -> None:
    check_device(["CPU", "GPU.0", "GPU.1"], "GPU")
    check_device(["CPU", "GPU.0"], "GPU.0")
    check_device(["CPU"], "AUTO")
    check_device(["CPU", "GPU.0"], "AUTO:GPU,CPU")
    with pytest.raises(
        DeviceUnavailable,
        match=r"device 'NPU' is not available on this machine; available: CPU, GPU\.0",
    ):
        check_device(["CPU", "GPU.0"], "NPU")
    with pytest.raises(DeviceUnavailable, match="device 'GPU' is not available"):
        check_device(["CPU"], "HETERO:GPU,CPU")


def test_missing_device_through_the_cli(irs: IRs) -> None:
    result = runner.invoke(app, ["bench", str(irs["fp32"]), "--device", "NPU.3"])
    assert result.exit_code == 11, result.stderr
    assert "device 'NPU.3' is not available on this machine; available: CPU" in result.stderr


def test_missing_openvino_gives_an_install_hint(
    tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = runner.invoke(
        app,
        ["export", str(tiny_recipe), "--target", "openvino", "-o", str(tiny_recipe.parent / "ir")],
    )
    assert result.exit_code == 5
    assert 'pip install "mmedge[openvino]"' in result.stderr and "Traceback" not in result.stderr


def test_ignored_pattern_matching_nothing_is_named(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path, {"targets.openvino.nncf.ignored_patterns": ["^/vision_tower/.*"]}
    )
    result = runner.invoke(
        app, ["quantize", str(recipe), "--target", "openvino", "-o", str(tmp_path / "q")]
    )
    assert result.exit_code == 4, result.stderr
    assert "^/vision_tower/.*" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "q").exists()


def test_onnx_runtime_flags_are_refused_for_openvino(tiny_recipe: Path) -> None:
    result = runner.invoke(
        app, ["quantize", str(tiny_recipe), "--target", "openvino", "--method", "entropy"]
    )
    assert result.exit_code == 3 and "openvino quantizes with its own" in result.stderr


def test_conversion_failure_names_a_log(tmp_path: Path) -> None:
    inputs = [
        helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["b", 1, 8, 8]),
        helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"]),
        helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["b", "s"]),
        helper.make_tensor_value_info("audio", onnx.TensorProto.FLOAT, ["b", 4, "f"]),
    ]
    node = helper.make_node("NoSuchOp", ["image"], ["logits"], domain="mmedge.test")
    graph = helper.make_graph(
        [node],
        "g",
        inputs,
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", 5])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mmedge.test", 1)]
    )
    onnx.save(model, str(tmp_path / "model.onnx"))
    recipe = write_recipe(tmp_path, {"model.factory": None, "model.path": "model.onnx"})
    result = runner.invoke(
        app, ["export", str(recipe), "--target", "openvino", "-o", str(tmp_path / "ir")]
    )
    assert result.exit_code == 6, result.stderr
    assert "OpenVINO cannot convert the ONNX model" in result.stderr
    log = Path(result.stderr.split("full log: ")[1].split()[0])
    assert log.is_file() and not (tmp_path / "ir").exists()


def test_cli_round_trip_on_openvino(irs: IRs) -> None:
    result = runner.invoke(app, ["compare", str(irs["fp16"]), "--json"])
    assert result.exit_code == 0, result.stderr
    assert '"passed": true' in result.stdout
    result = runner.invoke(
        app, ["bench", str(irs["fp16"]), "--mode", "throughput", "--iterations", "10"]
    )
    assert result.exit_code == 0 and "throughput mode" in result.stdout


def test_compile_failure_names_a_log(irs: IRs) -> None:
    from mmedge.errors import TargetBuildError

    bad_shapes = {
        "image": (1, 3, 8, 8),
        "input_ids": (1, 8),
        "attention_mask": (1, 8),
        "audio": (1, 4, 16),
    }
    with pytest.raises(
        TargetBuildError, match=r"OpenVINO cannot compile model\.xml for CPU"
    ) as err:
        _session(irs, "fp32", static_shapes=bad_shapes)  # 3 channels where the IR has 1
    assert err.value.hint is not None and Path(err.value.hint.removeprefix("full log: ")).is_file()
