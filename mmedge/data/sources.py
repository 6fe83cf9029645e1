"""Where raw samples come from: a folder per field, or a CSV/JSONL manifest pairing them.

Folder layout: ``SOURCE/<field>/<id>.<ext>`` for every field of the recipe's ``preprocess``
section, paired by file stem, plus an optional ``SOURCE/labels.csv`` (``id,label``). Manifest:
one row per sample, a column per field (file paths relative to the manifest; text fields hold
the text itself), optional ``id`` and ``label`` columns.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mmedge.errors import InputSpecError
from mmedge.preprocess.spec import PrepSpec

EXTENSIONS = {
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "text": {".txt"},
    "audio": {".wav", ".flac", ".ogg"},
    "array": {".npy"},
}


@dataclass(frozen=True, slots=True)
class SampleRef:
    """Kept small (plain strings, no Path objects): the listing is the one thing a build holds
    per sample, so it decides how memory grows with the number of files."""

    id: str
    values: tuple[str | None, ...]  # per field (Source.fields): a file, inline text, or None
    label: str | None


@dataclass(frozen=True)
class Source:
    kind: str  # "folder" or "manifest"
    path: Path
    fields: tuple[str, ...]
    inline: frozenset[str]  # fields whose values are the text itself, not a file
    samples: list[SampleRef]
    problems: list[str]  # per-file problems found while listing (collected, not fatal here)

    def values(self, ref: SampleRef) -> dict[str, Path | str | None]:
        """A sample's fields as the preprocessor takes them: files as paths, text as text."""
        return {
            f: v if v is None or f in self.inline else Path(v)
            for f, v in zip(self.fields, ref.values, strict=True)
        }


def read_source(path: Path, specs: Mapping[str, PrepSpec]) -> Source:
    if not path.exists():
        broken = _unfollowable(path)  # exists() says False for a symlink loop too
        raise InputSpecError(
            f"calibration source {path} is {broken}"
            if broken
            else f"calibration source not found: {path}"
        )
    if path.is_dir():
        source = _folder(path, specs)
    elif path.suffix.lower() in (".csv", ".jsonl"):
        source = _manifest(path, specs)
    else:
        raise InputSpecError(
            f"calibration source {path}: expected a folder (one sub-folder per field) or a "
            ".csv/.jsonl manifest"
        )
    if not source.samples and not source.problems:
        raise InputSpecError(
            f"calibration source {path} holds no samples",
            hint=_layout_hint(specs) if source.kind == "folder" else "the manifest has no rows",
        )
    return source


def _layout_hint(specs: Mapping[str, PrepSpec]) -> str:
    parts = [f"{name}/*{sorted(EXTENSIONS[s.kind])[0]}" for name, s in specs.items()]
    return "expected sub-folders " + ", ".join(parts) + " (files paired by name)"


def _folder(root: Path, specs: Mapping[str, PrepSpec]) -> Source:
    names = list(specs)
    files: dict[str, list[str | None]] = {}  # stem -> path per field (strings: see SampleRef)
    problems: list[str] = []
    for position, (field, spec) in enumerate(specs.items()):
        folder = root / field
        broken = _unfollowable(folder)
        if broken:  # is_dir() says False: it would pass for an absent field, zero-filled
            raise InputSpecError(
                f"calibration source {root}: '{field}/' is {broken}; expected the folder of "
                f"{field} files",
                hint=_layout_hint(specs),
            )
        if not folder.is_dir():
            if spec.missing == "zeros":
                continue
            raise InputSpecError(
                f"calibration source {root} has no '{field}/' folder, and the model needs "
                f"{field} (preprocess.{field}.missing: error)",
                hint=_layout_hint(specs),
            )
        found, unusable = _list_files(folder)
        problems += unusable
        for name, path in found:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in EXTENSIONS[spec.kind]:
                expected = ", ".join(sorted(EXTENSIONS[spec.kind]))
                problems.append(f"{path}: not a {spec.kind} file (expected {expected})")
                continue
            slots = files.setdefault(stem, [None] * len(names))
            if slots[position] is not None:
                problems.append(f"{path}: a second {field} file for sample '{stem}'")
                continue
            slots[position] = path
    labels_csv = root / "labels.csv"
    broken = _unfollowable(labels_csv)
    if broken:  # is_file() says False: the set would be built without its labels
        raise InputSpecError(f"{labels_csv} is {broken}; expected a CSV with columns id,label")
    labels = _labels_csv(labels_csv) if labels_csv.is_file() else {}
    samples = [
        SampleRef(stem, tuple(slots), labels.get(stem)) for stem, slots in sorted(files.items())
    ]
    return Source("folder", root, tuple(names), frozenset(), samples, problems)


