"""ExecuTorch target: .pte programs built with torch.export and XNNPACK, FP32 and PT2E INT8,
run on ExecuTorch's own runtime for compare, bench and per-branch parity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from mmedge.artifacts import build_artifact, compare_artifact, open_artifact
from mmedge.cli import app
from mmedge.errors import InputSpecError
from mmedge.parity import parity_against
from mmedge.recipe import load_recipe
from mmedge.targets import SessionConfig, get_target
from tests.conftest import REFERENCE, tiny_feeds, write_recipe
from tests.test_cli import assert_user_error
from tests.zoo import zoo_recipe

pytest.importorskip("executorch")
runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class Programs:
    recipe: Path
    root: Path

    def __getitem__(self, precision: str) -> Path:
        return self.root / precision


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Programs]:
    root = tmp_path_factory.mktemp("executorch")
    # INT8 with one branch left in float: per-branch precision on the same build.
    path = write_recipe(root, {"quantization.keep_fp32": ["audio"]})
    recipe = load_recipe(path)
    for precision in ("fp32", "int8"):
        build_artifact(recipe, "executorch", precision, root / precision)
    build_artifact(recipe, "onnxruntime", "fp32", root / "onnx-fp32")
    yield Programs(path, root)


def test_fp32_program_matches_pytorch_on_every_shape(programs: Programs) -> None:
    manifest = json.loads((programs["fp32"] / "manifest.json").read_text())
    assert (
        manifest["target"] == "executorch"
        and manifest["artifact"]["files"][0]["path"] == "model.pte"
    )
    build = manifest["steps"]["build"]
    assert manifest["steps"]["export"] == {"source": "pytorch"}  # torch.export, not ONNX
    # XNNPACK took the image and text branches; the tiny audio Conv1d over (batch, 4, frames),
    # both dynamic, stays portable (ExecuTorch 1.5 lowers it through a 1-dynamic-dim reshape).
    assert build["delegation"]["delegated_nodes"] > 10
    assert "aten_convolution_default" in build["delegation"]["portable_ops"]
    assert "-O static_axes=[AXIS] with AXIS one of ['seq', 'frames']" in build["notes"][0]
    assert max(build["check"]["max_abs_error_vs_pytorch"].values()) < 1e-4
    report = compare_artifact(programs["fp32"])  # eval shards: seq 8 and 16, frames 16 and 32
    assert report.passed and report.outputs["logits"].cosine > 0.9999
    assert "executorch" in manifest["versions"]


def test_int8_program_is_calibrated_per_branch_and_close(programs: Programs) -> None:
    manifest = json.loads((programs["int8"] / "manifest.json").read_text())
    quant = manifest["steps"]["build"]["quantize"]
    assert quant["calibration_samples"] == 32
    # quantization.keep_fp32: [audio] leaves that branch's module out of the quantizer.
    assert quant["quantized_modules"] == ["model.image_encoder", "model.text_encoder",
                                          "model.head"]  # fmt: skip
    assert quant["kept_fp32"] == ["audio"]
    assert "linear" in quant["patterns"] and "add" not in quant["patterns"]  # op_types
    report = compare_artifact(programs["int8"])
    assert report.outputs["logits"].cosine > 0.98, report.outputs


def test_per_branch_parity_on_the_runtime(programs: Programs) -> None:
    manifest, recipe, artifact = open_artifact(programs["int8"])
    _, _, onnx_fp32 = open_artifact(programs["onnx-fp32"])
    record = parity_against(onnx_fp32, manifest, recipe, artifact)
    assert set(record["branches"]) == {"image", "text", "audio", "fusion"}
    assert record["runs_in"] == "executorch"
    assert all(m["cosine"] > 0.95 for m in record["branches"].values()), record["branches"]


def test_bench_and_cli(programs: Programs) -> None:
    result = run("bench", programs["int8"], "--iterations", "20", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["latency_ms"]["p50"] > 0 and data["settings"]["delegate"] == "XNNPACK"
    assert data["branch_ms"] is None  # no per-layer profiler on ExecuTorch's runtime here
    assert run("compare", programs["fp32"]).exit_code == 0
    assert_user_error(
        run("bench", programs["fp32"], "--device", "GPU"), 3, "executorch has no --device"
    )


def test_static_axes_pin_a_size_and_refuse_others(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, {"targets": {"executorch": {"static_axes": ["frames"]}}})
    recipe = load_recipe(path)
    manifest = build_artifact(recipe, "executorch", "fp32", tmp_path / "fp32")
    # frames fixed: XNNPACK takes the audio Conv1d, and the build has no advice left.
    assert (
        "aten_convolution_default" not in manifest["steps"]["build"]["delegation"]["portable_ops"]
    )
    assert manifest["steps"]["build"]["notes"] == []
    opt = recipe.axes["frames"].opt
    session = get_target("executorch").load(
        tmp_path / "fp32" / "model.pte", recipe, "fp32", SessionConfig(threads=1)
    )
    with session:
        assert session.run(tiny_feeds(2, 8, opt))["logits"].shape == (2, 5)
        with pytest.raises(InputSpecError, match="'frames' fixed at"):
            session.run(tiny_feeds(2, 8, opt + 4))


def test_bad_settings_are_refused_by_name(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    bad = run(
        "export", recipe, "-t", "executorch", "-O", "static_axes=[nope]", "-o", tmp_path / "a"
    )
    assert_user_error(bad, 3, "static_axes names ['nope']")
    assert not (tmp_path / "a").exists()
    dynamic = run("quantize", recipe, "-t", "executorch", "--mode", "dynamic", "-o", tmp_path / "b")
    assert_user_error(dynamic, 3, "executorch quantizes with its own")
    fp16 = run("export", recipe, "-t", "executorch", "-p", "fp16", "-o", tmp_path / "c")
    assert_user_error(fp16, 3, "has no precision 'fp16'")


def test_a_session_checks_feeds_before_the_runtime(programs: Programs) -> None:
    recipe = load_recipe(programs.recipe)
    target = get_target("executorch")
    with target.load(programs["fp32"] / "model.pte", recipe, "fp32", SessionConfig(1)) as s:
        feeds = tiny_feeds(2, 8, 16)
        feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
        with pytest.raises(InputSpecError, match="'input_ids' has dtype int32, expected int64"):
            s.run(feeds)


@pytest.mark.slow
def test_reference_int8_agrees_with_fp32(tmp_path: Path) -> None:
    """The trained reference model: INT8 keeps top-1 agreement on its eval set and shrinks the
    program. Not to a quarter: the audio Conv1d (batch and frames dynamic) runs in portable
    kernels with float weights, and embeddings have no XNNPACK INT8 pattern."""
    recipe = load_recipe(REFERENCE)
    int8 = build_artifact(recipe, "executorch", "int8", tmp_path / "int8")
    report = compare_artifact(tmp_path / "int8")
    assert report.top1_agreement is not None and report.top1_agreement >= 0.95, report.to_json()
    assert report.parity is not None and set(report.parity["branches"]) == {"image", "text",
                                                                              "audio", "fusion"}  # fmt: skip
    onnx = build_artifact(recipe, "onnxruntime", "fp32", tmp_path / "fp32")
    assert int8["artifact"]["bytes"] < 0.75 * onnx["artifact"]["bytes"]


def test_a_real_architecture_at_int8(tmp_path: Path) -> None:
    """transformers' BertModel (three int64 inputs, SDPA with a padding mask, a pooler) and
    ViTModel through torch.export, PT2E and XNNPACK: code we did not write. Their outputs are
    ModelOutputs, so no branch output is returned for them (parity has nothing to read)."""
    recipe = load_recipe(zoo_recipe("bert_vit_concat", tmp_path))
    manifest = build_artifact(recipe, "executorch", "int8", tmp_path / "int8")
    build = manifest["steps"]["build"]
    assert build["branch_outputs"] == ["fusion"]
    assert build["quantize"]["quantized_modules"] == [
        "model.text_encoder", "model.image_encoder", "model.head"
    ]  # fmt: skip
    report = compare_artifact(tmp_path / "int8")
    assert report.passed and report.outputs["logits"].cosine > 0.999, report.to_json()
