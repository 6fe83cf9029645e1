"""Where failures that reach the CLI are classified: each to its documented exit code.

Library code raises `MmedgeError`s for what it can name itself. What is left arrives here: the
operating system's refusals (no space, read-only, a path under a file, a symlink loop), memory
exhaustion, and anything else. The first two get a message that names the path and the fix;
anything else is a bug: a short message, and the full traceback in a log file.
"""

from __future__ import annotations

import errno
import traceback
from pathlib import Path

from mmedge.errors import MmedgeError, SystemLimit

# errno -> (what happened, what to do)
_OS_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another --out"),
    errno.EROFS: ("the filesystem is read-only", "choose a writable directory"),
    errno.EACCES: ("permission denied", "check the path's permissions or choose another"),
    errno.EPERM: ("operation not permitted", "check the path's permissions or choose another"),
    errno.ENOTDIR: (
        "a part of the path is a regular file, not a directory",
        "choose a path whose parents are directories",
    ),
    errno.EISDIR: ("the path is a directory, not a file", "name a file"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "fix or remove the link"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer threads"),
    errno.ENOMEM: ("out of memory", "use a smaller batch, shape or data set"),
}


def os_error(err: OSError) -> SystemLimit | None:
    """A user-facing error for the operating system's refusals, None for others."""
    if err.errno not in _OS_ERRORS:
        return None
    what, fix = _OS_ERRORS[err.errno]
    where = err.filename if err.filename is not None else "a file mmedge was writing"
    return SystemLimit(f"{where}: {what}", hint=fix)


def classify(exc: BaseException, depth: int = 0) -> MmedgeError | None:
    """The documented error for ``exc``, or None when it is a bug."""
    if isinstance(exc, MmedgeError):
        return exc
    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, MemoryError):  # numpy's _ArrayMemoryError is one
        return SystemLimit(
            f"out of memory ({exc})",
            hint="use a smaller batch, shape, axis range or data set",
        )
    if isinstance(exc, RecursionError):
        return SystemLimit(
            "input nested too deeply to process (recursion limit)",
            hint="check the recipe or data file for deeply nested or self-referencing values",
        )
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc and depth < 8:  # (chains can loop)
        # An OSError wrapped by a library (ONNX's "INVALID_PROTOBUF" after a short write).
        found = classify(cause, depth + 1)
        if isinstance(found, SystemLimit):
            return found
    return None


def log_internal(exc: BaseException) -> Path | None:
    """Write the traceback of a bug to the log directory; None when even that fails."""
    from mmedge.logs import write_log

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return write_log("internal-error", text)
    except OSError:
        return None