def _list_files(folder: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """``(name, path)`` of the files in ``folder`` by name (hidden ones left out), and a problem
    for each entry that cannot be followed.

    Symlinks are followed (a folder may link to data kept elsewhere), and that is where listing
    fails: ``DirEntry.is_file()`` raises on a symlink loop (ELOOP) and quietly says False for a
    dangling link, a crash or a sample dropped without a word. Both are reported by path
    instead, and so is a link to this folder or one above it (a loop, were it walked).
    Sub-folders are otherwise ignored, as ever: the listing does not recurse.
    """
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as err:
        raise InputSpecError(f"cannot list {folder}: {err.strerror or err}") from None
    files: list[tuple[str, str]] = []
    problems: list[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_symlink():
                problem = _unfollowable(entry.path) or _links_above(entry, folder)
                if problem:
                    problems.append(f"{entry.path}: {problem}")
                    continue
            if entry.is_file():
                files.append((entry.name, entry.path))
        except OSError as err:  # a target that cannot be stat'ed (permissions)
            problems.append(f"{entry.path}: cannot read it ({err.strerror or err})")
    return files, problems


def _unfollowable(path: str | Path) -> str | None:
    """Why the symlink ``path`` cannot be followed (a loop, a missing target), or None when it
    can or is no symlink. ``exists()``/``is_dir()``/``is_file()`` just say False for both."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop (following it never reaches a file or folder)"
        if err.errno == errno.ENOENT:
            return f"a broken symlink (its target {os.readlink(path)!r} does not exist)"
        return f"a symlink that cannot be followed ({err.strerror or err})"
    return None


def _links_above(entry: os.DirEntry[str], folder: Path) -> str | None:
    """A symlink to ``folder`` itself or a folder above it: a loop for anything that walks it."""
    if not entry.is_dir():
        return None
    target = os.path.realpath(entry.path)
    if Path(os.path.realpath(folder)).is_relative_to(target):
        return f"a symlink loop (it links to {target}, a folder that holds it)"
    return None


def _labels_csv(path: Path) -> dict[str, str]:
    rows = list(_csv_rows(path))
    if rows and not {"id", "label"} <= set(rows[0]):
        raise InputSpecError(f"{path}: expected columns 'id' and 'label', got {sorted(rows[0])}")
    return {str(r["id"]): str(r["label"]) for r in rows}


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputSpecError(f"cannot read {path}: {err}") from None


def _jsonl_rows(path: Path) -> Iterator[dict[str, object]]:
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise InputSpecError(f"{path}, line {number}: not JSON ({err})") from None
                if not isinstance(row, dict):
                    raise InputSpecError(f"{path}, line {number}: expected a JSON object")
                yield row
    except (OSError, UnicodeDecodeError) as err:
        raise InputSpecError(f"cannot read {path}: {err}") from None


def _manifest(path: Path, specs: Mapping[str, PrepSpec]) -> Source:
    rows: Iterator[Mapping[str, object]] = (
        _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    )
    base = path.parent
    samples: list[SampleRef] = []
    for number, row in enumerate(rows, 1):
        if number == 1:
            absent = [f for f, s in specs.items() if f not in row and s.missing != "zeros"]
            if absent:
                raise InputSpecError(
                    f"manifest {path} has no column for field(s) {', '.join(absent)} "
                    f"(columns: {', '.join(map(str, row))})"
                )
        values: list[str | None] = []
        for field, spec in specs.items():
            raw = row.get(field)
            text = "" if raw is None else str(raw)
            if not text.strip():
                values.append(None)
            elif spec.kind == "text":
                values.append(text)  # inline: the manifest holds the text itself
            else:
                file = Path(text).expanduser()
                values.append(str(file if file.is_absolute() else base / file))
        label = row.get("label")
        ident = str(row.get("id") or f"row-{number}")
        samples.append(SampleRef(ident, tuple(values), None if label in (None, "") else str(label)))
    inline = frozenset(f for f, s in specs.items() if s.kind == "text")
    return Source("manifest", path, tuple(specs), inline, samples, [])
