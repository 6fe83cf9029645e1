"""One sample's field could not be read or processed: collected per file, never fatal alone."""

from __future__ import annotations

from pathlib import Path


class SampleError(Exception):
    """A bad file or value; the builder collects these and summarizes them (exit code 4)."""


def naming(path: Path | str, err: BaseException) -> str:
    """``err``'s text, led by the file's path unless it already names it: Pillow and libsndfile
    mostly do, but not always (a truncated PNG says only "image file is truncated"), and a
    summary line must say which file to fix, whatever the source (a manifest row has no stem)."""
    text = str(err)
    return text if str(path) in text else f"{path}: {text}"
