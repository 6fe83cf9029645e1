"""The sweep's content store: a finished step's outputs under the run engine's key for it.

``CACHE/<key>/`` holds the files a step wrote (paths relative to a run directory: ``pruned``,
``onnxruntime-int8``, ``onnxruntime-int8/compare.json``) and ``record.json`` (its summary).
An entry appears whole or not at all: it is assembled in ``CACHE/tmp/`` and renamed, so every
worker of a cluster sharing the directory sees either nothing or the finished step, and two
workers finishing the same step keep the first. Files are made read-only: they are hard-linked
into every trial that uses them, so a write in place would be a bug, and now a loud one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from mmedge.rundir import atomic_write_json

RECORD = "record.json"


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> dict[str, Any] | None:
        """The step's record, if it finished (and its files are all there)."""
        entry = self.entry(key)
        try:
            record: dict[str, Any] = json.loads((entry / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        files = record.pop("files", {})
        for name, size in files.items():  # a file deleted or cut by hand: no entry
            try:
                if (entry / name).stat().st_size != size:
                    return None
            except OSError:
                return None
        return record

    def put(self, key: str, source: Path, units: list[str], record: dict[str, Any]) -> bool:
        """Publish ``units`` (relative to ``source``) under ``key``; False when another worker
        published the same step first (ours is dropped: the two are the same content)."""
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for unit in units:
                _link_tree(source / unit, tmp / unit, read_only=True)
            files = {
                str(p.relative_to(tmp)): p.stat().st_size
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            atomic_write_json(tmp / RECORD, {**record, "units": units, "files": files})
            try:
                os.rename(tmp, self.entry(key))
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if self.get(key) is not None:
                    return False
                # A broken entry (files deleted by hand): moved aside, ours put in its place.
                # Another worker may be doing the same: whoever loses a rename re-reads.
                broken = self.root / "tmp" / f"broken.{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(self.entry(key), broken)
                    os.rename(tmp, self.entry(key))
                except OSError:
                    return False
                finally:
                    shutil.rmtree(broken, ignore_errors=True)
                return True
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def materialize(self, key: str, dest: Path) -> dict[str, Any]:
        """The entry's files linked into ``dest`` (a trial directory), replacing what is there."""
        record = self.get(key)
        if record is None:
            raise FileNotFoundError(f"no finished step {key[:12]} in {self.root}")
        for unit in record["units"]:
            # Linked aside and swapped in: an interruption leaves the old unit or the new one,
            # never an artifact directory with half its files.
            target = dest / unit
            aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
            _link_tree(self.entry(key) / unit, aside, read_only=False)
            if target.is_dir() and not target.is_symlink():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(target, old)
                os.rename(aside, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(aside, target)
        return record

    def clean_tmp(self) -> None:
        """Half-assembled entries of workers that died (a sweep holds the directory's lock)."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)


def _link_tree(src: Path, dst: Path, read_only: bool) -> None:
    """Hard links (copies across file systems) of a file or a directory tree."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        dst.mkdir(exist_ok=True)
        for child in src.iterdir():
            _link_tree(child, dst / child.name, read_only)
        return
    try:
        os.link(src, dst)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)
    if read_only:
        with contextlib.suppress(OSError):
            mode = os.stat(dst).st_mode
            os.chmod(dst, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
