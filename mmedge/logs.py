"""Where backend and exporter logs go: a user-visible path that survives a failed step.

Failed steps remove their half-written outputs, so logs cannot live inside the output directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def log_dir() -> Path:
    path = Path(os.environ.get("MMEDGE_LOG_DIR", Path(tempfile.gettempdir()) / "mmedge-logs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_log(step: str, text: str) -> Path:
    path = log_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{step}.log"
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Collect what libraries log or print (ONNX Runtime's quantizer does both) instead of
    letting it reach the terminal, where it would break ``--json`` output on stdout; the caller
    decides whether to keep it in a log file."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    root.handlers = [_Keep()]
    root.setLevel(logging.INFO)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield records
    finally:
        root.handlers, root.level = saved, saved_level
        records.extend(line for line in printed.getvalue().splitlines() if line.strip())
