"""Every kind of bad input and fault from the hardening audit: its documented exit code, a
message naming the thing at fault, no traceback, nothing lost and nothing half-written.

One test per kind of cause; `tests/test_properties.py` mutates inputs at random on top."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import Result

from tests.conftest import REPO, Built, write_recipe
from tests.test_cli import assert_user_error, run


def user_error(result: Result, code: int, *fragments: str) -> str:
    assert_user_error(result, code, *fragments)
    return str(result.stderr)


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / "mods").mkdir(exist_ok=True)
    (tmp_path / "mods" / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return f"{name}:make"


# -- data loss -------------------------------------------------------------------------------


def test_force_never_deletes_a_directory_mmedge_did_not_make(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.json").write_text(json.dumps({"project": "thesis", "identity": {}}))
    (theirs / "chapter1.tex").write_text("precious")
    result = run("export", recipe, "-t", "onnxruntime", "-p", "fp32", "-o", theirs, "--force")
    user_error(result, 9, "not an mmedge artifact", "--force or not")
    assert (theirs / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in theirs.iterdir()) == ["chapter1.tex", "manifest.json"]


# -- resource limits before work -------------------------------------------------------------


def test_recipe_limits(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    user_error(run("inspect", bomb), 3, "alias")
    assert time.perf_counter() - started < 10  # refused, not expanded

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    user_error(run("inspect", binary), 3, "not a text file")

    huge = write_recipe(tmp_path / "huge", {"axes.frames": {"min": 8, "opt": 16, "max": 10**9}})
    user_error(run("inspect", huge), 3, "memory budget", "audio")

    inverted = write_recipe(tmp_path / "inv", {"inputs.input_ids.range": [16, 0]})
    user_error(run("inspect", inverted), 3, "low < high")


def test_a_shard_declaring_a_huge_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    import io
    import zipfile

    recipe = write_recipe(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 1, 2**20, 2**25)}
    )
    with zipfile.ZipFile(tmp_path / "calib" / "shard-000.npz", "w") as archive:
        archive.writestr("image.npy", header.getvalue() + b"\0" * 64)
    result = run("quantize", recipe, "-t", "onnxruntime", "-o", tmp_path / "q")
    user_error(result, 4, "shard-000.npz", "declares shape", "GiB")
    assert not (tmp_path / "q").exists()

    # A negative dimension makes the product small, and numpy's header reader accepts it
    # (found by tests/test_properties.py: [4, -20, 201761263306198221] allocated 8 EiB).
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (4, -20, 201761263306198221)}
    )
    with zipfile.ZipFile(tmp_path / "calib" / "shard-000.npz", "w") as archive:
        archive.writestr("image.npy", header.getvalue() + b"\0" * 64)
    result = run("quantize", recipe, "-t", "onnxruntime", "-o", tmp_path / "q")
    user_error(result, 4, "shard-000.npz", "negative dimension")


# -- the user's model and data ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("def make(:\n", ["syntax error", "line 1"]),
        ("raise RuntimeError('no licence server')\n", ["RuntimeError: no licence server"]),
        ("import sys\ndef make():\n    sys.exit(0)\n", ["sys.exit(0)"]),
    ],
    ids=["syntax-error", "raises-at-import", "sys-exit-0"],
)
def test_factory_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, fragments: list[str]
) -> None:
    name = f"factory_{abs(hash(source)) % 10**8}"
    recipe = write_recipe(tmp_path, {"model.factory": _module(tmp_path, monkeypatch, name, source)})
    user_error(run("inspect", recipe), 8, *fragments)


def test_weights_that_do_not_fit_the_model(tmp_path: Path) -> None:
    import torch

    from tests.models import tiny_fusion

    state = tiny_fusion().state_dict()
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 3, state[key].shape[1])
    torch.save(state, tmp_path / "w.pt")
    recipe = write_recipe(tmp_path, {"model.weights": "w.pt"})
    user_error(run("inspect", recipe), 8, "do not fit the model", key)


def test_branch_prefix_matching_no_module(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, {"branches.audio": ["audio_encoderr"]})
    user_error(run("inspect", recipe), 3, "branches.audio", "'audio_encoderr'", "audio_encoder")


def test_eval_data_the_model_cannot_take(tmp_path: Path) -> None:
    """Token ids beyond the embedding and labels outside the classes: code 4, not an
    IndexError, and not a gate that 'passes' at 0% accuracy."""
    recipe = write_recipe(tmp_path)
    assert (
        run("export", recipe, "-t", "onnxruntime", "-p", "fp32", "-o", tmp_path / "a").exit_code
        == 0
    )
    eval_dir = tmp_path / "eval"
    shard = dict(np.load(eval_dir / "shard-000.npz"))

    shard["label"] = shard["label"] + 10  # the tiny model has 5 classes
    np.savez(eval_dir / "shard-000.npz", **shard)
    user_error(run("compare", tmp_path / "a"), 4, "outside the model's 5 classes")

    shard["label"] = shard["label"] - 10
    shard["input_ids"][0, 0] = 99  # the embedding has 16 rows; the recipe says range [0, 16)
    np.savez(eval_dir / "shard-000.npz", **shard)
    user_error(run("compare", tmp_path / "a"), 4, "input_ids", "99", "range end 16")


def test_the_models_own_failure_on_data_is_a_data_error() -> None:
    from mmedge.errors import InputSpecError
    from mmedge.model import torch_runner
    from tests.models import tiny_fusion

    call = torch_runner(tiny_fusion(), ["logits"])
    feeds = {
        "image": np.zeros((1, 1, 8, 8), np.float32),
        "input_ids": np.full((1, 8), 500, np.int64),  # no range declared: the model itself fails
        "attention_mask": np.ones((1, 8), np.int64),
        "audio": np.zeros((1, 4, 16), np.float32),
    }
    with pytest.raises(InputSpecError, match="IndexError"):
        call(feeds)


def test_onnx_files_that_are_not_onnx(tmp_path: Path, built: Built) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    recipe = write_recipe(tmp_path, {"model.factory": None, "model.path": "empty.onnx"})
    user_error(run("inspect", recipe), 8, "empty (0 bytes), not an ONNX model")
    (tmp_path / "empty.onnx").write_bytes(b"\x08\x07garbage" * 10)
    user_error(run("inspect", recipe), 8, "not an ONNX model")
    user_error(run("check", built.fp32 / "model.onnx"), 10, "is a file")


# -- artifacts and the filesystem ------------------------------------------------------------


def test_output_path_under_a_regular_file(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"
    user_error(run("export", recipe, "-t", "onnxruntime", "-o", out), 9, "regular file")


def test_a_manifest_that_is_json_but_not_an_object(tmp_path: Path, built: Built) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built.fp32, copy)
    (copy / "manifest.json").write_text("[1, 2, 3]")
    user_error(run("compare", copy), 10, "not an object")
    user_error(run("bench", copy), 10, "not an object")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_results_a_directory_refuses_cost_the_copy_not_the_measurement(
    built: Built, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Root ignores permission bits, so the refusal is injected where the result is written."""
    import mmedge.artifacts

    def refuse(path: Path, data: Any) -> None:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(mmedge.artifacts, "atomic_write_json", refuse)
    result = run("bench", built.fp32, "--iterations", "3", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert any("bench-" in w and "was not saved" in w for w in warnings), warnings
    result = run("compare", built.fp32, "--json")
    assert result.exit_code == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert any("compare.json was not saved" in w for w in warnings), warnings


def test_disk_full_while_building_a_calibration_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmedge.data.build
    from mmedge.reference import data
    from mmedge.reference.raw import write_raw

    write_raw(tmp_path / "raw", data.split("train"), samples=16, shard_size=16, seed=1)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))

    monkeypatch.setattr(mmedge.data.build.np, "savez_compressed", full)
    reference = REPO / "recipes" / "reference.yaml"
    out = tmp_path / "calib"
    result = run("calib", "build", reference, "--from", tmp_path / "raw", "-o", out)
    user_error(result, 13, "no space left on the device")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".calib")]


