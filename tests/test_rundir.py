from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mmedge.errors import ArtifactError, OutputExistsError
from mmedge.rundir import (
    MANIFEST,
    atomic_write_json,
    check_output_dir,
    read_manifest,
    staged_output,
    verified_artifact,
    write_manifest,
)

IDENTITY = {"target": "onnxruntime", "precision": "int8", "recipe_sha256": "abc"}


def _publish(
    out: Path, payload: bytes = b"model", identity: dict[str, str] = IDENTITY
) -> dict[str, object]:
    with staged_output(out) as stage:
        (stage / "model.onnx").write_bytes(payload)
        return write_manifest(stage, [stage / "model.onnx"], {"identity": identity})


def test_staged_output_publishes_only_when_complete(tmp_path: Path) -> None:
    manifest = _publish(tmp_path / "out")
    assert (tmp_path / "out" / MANIFEST).is_file()
    assert (
        verified_artifact(tmp_path / "out", read_manifest(tmp_path / "out")).read_bytes()
        == b"model"
    )
    assert manifest["artifact"]["bytes"] == 5  # type: ignore[index]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging directories left"


@pytest.mark.parametrize("exc", [RuntimeError("backend crashed"), KeyboardInterrupt()])
def test_failure_leaves_the_previous_artifact_and_no_debris(
    tmp_path: Path, exc: BaseException
) -> None:
    _publish(tmp_path / "out", b"old")
    with pytest.raises(type(exc)), staged_output(tmp_path / "out") as stage:
        (stage / "model.onnx").write_bytes(b"half-writ")
        raise exc
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_stage_without_manifest_is_never_published(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no manifest"), staged_output(tmp_path / "out") as stage:
        (stage / "model.onnx").write_bytes(b"x")
    assert not (tmp_path / "out").exists()


def test_output_dir_refusals(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", IDENTITY, force=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", IDENTITY, force=False)

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="exists and is not a directory"):
        check_output_dir(tmp_path / "file", IDENTITY, force=True)

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(OutputExistsError, match="is not an mmedge artifact: it has no manifest"):
        check_output_dir(tmp_path / "mine", IDENTITY, force=True)

    _publish(tmp_path / "art")
    check_output_dir(tmp_path / "art", IDENTITY, force=False)  # the same artifact: rebuild
    other = {**IDENTITY, "precision": "fp32"}
    with pytest.raises(
        OutputExistsError, match=r"already holds a different artifact \(precision='int8'\)"
    ):
        check_output_dir(tmp_path / "art", other, force=False)
    check_output_dir(tmp_path / "art", other, force=True)


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="artifact directory not found"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(ArtifactError, match="not a finished mmedge artifact"):
        read_manifest(tmp_path / "d")
    (tmp_path / "d" / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="is not JSON"):
        read_manifest(tmp_path / "d")
    (tmp_path / "d" / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="is JSON but not an object"):
        read_manifest(tmp_path / "d")
    with pytest.raises(ArtifactError, match="is a file"):
        read_manifest(tmp_path / "d" / MANIFEST)
    (tmp_path / "d" / MANIFEST).write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ArtifactError, match="has format 'other/9'"):
        read_manifest(tmp_path / "d")


def test_tampered_artifact_is_detected(tmp_path: Path) -> None:
    _publish(tmp_path / "out")
    (tmp_path / "out" / "model.onnx").write_bytes(b"MODEL")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        verified_artifact(tmp_path / "out", read_manifest(tmp_path / "out"))
    (tmp_path / "out" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="is missing"):
        verified_artifact(tmp_path / "out", read_manifest(tmp_path / "out"))


def test_every_file_of_a_multi_file_artifact_is_verified(tmp_path: Path) -> None:
    with staged_output(tmp_path / "ir") as stage:
        (stage / "model.xml").write_text("<net/>")
        (stage / "model.bin").write_bytes(b"\0" * 10)
        manifest = write_manifest(stage, [stage / "model.xml", stage / "model.bin"], {})
    assert manifest["artifact"]["bytes"] == 16
    assert verified_artifact(tmp_path / "ir", manifest).name == "model.xml"
    (tmp_path / "ir" / "model.bin").write_bytes(b"\1" * 10)
    with pytest.raises(ArtifactError, match=r"model\.bin does not match the sha256"):
        verified_artifact(tmp_path / "ir", read_manifest(tmp_path / "ir"))


def test_manifest_records_versions_and_host(tmp_path: Path) -> None:
    manifest = _publish(tmp_path / "out")
    assert {"mmedge", "python", "onnx", "numpy"} <= set(manifest["versions"])  # type: ignore[arg-type]
    assert "features" in manifest["host"]["cpu"]  # type: ignore[index]


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_published_files_have_ordinary_permissions(tmp_path: Path) -> None:
    _publish(tmp_path / "out")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "out" / MANIFEST).stat().st_mode & 0o777 == 0o666 & ~mask


def test_force_replaces_only_what_mmedge_made(tmp_path: Path) -> None:
    """Someone's directory that happens to hold a manifest.json is never deleted; nor is an
    mmedge artifact that someone added files to."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / MANIFEST).write_text(json.dumps({"name": "my dataset", "identity": {}}))
    (theirs / "data.csv").write_text("precious")
    for manifest in ({"name": "x"}, [], {"format": "mmedge-artifact/1"}, "text"):
        (theirs / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(OutputExistsError, match="not an mmedge artifact"):
            check_output_dir(theirs, IDENTITY, force=True)
    assert (theirs / "data.csv").read_text() == "precious"

    _publish(tmp_path / "art")
    (tmp_path / "art" / "notes.txt").write_text("mine")
    other = {**IDENTITY, "precision": "fp32"}
    with pytest.raises(OutputExistsError, match=r"files mmedge did not write \(notes.txt\)"):
        check_output_dir(tmp_path / "art", other, force=True)
    (tmp_path / "art" / "notes.txt").unlink()
    (tmp_path / "art" / "compare.json").write_text("{}")  # a result mmedge writes beside it
    check_output_dir(tmp_path / "art", other, force=True)


def test_stale_staging_and_scratch_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tempfile

    from mmedge.workspace import staging_prefix, sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    stale = tmp_path / f".out.staging-{pid}-abc"
    scratch = Path(tempfile.gettempdir()) / f"mmedge-export-{pid}-xyz"
    live = tmp_path / f"{staging_prefix('out', 'staging')}def"  # this process: kept
    for d in (stale, scratch, live):
        d.mkdir()
    removed = sweep_stale(tmp_path)
    assert stale in removed and scratch in removed
    assert not stale.exists() and not scratch.exists() and live.exists()


def test_force_keeps_an_artifact_someone_added_a_json_file_to(tmp_path: Path) -> None:
    """Only the JSON files mmedge writes count as its own: a user's notes.json is not."""
    _publish(tmp_path / "art")
    (tmp_path / "art" / "notes.json").write_text("{}")
    other = {**IDENTITY, "precision": "fp32"}
    with pytest.raises(OutputExistsError, match=r"files mmedge did not write \(notes.json\)"):
        check_output_dir(tmp_path / "art", other, force=True)
    (tmp_path / "art" / "notes.json").unlink()
    (tmp_path / "art" / "bench-latency-b1-t2-opt.json").write_text("{}")
    check_output_dir(tmp_path / "art", other, force=True)
