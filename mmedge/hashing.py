"""Content hashing, one implementation: artifact files, recipes, step keys, cached inputs.

Every hash is sha256 in hex; JSON is hashed in its canonical form (sorted keys), so the same
content gives the same key on every machine and Python version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(value: Any) -> str:
    """Of ``value``'s canonical JSON (sorted keys; anything else as its str)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, default=str).encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """Of named arrays: names, dtypes, shapes and bytes (C order), in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


_SEEN: dict[tuple[str, int, int], str] = {}


def _file_sha(file: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime): a run keys a dozen steps on
    the same eval set, which need not be read a dozen times."""
    stat = file.stat()
    signature = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if signature not in _SEEN:
        _SEEN[signature] = sha256_file(file)
    return _SEEN[signature]


def sha256_files(paths: list[Path]) -> str:
    """Of files (a directory: every file under it, by relative path)."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
                digest.update(_file_sha(file).encode())
    return digest.hexdigest()
