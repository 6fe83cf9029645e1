"""Artifact directories: staged builds, atomic writes, and the manifest that marks them finished.

A build writes into a hidden sibling staging directory; only when every file and the manifest
are in place is it renamed over the output path. An interrupted or failed build leaves the old
directory (if any) untouched and no half-written artifact that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from mmedge import ARTIFACT_FORMAT, __version__
from mmedge.errors import ArtifactError, OutputExistsError
from mmedge.hardware import cpu_summary
from mmedge.hashing import sha256_file

MANIFEST = "manifest.json"
FORMAT = ARTIFACT_FORMAT
_PACKAGES = ("onnx", "torch", "numpy")  # and every registered target's (TargetSpec.packages)


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def versions() -> dict[str, str]:
    found = {"mmedge": __version__, "python": platform.python_version()}
    from mmedge.targets import package_names

    for name in (*_PACKAGES, *package_names()):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def host() -> dict[str, object]:
    return {"platform": platform.platform(), "cpu": cpu_summary()}


def read_manifest(directory: Path) -> dict[str, Any]:
    if directory.is_file():
        raise ArtifactError(
            f"{directory} is a file; an artifact is the directory export or quantize wrote",
            hint="pass the directory that holds manifest.json",
        )
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{directory} is not a finished mmedge artifact (no {MANIFEST})",
            hint="create one with 'mmedge export' or 'mmedge quantize'",
        )
    problem = manifest_problem(path)
    if problem:
        raise ArtifactError(f"{path}: {problem}", hint="rebuild the artifact")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def manifest_problem(path: Path) -> str | None:
    """Why ``path`` is not a manifest mmedge wrote (None when it is one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, a 5000-digit int
        return f"is not JSON ({type(err).__name__}: {str(err)[:200]})"
    if not isinstance(data, dict):
        return f"is JSON but not an object (a {type(data).__name__}), expected {FORMAT!r}"
    if data.get("format") != FORMAT:
        return f"has format {str(data.get('format'))[:80]!r}, expected {FORMAT!r}"
    artifact = data.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("path"), str):
        return "has no valid artifact.path"
    files = artifact.get("files")
    if not isinstance(files, list) or not files or not all(_entry_ok(e) for e in files):
        return "has no valid artifact.files list (path, bytes, sha256 per file)"
    if not isinstance(data.get("identity", {}), dict):
        return "has an identity that is not an object"
    return None


def _entry_ok(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and "/" not in entry["path"]
        and entry["path"] not in ("", ".", "..")
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("bytes"), int)
    )


def verified_artifact(directory: Path, manifest: dict[str, Any]) -> Path:
    """The artifact's main file, after checking every file still matches its sha256."""
    entry = manifest["artifact"]
    for item in entry["files"]:
        path = directory / str(item["path"])
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} listed in the manifest is missing")
        if sha256_file(path) != item["sha256"]:
            raise ArtifactError(
                f"artifact file {path} does not match the sha256 in its manifest: it was "
                "changed after the build",
                hint="an artifact is not edited in place; change the recipe and rebuild it "
                + (
                    "(a TensorRT profile comes from the recipe's 'axes': widen them there and "
                    "re-export)"
                    if item["path"] == "profile.json"
                    else "(or restore the file)"
                ),
            )
    return directory / str(entry["path"])


# What mmedge writes into an artifact directory besides the files its manifest lists (results
# of compare/bench/check/parity, a TensorRT engine built later on the device, a search record).
_SIDE_FILES = re.compile(
    r"^(?:(?:compare|parity|check|search|engine|profile|preprocess|report)\.json"
    r"|(?:bench|compare|tokenizer)-[\w.-]+\.json|recipe\.yaml|policy\.yaml"
    r"|model\.engine|timing\.cache|parity\.npz)$"
)


def check_output_dir(out: Path, identity: dict[str, str], force: bool) -> None:
    """Refuse to replace something else; rebuilding the same artifact is allowed, and
    ``--force`` replaces only a directory mmedge made: its manifest is one mmedge writes and
    every file in it is one mmedge writes. Anything else is refused, ``--force`` or not."""
    for parent in out.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(
                    f"output path {out} is under {parent}, which is a regular file",
                    hint="choose a path whose parents are directories",
                )
            break
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(
            f"output path {out} exists and is not a directory", hint="choose another path"
        )
    if not any(out.iterdir()):
        return
    manifest = out / MANIFEST
    problem = f"has no {MANIFEST}" if not manifest.is_file() else manifest_problem(manifest)
    if problem is not None and manifest.is_file():
        problem = f"has a {MANIFEST} that {problem}"
    if problem is None:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        listed = {e["path"] for e in data["artifact"]["files"]} | {MANIFEST}
        foreign = sorted(
            p.name
            for p in out.iterdir()
            if p.name not in listed and not (p.is_file() and _SIDE_FILES.match(p.name))
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            problem = f"holds files mmedge did not write ({shown})"
    if problem is not None:
        raise OutputExistsError(
            f"output directory {out} is not an mmedge artifact: it {problem}; mmedge never "
            "replaces a directory it did not make, --force or not",
            hint="choose another output path",
        )
    old = data.get("identity", {})
    if old != identity and not force:
        what = ", ".join(f"{k}={old.get(k)!r}" for k in identity if old.get(k) != identity[k])
        raise OutputExistsError(
            f"output directory {out} already holds a different artifact ({what})",
            hint="pass --force to replace it, or choose another output directory",
        )


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``out``, on any failure it vanishes."""
    from mmedge.workspace import staging_prefix, sweep_stale

    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent)  # what a killed build left here
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=staging_prefix(out.name, "staging")))
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
        from mmedge.workspace import staging_prefix

        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=staging_prefix(out.name, "old")))
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
