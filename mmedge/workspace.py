"""Scratch directories that a killed process does not leave behind for good, and the lock that
keeps two processes out of one run directory.

Ctrl-C and SIGTERM unwind normally and remove what they made. SIGKILL (and a power cut) cannot:
every scratch or staging directory carries the PID of its maker, and the next mmedge process
removes those whose maker is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mmedge.errors import RunLocked

LOCK = ".mmedge.lock"
_SCRATCH = re.compile(r"^mmedge-[a-z]+-(\d+)-")
_STAGING = re.compile(r"^\..+\.(?:staging|old)-(\d+)-")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OSError:
        return True  # cannot tell (e.g. Windows semantics): keep it
    return True


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory named for its maker's PID (see `sweep_stale`)."""
    return tempfile.TemporaryDirectory(prefix=f"mmedge-{kind}-{os.getpid()}-")


def staging_prefix(name: str, what: str) -> str:
    return f".{name}.{what}-{os.getpid()}-"


def sweep_stale(*directories: Path) -> list[Path]:
    """Remove scratch directories (in the system temp directory) and staging directories (in
    ``directories``) whose maker is no longer running; the paths removed."""
    removed: list[Path] = []
    places = [(Path(tempfile.gettempdir()), _SCRATCH), *((d, _STAGING) for d in directories)]
    for place, pattern in places:
        with contextlib.suppress(OSError):
            for entry in place.iterdir():
                match = pattern.match(entry.name)
                if match and not pid_alive(int(match.group(1))) and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


@contextlib.contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Hold ``directory`` for this process; another mmedge process gets `RunLocked`.

    An OS file lock (flock), so it is released when the process dies however it dies: no stale
    lock to clean. Where flock is missing (Windows), runs are not locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLocked(
                f"{directory} is in use by mmedge process {holder}",
                hint="wait for it to finish, or use another -o",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
