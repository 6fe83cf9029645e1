"""TensorRT target: everything up to the engine here; the engine where TensorRT and a GPU are.

The bundle's ONNX graphs are run in ONNX Runtime on CPU against PyTorch (that checks the Q/DQ
scales and the FP16 casts); the engine build, compare and bench tests carry the tensorrt and
gpu markers and skip without them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from mmedge.artifacts import build_artifact, check_artifact
from mmedge.cli import app
from mmedge.compare import output_metrics
from mmedge.errors import ArtifactError, InputSpecError
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe
from mmedge.targets.onnxruntime import OrtSession
from mmedge.targets.tensorrt.bundle import (
    check_profile,
    check_shapes,
    parity_source,
    profile_shapes,
    trtexec_command,
)
from mmedge.targets.tensorrt.config import TensorRtConfig
from mmedge.targets.tensorrt.engine import check_engine_compatible, tensorrt_version
from tests.conftest import REFERENCE, REFERENCE_LARGE, REPO, tiny_feeds, write_recipe
from tests.test_cli import assert_user_error

GOLDEN = Path(__file__).with_name("golden")
runner = CliRunner()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tensorrt")
    recipe = load_recipe(write_recipe(root))
    for precision in ("fp32", "fp16", "int8"):
        build_artifact(recipe, "tensorrt", precision, root / precision)
    yield root


def _close_to_pytorch(root: Path, precision: str) -> float:
    recipe = load_recipe(root / "recipe.yaml")
    reference = torch_runner(load_torch_model(recipe), recipe.outputs)
    session = OrtSession(root / precision / "model.onnx", threads=1)
    feeds = tiny_feeds(6, 13, 29, seed=4)
    return output_metrics(reference(feeds)["logits"], session.run(feeds)["logits"]).cosine


def test_bundle_contents(bundles: Path) -> None:
    bundle = bundles / "int8"
    names = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "profile.json", "build_engine.sh", "parity.npz", "manifest.json"} <= names
    assert os.stat(bundle / "build_engine.sh").st_mode & stat.S_IXUSR
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["artifact"]["files"]}
    assert listed == {"model.onnx", "profile.json", "build_engine.sh", "parity.npz"}
    assert manifest["steps"]["build"]["rules"] == {"errors": 0, "warnings": 0, "findings": []}
    assert manifest["steps"]["build"]["engine"]["built"] is (tensorrt_version() is not None)
    profile = json.loads((bundle / "profile.json").read_text())["inputs"]
    assert profile["audio"] == {"min": [1, 4, 8], "opt": [2, 4, 16], "max": [16, 4, 32]}
    assert profile["input_ids"] == profile["attention_mask"], "a shared axis stays consistent"
    with np.load(bundle / "parity.npz") as parity:
        first = {"image", "input_ids", "attention_mask", "audio", "expected.logits", "label"}
        assert {f"g0.{k}" for k in first} <= set(parity.files)  # one group per eval shape
        assert parity["g0.input_ids"].dtype == np.int64
        assert parity["g0.expected.logits"].shape == (12, 5)  # the first eval shard holds 12
        recorded = manifest["steps"]["build"]["parity"]
        assert recorded["samples"] == sum(parity[k].shape[0] for k in parity.files
                                          if k.endswith(".label"))  # fmt: skip


def test_the_build_script_runs_the_right_trtexec_per_version(bundles: Path) -> None:
    recipe = load_recipe(bundles / "recipe.yaml")
    for major in (10, 11):
        line = " \\\n  ".join(
            trtexec_command(
                major, profile_shapes(recipe), recipe.targets.of("tensorrt", TensorRtConfig)
            )
        )
        assert line + "\n" == (GOLDEN / f"trtexec-trt{major}.txt").read_text(), major
    script = (bundles / "int8" / "build_engine.sh").read_text()
    assert '10) "$TRTEXEC" --onnx=model.onnx' in script and "--stronglyTyped ;;" in script
    assert '11) "$TRTEXEC" --onnx=model.onnx' in script
    assert not any(flag in script for flag in ("--int8", "--fp16", "--best", "--calib"))


def test_qdq_bundle_follows_the_rules_and_stays_close_to_pytorch(bundles: Path) -> None:
    model = onnx.load(str(bundles / "int8" / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    dq_types = {
        inits[n.input[0]].data_type
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }
    assert dq_types == {onnx.TensorProto.INT8}, "no INT32 biases: TensorRT's DQ takes none"
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert not any(
        producers.get(n.input[0]) in ("Conv", "MatMul", "Gemm")
        for n in model.graph.node
        if n.op_type == "QuantizeLinear"
    ), "inputs only"
    assert _close_to_pytorch(bundles, "int8") > 0.99


def test_fp16_bundle_keeps_overflow_prone_ops_in_fp32(bundles: Path) -> None:
    model = onnx.load(str(bundles / "fp16" / "model.onnx"))
    fp16_inits = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_inits, "weights are FP16"
    for i in model.graph.input:
        assert i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types.get(node.output[0]) == onnx.TensorProto.FLOAT, node.name
        if node.op_type == "MatMul" and node.input[1] not in {
            t.name for t in model.graph.initializer
        }:
            assert types.get(node.output[0]) == onnx.TensorProto.FLOAT16, node.name
    assert _close_to_pytorch(bundles, "fp16") > 0.999
    assert check_artifact(bundles / "fp16") == []


def test_fp32_bundle_is_the_exported_graph(bundles: Path) -> None:
    assert _close_to_pytorch(bundles, "fp32") > 0.99999


def test_per_branch_precision(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"quantization.keep_fp32": ["text"]}))
    build_artifact(recipe, "tensorrt", "int8", tmp_path / "int8")
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    text_matmuls = [
        n for n in model.graph.node if n.op_type == "MatMul" and n.name.startswith("/text_encoder/")
    ]
    assert text_matmuls and not any(
        producers.get(i) == "DequantizeLinear" for n in text_matmuls for i in n.input
    )
    assert check_artifact(tmp_path / "int8") == []  # kept branches are not "unquantized"


def test_profile_and_shape_checks_name_input_and_axis(bundles: Path) -> None:
    recipe = load_recipe(bundles / "recipe.yaml")
    profile = profile_shapes(recipe)
    check_profile(profile, recipe)
    bad = {**profile, "audio": {"min": [1, 4, 40], "opt": [2, 4, 16], "max": [16, 4, 32]}}
    with pytest.raises(
        InputSpecError,
        match=r"input 'audio' axis 'frames' \(dim 2\): need min <= opt <= max, got 40, 16, 32",
    ):
        check_profile(bad, recipe)
    check_shapes({"audio": (2, 4, 32)}, profile, recipe)
    with pytest.raises(
        InputSpecError,
        match=r"input 'audio' axis 'frames' \(dim 2\) is 64, outside the engine profile's \[8, 32\]",
    ):
        check_shapes({"audio": (2, 4, 64)}, profile, recipe)


def test_engine_for_another_device_is_refused_naming_both() -> None:
    built = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    check_engine_compatible(built, dict(built))
    here = {
        "tensorrt_version": "10.3.0",
        "gpu": "NVIDIA GeForce RTX 4090",
        "compute_capability": "8.9",
    }
    with pytest.raises(
        ArtifactError,
        match=r"built with TensorRT 10\.3\.0 for Orin \(compute 8\.7\).*"
        r"RTX 4090 \(compute 8\.9\): the GPU differs",
    ):
        check_engine_compatible(built, here)
    with pytest.raises(ArtifactError, match=r"TensorRT 10\.8\.0 on Orin.*the TensorRT differs"):
        check_engine_compatible(built, {**built, "tensorrt_version": "10.8.0"})


def test_parity_set_replays_recorded_outputs(bundles: Path) -> None:
    recipe = load_recipe(bundles / "recipe.yaml")
    data, recorded = parity_source(bundles / "int8", recipe)
    assert data.samples >= 12 and data.label_key == "label"
    batches = list(data.batches(5))
    assert [b.feeds["image"].shape[0] for b in batches][:3] == [5, 5, 2]  # shard 1 holds 12
    first = recorded(batches[0].feeds)["logits"]
    want = torch_runner(load_torch_model(recipe), recipe.outputs)(batches[0].feeds)["logits"]
    np.testing.assert_allclose(first, want, atol=1e-4)
    with pytest.raises(ArtifactError, match="replayed only for the recorded inputs"):
        recorded(batches[0].feeds)  # out of order


@pytest.mark.skipif(tensorrt_version() is not None, reason="checks the machine without TensorRT")
def test_without_tensorrt_the_export_says_how_to_build_on_the_device(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = runner.invoke(
        app, ["export", str(recipe), "--target", "tensorrt", "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.stderr
    assert f"mmedge build {tmp_path / 'b'}" in result.stdout.replace("\n", "")
    built = runner.invoke(app, ["build", str(tmp_path / "b")])
    assert (
        built.exit_code == 5 and "neither the TensorRT Python package nor trtexec" in built.stderr
    )
    for command in ("compare", "bench"):
        refused = runner.invoke(app, [command, str(tmp_path / "b")])
        assert refused.exit_code == 5 and "TensorRT is not installed here" in refused.stderr


def test_rule_violations_refuse_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnx import helper

    inputs = [
        helper.make_tensor_value_info(n, t, s)
        for n, t, s in (
            ("image", onnx.TensorProto.FLOAT, ["b", 1, 8, 8]),
            ("input_ids", onnx.TensorProto.INT64, ["b", "s"]),
            ("attention_mask", onnx.TensorProto.INT64, ["b", "s"]),
            ("audio", onnx.TensorProto.FLOAT, ["b", 4, "f"]),
        )
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["p"], name="/image_encoder/pool"),
        helper.make_node("Flatten", ["p"], ["f1"], name="/image_encoder/flat"),
        helper.make_node("Unique", ["f1"], ["logits"], name="/head/Unique"),
    ]
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, None)]
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(tmp_path / "m.onnx"),
    )
    recipe = write_recipe(
        tmp_path,
        {
            "model.factory": None,
            "model.path": "m.onnx",
            "calibration": None,
            "eval": None,
            "calibration.synthetic": {"samples": 4},
        },
    )
    result = runner.invoke(
        app, ["export", str(recipe), "--target", "tensorrt", "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 0 and "1 errors" in result.stdout, result.stderr
    checked = runner.invoke(app, ["check", str(tmp_path / "b")])
    assert checked.exit_code == 12 and "unsupported-op" in checked.stdout
    assert "/head/Unique" in checked.stdout and "head" in checked.stdout
    refused = runner.invoke(app, ["build", str(tmp_path / "b")])
    assert refused.exit_code == 12
    assert "Unique is not supported by TensorRT's ONNX parser" in refused.stderr
    # --allow-violations gets past the rules to the engine build. Without TensorRT or trtexec
    # (hidden here, so the outcome is the same on every machine) that build stops with exactly
    # DependencyMissing (5) and its message: any other exit, a crash (1) included, fails.
    real_which = shutil.which
    monkeypatch.setattr("mmedge.targets.tensorrt.engine.tensorrt_version", lambda: None)
    monkeypatch.setattr(
        "mmedge.targets.tensorrt.engine.shutil.which",
        lambda cmd, *a, **k: None if cmd == "trtexec" else real_which(cmd, *a, **k),
    )
    forced = runner.invoke(app, ["build", str(tmp_path / "b"), "--allow-violations"])
    assert_user_error(forced, 5, "neither the TensorRT Python package nor trtexec")
    assert "rule violation" not in forced.stderr


def test_check_is_for_tensorrt_bundles(bundles: Path, built: object) -> None:
    result = runner.invoke(app, ["check", str(built.int8)])  # type: ignore[attr-defined]
    assert (
        result.exit_code == 3 and "has no rule checker; targets with one: tensorrt" in result.stderr
    )


@pytest.mark.slow
def test_reference_bundles_are_checked_and_int8_keeps_accuracy(tmp_path: Path) -> None:
    from mmedge.compare import accuracy
    from mmedge.data.datasets import open_eval

    recipe = load_recipe(REFERENCE)
    manifest = build_artifact(recipe, "tensorrt", "int8", tmp_path / "int8")
    assert manifest["steps"]["build"]["rules"]["errors"] == 0
    data = open_eval(recipe)
    assert data is not None
    scores = {}
    for name, path in (("fp32", None), ("int8", tmp_path / "int8" / "model.onnx")):
        if path is None:
            run = torch_runner(load_torch_model(recipe), recipe.outputs)
        else:
            run = OrtSession(path, threads=2).run
        out = [(run(b.feeds)["logits"], b.labels) for b in data.batches(64)]
        scores[name] = accuracy(
            np.concatenate([o for o, _ in out]), np.concatenate([y for _, y in out])
        )
    assert scores["fp32"] - scores["int8"] <= 1.0, scores


@pytest.mark.slow
def test_reference_large_bundle(tmp_path: Path) -> None:
    recipe = load_recipe(REFERENCE_LARGE)
    manifest = build_artifact(recipe, "tensorrt", "int8", tmp_path / "int8")
    assert manifest["steps"]["build"]["rules"]["errors"] == 0
    profile = json.loads((tmp_path / "int8" / "profile.json").read_text())["inputs"]
    assert profile["image"]["max"] == [16, 3, 224, 224] and profile["input_ids"]["opt"] == [1, 128]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_build_compare_and_bench(tmp_path: Path) -> None:
    recipe = load_recipe(REFERENCE)
    build_artifact(recipe, "tensorrt", "int8", tmp_path / "int8")
    if not (tmp_path / "int8" / "model.engine").is_file():
        result = runner.invoke(app, ["build", str(tmp_path / "int8")])
        assert result.exit_code == 0, result.stderr
    meta = json.loads((tmp_path / "int8" / "engine.json").read_text())
    assert meta["tensorrt_version"] == tensorrt_version()
    compared = runner.invoke(app, ["compare", str(tmp_path / "int8"), "--json"])
    assert compared.exit_code == 0, compared.stderr
    assert json.loads(compared.stdout)["top1_agreement"] >= 0.98
    benched = runner.invoke(app, ["bench", str(tmp_path / "int8"), "--json", "--profile"])
    assert benched.exit_code == 0, benched.stderr
    result = json.loads(benched.stdout)
    assert result["runtime_latency_ms"]["p50"] > 0 and result["branch_ms"]["text"] > 0


@pytest.mark.gpu
def test_cuda_helpers_round_trip() -> None:
    pytest.importorskip("cuda.bindings")
    from mmedge.targets.tensorrt.cuda import Buffer, Stream, Timer, device_info

    info = device_info(0)
    assert info["gpu"] and "." in info["compute_capability"]
    stream = Stream(0)
    data = np.arange(1000, dtype=np.float32)
    buf = Buffer(data.nbytes)
    buf.upload(data, stream)
    back = np.empty_like(data)
    timer = Timer()
    timer.begin(stream)
    buf.download(back, stream)
    elapsed = timer.stop(stream)
    stream.synchronize()
    np.testing.assert_array_equal(back, data)
    assert elapsed >= 0.0
    buf.free()
    timer.close()
    stream.close()


def test_the_repository_ships_the_golden_files() -> None:
    assert (REPO / "tests" / "golden" / "trtexec-trt10.txt").is_file()