def test_disk_full_reads_as_such_not_as_a_corrupt_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    from mmedge.errors import SystemLimit
    from mmedge.targets.onnxruntime import OrtSession

    (tmp_path / "fp32.onnx").write_bytes(b"\x08\x07")  # what a full disk leaves
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 0))
    with pytest.raises(SystemLimit, match="no space left"):
        OrtSession(tmp_path / "fp32.onnx", 1)


def test_an_edited_tensorrt_profile_says_how_to_widen_one(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    out = tmp_path / "trt"
    assert run("export", recipe, "-t", "tensorrt", "-p", "fp32", "-o", out).exit_code == 0
    profile = json.loads((out / "profile.json").read_text())
    profile["inputs"]["audio"]["max"][2] = 64
    (out / "profile.json").write_text(json.dumps(profile))
    stderr = user_error(run("compare", out), 10, "profile.json", "sha256")
    assert "axes" in stderr and "re-export" in stderr


def test_tensorrt_bundles_where_tensorrt_is_absent(tmp_path: Path) -> None:
    from mmedge.targets.tensorrt.engine import tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here")
    recipe = write_recipe(tmp_path)
    out = tmp_path / "trt"
    assert run("export", recipe, "-t", "tensorrt", "-p", "fp32", "-o", out).exit_code == 0
    user_error(run("compare", out), 5, "TensorRT is not installed")
    user_error(run("bench", out), 5, "TensorRT is not installed")


def test_a_broken_tensorrt_install_is_reported_not_crashed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "broken" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.stderr
    recipe = write_recipe(tmp_path)
    result = run("export", recipe, "-t", "tensorrt", "-p", "fp32", "-o", tmp_path / "trt")
    assert result.exit_code == 0, result.stderr


# -- settings --------------------------------------------------------------------------------


def test_threads(built: Built) -> None:
    many = (os.cpu_count() or 1) + 1
    result = run("bench", built.fp32, "--threads", many, "--iterations", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert any("threads" in w for w in json.loads(result.stdout)["warnings"])
    user_error(run("bench", built.fp32, "--threads", 100000), 3, "threads", "1024")


def test_json_output_is_strict_json(built: Built) -> None:
    """Identical outputs have an infinite SQNR: null in JSON, and said so."""
    result = run("compare", built.fp32, "--reference", built.fp32, "--json")
    assert result.exit_code == 0, result.stderr

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["outputs"]["logits"]["sqnr_db"] is None
    assert data["non_finite"]["outputs.logits.sqnr_db"] == "+inf"


# -- runs: locks, signals, state files -------------------------------------------------------


def test_two_runs_on_one_directory(tmp_path: Path) -> None:
    from mmedge.workspace import dir_lock

    recipe = write_recipe(tmp_path)
    with dir_lock(tmp_path / "run"):  # as another live process would hold it
        user_error(run("run", recipe, "-o", tmp_path / "run"), 14, "in use by mmedge process")


@pytest.mark.parametrize("content", ["[]", '{"format": "mmedge-run/1", "recipe": "tiny"}'])
def test_run_json_that_is_not_a_run_manifest(tmp_path: Path, content: str) -> None:
    recipe = write_recipe(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(content)
    user_error(run("run", recipe, "-o", tmp_path / "run"), 9, "run.json")
    user_error(run("report", tmp_path / "run"), 10, "run.json")


def test_report_survives_malformed_step_records(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    (tmp_path / "run").mkdir()
    manifest = {
        "format": "mmedge-run/1",
        "recipe": {"name": "tiny", "path": "r.yaml"},
        "steps": {"build:onnxruntime-fp32": "ok", "compare:x": [1], "bench:y": {"status": 3}},
    }
    (tmp_path / "run" / "run.json").write_text(json.dumps(manifest))
    result = run("report", tmp_path / "run")
    assert result.exit_code == 0, result.stderr


def test_a_killed_runs_step_is_not_left_running(tmp_path: Path) -> None:
    from mmedge.run.state import RunState

    (tmp_path / "run").mkdir()
    manifest = {
        "format": "mmedge-run/1",
        "recipe": {"name": "tiny", "path": "r.yaml"},
        "steps": {"build:onnxruntime-fp32": {"status": "running", "key": "k"}},
    }
    (tmp_path / "run" / "run.json").write_text(json.dumps(manifest))
    state = RunState.open(tmp_path / "run", "tiny", tmp_path / "r.yaml", take_over=False)
    assert state.steps["build:onnxruntime-fp32"]["status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_is_handled_as_ctrl_c(tmp_path: Path) -> None:
    """What `timeout` and CI send: exit 143, and no staging or scratch directory left."""
    factory = tmp_path / "mods" / "slow_factory.py"
    factory.parent.mkdir()
    factory.write_text(
        "import time\nfrom tests.models import tiny_fusion\n"
        "def make():\n    time.sleep(60)\n    return tiny_fusion()\n"
    )
    recipe = write_recipe(tmp_path, {"model.factory": "slow_factory:make"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(factory.parent), str(REPO)])}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmedge.cli", "export", str(recipe), "-t", "onnxruntime",
         "-o", str(out)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.2)  # until the build has started (its staging directory exists)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert not list((tmp_path / "tmp").glob("mmedge-*"))


def test_an_internal_error_is_short_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mmedge.artifacts

    def bug(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("MMEDGE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("MMEDGE_DEBUG", raising=False)
    monkeypatch.setattr(mmedge.artifacts, "inspect_recipe", bug)
    result = run("inspect", write_recipe(tmp_path))
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError: a bug" in result.stderr
    assert "Traceback" not in result.stderr
    logs = list((tmp_path / "logs").glob("*internal-error.log"))
    assert len(logs) == 1 and "ZeroDivisionError" in logs[0].read_text()
    assert str(logs[0]) in result.stderr.replace("\n", "")


def test_yaml_recipe_with_anchors_still_loads(tmp_path: Path) -> None:
    """The alias bound does not take anchors away from ordinary recipes."""
    path = write_recipe(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["axes"]["frames"] = "FRAMES"
    text = yaml.safe_dump(raw, sort_keys=False).replace("seq:\n", "seq: &range\n", 1)
    path.write_text(text.replace("FRAMES", "*range"))
    assert "*range" in path.read_text()
    assert run("inspect", path).exit_code == 0


def test_report_of_a_run_whose_result_file_was_damaged(tmp_path: Path) -> None:
    (tmp_path / "run" / "x").mkdir(parents=True)
    manifest = {
        "format": "mmedge-run/1",
        "recipe": {"name": "tiny", "path": "r.yaml"},
        "steps": {"build:x": {"status": "ok"}, "compare:x": {"status": "ok"}},
    }
    (tmp_path / "run" / "run.json").write_text(json.dumps(manifest))
    (tmp_path / "run" / "x" / "compare.json").write_text('{"outputs": 5}')
    user_error(run("report", tmp_path / "run"), 10, "damaged", "--force")
