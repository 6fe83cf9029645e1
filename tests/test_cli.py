"""The CLI end to end on the tiny recipe: happy paths, JSON shapes, every bad input's exit code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from mmedge import __version__
from mmedge.cli import app
from mmedge.errors import EXIT_CODES
from tests.conftest import Built, tiny_feeds, write_recipe

runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result: Result, code: int, *fragments: str) -> None:
    """A clear message on stderr, the documented exit code, and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"mmedge {__version__}"
    help_text = run("--help").stdout
    for command in ("inspect", "export", "quantize", "compare", "bench"):
        assert command in help_text
    assert "Exit codes" in help_text


def test_inspect(tiny_recipe: Path) -> None:
    result = run("inspect", tiny_recipe, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["inputs"]["audio"]["opt_shape"] == [1, 4, 16]
    stats = data["stats"]
    assert (
        sum(stats[b]["params"] for b in ("image", "text", "audio", "fusion", "other"))
        == stats["total"]["params"]
    )
    assert all(stats[b]["macs"] > 0 for b in ("image", "text", "audio", "fusion"))
    table = run("inspect", tiny_recipe)
    assert table.exit_code == 0 and "MMACs" in table.stdout and "text_encoder" in table.stdout


def test_export_quantize_compare_bench(built: Built) -> None:
    fp32 = json.loads((built.fp32 / "manifest.json").read_text())
    int8 = json.loads((built.int8 / "manifest.json").read_text())
    assert (fp32["target"], fp32["precision"], int8["precision"]) == ("onnxruntime", "fp32", "int8")
    assert int8["steps"]["build"]["calibration_samples"] == 32
    assert fp32["steps"]["parity"] and fp32["recipe"]["name"] == "tiny"

    result = run("compare", built.int8, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds nothing but the JSON
    assert set(report) >= {"outputs", "top1_agreement", "accuracy", "passed"}
    assert set(report["outputs"]["logits"]) >= {"cosine", "max_abs", "mean_abs", "sqnr_db"}
    assert report["passed"] and report["outputs"]["logits"]["cosine"] > 0.99
    assert set(report["accuracy"]) == {"reference", "candidate"}
    assert json.loads((built.int8 / "compare.json").read_text())["passed"]

    result = run(
        "bench", built.int8, "--json", "--iterations", "5", "--batch", "3", "--shape", "max"
    )
    assert result.exit_code == 0, result.stderr
    bench = json.loads(result.stdout)
    assert (bench["target"], bench["precision"], bench["batch"]) == ("onnxruntime", "int8", 3)
    assert set(bench["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert bench["latency_ms"]["p50"] > 0 and bench["throughput_per_s"] > 0
    assert bench["peak_rss_mb"] > 0
    assert bench["shapes"]["audio"] == [3, 4, 32]
    assert (built.int8 / "bench-latency-b3-t1-max.json").is_file()
    assert bench["mode"] == "latency" and bench["settings"]["requests"] == 1


def test_human_readable_output(built: Built) -> None:
    compared = run("compare", built.fp32)
    assert compared.exit_code == 0 and "gate passed" in compared.stdout
    benched = run("bench", built.fp32, "--iterations", "3")
    assert benched.exit_code == 0 and "p50 ms" in benched.stdout and "cpu:" in benched.stdout


def test_compare_against_another_artifact(built: Built) -> None:
    result = run("compare", built.int8, "--reference", built.fp32, "--json", "--samples", "8")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["reference"] == str(built.fp32) and data["samples"] == 8


def test_default_output_directory(tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_recipe.parent)
    result = run("export", tiny_recipe, "--json")
    assert result.exit_code == 0, result.stderr
    assert (tiny_recipe.parent / "runs" / "tiny" / "onnxruntime-fp32" / "manifest.json").is_file()


def test_json_stays_clean_when_the_quantizer_prints(tmp_path: Path) -> None:
    # ONNX Runtime's entropy calibrator prints progress; --json output must still parse.
    result = run(
        "quantize", write_recipe(tmp_path), "-o", tmp_path / "q", "--method", "entropy", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["steps"]["build"]["method"] == "entropy"


def test_keep_fp32_flag_reaches_the_quantizer(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = run("quantize", recipe, "-o", tmp_path / "q", "--keep-fp32", "fusion", "--json")
    assert result.exit_code == 0, result.stderr
    build = json.loads(result.stdout)["steps"]["build"]
    assert build["kept_fp32_branches"] == ["fusion"] and build["excluded_nodes"] > 0


def test_gate_failure_exits_7_and_keeps_the_artifact(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, {"compare.min_cosine": 1.0})
    assert run("quantize", recipe, "-o", tmp_path / "q").exit_code == 0
    result = run("compare", tmp_path / "q")
    assert_user_error(result, 7, "comparison gate failed", "cosine")
    assert "gate failed" in result.stdout  # the report is printed before the error
    assert (tmp_path / "q" / "model.onnx").is_file()
    assert not json.loads((tmp_path / "q" / "compare.json").read_text())["passed"]


def _bad_calibration(tmp_path: Path, how: str) -> Path:
    recipe = write_recipe(tmp_path)
    shard = tmp_path / "calib" / "shard-001.npz"
    feeds = tiny_feeds(4, 8, 16)
    if how == "missing key":
        del feeds["audio"]
    elif how == "extra key":
        feeds["depth"] = feeds["image"]
    elif how == "float ids":
        feeds["input_ids"] = feeds["input_ids"].astype(np.float32)
    elif how == "rank":
        feeds["audio"] = feeds["audio"][:, 0]
    elif how == "nan":
        feeds["image"][2, 0, 1, 1] = np.nan
    elif how == "zero samples":
        feeds = tiny_feeds(0, 8, 16)
    np.savez(shard, **feeds)  # type: ignore[arg-type]
    return recipe


@pytest.mark.parametrize(
    ("how", "fragment"),
    [
        ("missing key", "missing ['audio']"),
        ("extra key", "unexpected ['depth']"),
        ("float ids", "input 'input_ids' has dtype float32, expected int64"),
        ("rank", "input 'audio' has rank 2"),
        ("nan", "input 'image' holds 1 NaN/Inf values"),
        ("zero samples", "zero samples"),
    ],
)
def test_bad_calibration_data(tmp_path: Path, how: str, fragment: str) -> None:
    recipe = _bad_calibration(tmp_path, how)
    result = run("quantize", recipe, "-o", tmp_path / "q")
    assert_user_error(result, 4, "shard-001.npz", fragment)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(
    ("changes", "code", "fragment"),
    [
        ({"quantization.methd": "minmax"}, 3, "quantization.methd: Extra inputs are not permitted"),
        ({"model.factory": "tests.nowhere:f"}, 8, "cannot import factory module 'tests.nowhere'"),
        ({"model.factory": "tests.models:not_a_module"}, 8, "expected a torch.nn.Module"),
        (
            {"model.factory": "tests.models:two_inputs"},
            4,
            "recipe inputs do not match TwoInputs.forward",
        ),
        ({"model.weights": "nope.safetensors"}, 8, "weights file not found"),
        ({"calibration.path": "no-such-dir"}, 4, "data path not found"),
        ({"model.factory": "tests.models:unexportable"}, 6, "ONNX export failed"),
        (
            {
                "model.factory": "tests.models:baked_frames",
                "export.exporter": "torchscript",
                "export.fallback": False,
            },
            6,
            "differs from PyTorch at",
        ),
    ],
)
def test_bad_recipes_and_models(
    tmp_path: Path, changes: dict[str, object], code: int, fragment: str
) -> None:
    result = run("quantize", write_recipe(tmp_path, changes), "-o", tmp_path / "q")
    assert_user_error(result, code, fragment)
    assert not (tmp_path / "q").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".q.")] == []


def test_malformed_yaml_and_missing_recipe(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {image: [1, 2\n")
    assert_user_error(run("export", bad), 3, "is not valid YAML")
    assert_user_error(run("export", tmp_path / "none.yaml"), 3, "recipe file not found")


def test_usage_errors_keep_exit_code_2(tiny_recipe: Path) -> None:
    assert run("export", tiny_recipe, "--target", "tflite").exit_code == 2
    assert run("bench").exit_code == 2


def test_output_directory_holding_another_artifact(built: Built, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "art"
    shutil.copytree(built.fp32, out)
    result = run("quantize", built.recipe, "-o", out)
    assert_user_error(result, 9, "already holds a different artifact", "precision='fp32'")
    assert json.loads((out / "manifest.json").read_text())["precision"] == "fp32"
    forced = run("quantize", built.recipe, "-o", out, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads((out / "manifest.json").read_text())["precision"] == "int8"


def test_a_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    recipe = write_recipe(tmp_path / "r")
    assert_user_error(
        run("export", recipe, "-o", tmp_path, "--force"), 9, "is not an mmedge artifact"
    )
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert_user_error(run("bench", tmp_path), 10, "not a finished mmedge artifact")
    assert_user_error(run("compare", tmp_path / "nope"), 10, "artifact directory not found")


def test_tampered_artifact_is_refused(built: Built, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(built.int8, out)
    with (out / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    assert_user_error(run("bench", out), 10, "does not match the sha256")


def test_missing_backend_gives_an_install_hint(
    tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = run("export", tiny_recipe, "-o", tiny_recipe.parent / "out")
    assert_user_error(
        result, 5, "onnxruntime backend is not installed", 'pip install "mmedge[onnxruntime]"'
    )


def test_compare_without_torch_points_to_an_fp32_artifact(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    result = run("compare", built.int8)
    assert_user_error(result, 5, "--reference DIR")


def test_ctrl_c_during_quantization_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmedge.quantize.ort_calibration import FeedReader

    recipe = write_recipe(tmp_path)
    calls = {"n": 0}
    real = FeedReader.get_next

    def interrupted(self: FeedReader) -> dict[str, np.ndarray] | None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(FeedReader, "get_next", interrupted)
    result = run("quantize", recipe, "-o", tmp_path / "q")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert calls["n"] == 2
    assert not (tmp_path / "q").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_exit_codes_are_documented_in_the_readme() -> None:
    """The README's table lists exactly the codes the code defines, no more, no fewer."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    documented = [int(m) for m in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)]
    assert documented == sorted(EXIT_CODES), "README's exit-code table differs from the code"


def test_recipe_starting_from_onnx(tmp_path: Path) -> None:
    from mmedge.export import export_onnx
    from mmedge.model import load_torch_model
    from mmedge.recipe import load_recipe

    torch_recipe = load_recipe(write_recipe(tmp_path))
    export_onnx(load_torch_model(torch_recipe), torch_recipe, tmp_path / "model.onnx")
    recipe = write_recipe(tmp_path, {"model.factory": None, "model.path": "model.onnx"})

    inspected = run("inspect", recipe, "--json")
    assert inspected.exit_code == 0, inspected.stderr
    stats = json.loads(inspected.stdout)["stats"]
    assert stats["text"]["params"] > 0 and stats["total"]["macs"] is None
    assert "MACs need the PyTorch model" in run("inspect", recipe).stdout

    assert run("quantize", recipe, "-o", tmp_path / "q").exit_code == 0
    result = run("compare", tmp_path / "q", "--json")  # the reference is the source ONNX
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["outputs"]["logits"]["cosine"] > 0.99


def test_recipe_starting_from_an_exported_program(tmp_path: Path) -> None:
    import torch

    from tests.models import tiny_fusion

    feeds = {k: torch.from_numpy(v) for k, v in tiny_feeds(2, 8, 16).items()}
    batch, seq = torch.export.Dim("batch", min=1, max=16), torch.export.Dim("seq", min=4, max=16)
    frames = torch.export.Dim("frames", min=8, max=32)
    dynamic = ({0: batch}, {0: batch, 1: seq}, {0: batch, 1: seq}, {0: batch, 2: frames})
    program = torch.export.export(
        tiny_fusion().eval(), tuple(feeds.values()), dynamic_shapes=dynamic
    )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    recipe = write_recipe(tmp_path, {"model.factory": None, "model.path": "model.pt2"})
    result = run("export", recipe, "-o", tmp_path / "fp32", "--json")
    assert result.exit_code == 0, result.stderr
    compared = run("compare", tmp_path / "fp32", "--json")
    assert compared.exit_code == 0, compared.stderr
    assert json.loads(compared.stdout)["outputs"]["logits"]["max_abs"] < 1e-4


def test_bench_batch_above_the_batch_axis(built: Built) -> None:
    assert_user_error(
        run("bench", built.fp32, "--batch", "64"),
        3,
        "bench batch 64 is above the recipe's batch axis max of 16",
    )


def test_quantize_leaves_nothing_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX Runtime's symbolic shape inference dumps a partial model into the current directory
    # when it is incomplete, as it is on a graph that slices a table by the sequence length.
    recipe = write_recipe(tmp_path / "r", {"model.factory": "tests.models:direct_parameter"})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = run("quantize", recipe, "-o", tmp_path / "q", "--json")
    assert result.exit_code == 0, result.stderr
    assert (
        json.loads(result.stdout)["steps"]["build"]["preprocess"]["symbolic_shape_inference"]
        is False
    )
    assert list(cwd.iterdir()) == []
