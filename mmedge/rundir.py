"""Artifact directories: staged builds, atomic writes, and the manifest that marks them finished.

A build writes into a hidden sibling staging directory; only when every file and the manifest
are in place is it renamed over the output path. An interrupted or failed build leaves the old
directory (if any) untouched and no half-written artifact that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from mmedge import __version__
from mmedge.errors import ArtifactError, OutputExistsError
from mmedge.hardware import cpu_summary

MANIFEST = "manifest.json"
FORMAT = "mmedge-artifact/1"
_PACKAGES = ("onnx", "onnxruntime", "torch", "numpy", "openvino", "nncf", "tensorrt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a result file is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def versions() -> dict[str, str]:
    found = {"mmedge": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def host() -> dict[str, object]:
    return {"platform": platform.platform(), "cpu": cpu_summary()}


def read_manifest(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not a finished mmedge artifact (no {MANIFEST})",
            hint="create one with 'mmedge export' or 'mmedge quantize'",
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path} is corrupt: {err}") from None
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{path} has format {data.get('format')!r}, expected {FORMAT!r}")
    return data


def verified_artifact(directory: Path, manifest: dict[str, Any]) -> Path:
    """The artifact's main file, after checking every file still matches its sha256."""
    entry = manifest["artifact"]
    for item in entry["files"]:
        path = directory / str(item["path"])
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} listed in the manifest is missing")
        if sha256_file(path) != item["sha256"]:
            raise ArtifactError(f"artifact file {path} does not match the sha256 in its manifest")
    return directory / str(entry["path"])


def check_output_dir(out: Path, identity: dict[str, str], force: bool) -> None:
    """Refuse to replace something else; rebuilding the same artifact is allowed."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        # Never delete a directory mmedge did not make, --force or not.
        raise OutputExistsError(
            f"output directory {out} is not empty and is not an mmedge artifact; "
            "choose another path"
        )
    old = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("identity", {})
    if old != identity and not force:
        what = ", ".join(f"{k}={old.get(k)!r}" for k in identity if old.get(k) != identity[k])
        raise OutputExistsError(
            f"output directory {out} already holds a different artifact ({what})",
            hint="pass --force to replace it, or choose another output directory",
        )


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``out``, on any failure it vanishes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; the published dir is not
    try:
        yield stage
        if not (stage / MANIFEST).is_file():
            raise RuntimeError("staged output has no manifest; refusing to publish it")
        _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, out: Path) -> None:
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(stage, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(stage, out)


def write_manifest(stage: Path, files: list[Path], fields: dict[str, Any]) -> dict[str, Any]:
    """``files``: the artifact's files in ``stage``, the one a runtime opens first."""
    entries: list[dict[str, Any]] = [
        {"path": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files
    ]
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
        "artifact": {
            "path": entries[0]["path"],
            "bytes": sum(int(e["bytes"]) for e in entries),  # what the artifact costs on disk
            "sha256": entries[0]["sha256"],
            "files": entries,
        },
        "versions": versions(),
        "host": host(),
    }
    atomic_write_json(stage / MANIFEST, manifest)
    return manifest
