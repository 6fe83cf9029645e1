"""Errors a user can cause, each with the exit code the CLI returns for it.

Library code raises these and never prints or exits; `mmedge.cli` renders them in one place.
Anything that is not an `MmedgeError` is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar


class MmedgeError(Exception):
    """Base class: a message for the user plus an optional hint on what to do."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class RecipeError(MmedgeError):
    """Malformed YAML, unknown or mistyped recipe fields (messages carry field paths)."""

    exit_code = 3


class InputSpecError(MmedgeError):
    """Inputs or data (calibration, eval) that do not match the recipe's input specs."""

    exit_code = 4


class DependencyMissing(MmedgeError):
    """An optional backend or library is not installed."""

    exit_code = 5


class TargetBuildError(MmedgeError):
    """Export, quantization or a backend build failed."""

    exit_code = 6


class AccuracyError(MmedgeError):
    """A comparison gate failed; the artifact is kept and the report says where."""

    exit_code = 7


class ModelLoadError(MmedgeError):
    """The model, its factory or its weights could not be loaded."""

    exit_code = 8


class OutputExistsError(MmedgeError):
    """The output directory already holds something else; refused unless --force."""

    exit_code = 9


class ArtifactError(MmedgeError):
    """A directory given to compare/bench is not a finished mmedge artifact, or is corrupt."""

    exit_code = 10


class DeviceUnavailable(MmedgeError):
    """A requested device (an OpenVINO GPU or NPU, a CUDA GPU) is not present on this machine."""

    exit_code = 11


class RuleViolation(MmedgeError):
    """A graph breaks a backend's rules (TensorRT's); the build is refused unless allowed."""

    exit_code = 12


class SystemLimit(MmedgeError):
    """The filesystem or memory refused: no space left, read-only or permission denied, a path
    under a regular file, a symlink loop, or a declared size beyond the memory budget."""

    exit_code = 13


class RunLocked(MmedgeError):
    """Another live mmedge process holds the run directory."""

    exit_code = 14


class DeviceError(MmedgeError):
    """A fleet device: unknown name, unreachable, authentication refused, the link lost during
    a command, or no (matching) mmedge on it."""

    exit_code = 15


class HostKeyError(DeviceError):
    """A device's SSH host key is unknown or has changed: refused until the user accepts it."""

    exit_code = 16


class ClusterError(MmedgeError):
    """The Ray cluster of a sweep: cannot be joined, a node without this mmedge or without the
    sweep's files, or a task no node can hold."""

    exit_code = 17


class SweepFailed(MmedgeError):
    """A sweep finished, but some of its trials failed (each recorded with its error)."""

    exit_code = 18


# Ctrl-C and SIGTERM (what `timeout`, CI and service managers send): the shell convention,
# 128 + the signal's number.
INTERRUPTED_EXIT_CODE = 130
TERMINATED_EXIT_CODE = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so the same clean-up runs."""


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: the message says where its traceback was logged)",
    2: "usage error (unknown option, missing argument)",
    RecipeError.exit_code: "recipe error (malformed YAML, unknown or invalid field)",
    InputSpecError.exit_code: "input or data does not match the recipe's input specs",
    DependencyMissing.exit_code: "an optional dependency is missing (the hint says what to install)",
    TargetBuildError.exit_code: "export, quantization or backend build failed",
    AccuracyError.exit_code: "comparison gate failed (artifact kept)",
    ModelLoadError.exit_code: "model, factory or weights could not be loaded",
    OutputExistsError.exit_code: "output directory holds a different artifact (use --force)",
    ArtifactError.exit_code: "not a finished mmedge artifact directory, or a corrupt one",
    DeviceUnavailable.exit_code: "a requested device is not available on this machine",
    RuleViolation.exit_code: "the graph breaks TensorRT's rules (build refused; --allow-violations)",
    SystemLimit.exit_code: "no space, no permission, a bad path or a size over the memory budget",
    RunLocked.exit_code: "another mmedge process is working in the same run directory",
    DeviceError.exit_code: "a device is unknown, unreachable, refused the key, lost the link, "
    "or lacks a matching mmedge (mmedge device setup)",
    HostKeyError.exit_code: "a device's SSH host key is unknown or changed (refused)",
    ClusterError.exit_code: "the Ray cluster cannot be joined, or a node lacks this mmedge or "
    "the sweep's files",
    SweepFailed.exit_code: "a sweep finished with failed trials (sweep.json says why)",
    INTERRUPTED_EXIT_CODE: "interrupted (Ctrl-C); nothing half-written is left",
    TERMINATED_EXIT_CODE: "terminated (SIGTERM); cleaned up as for Ctrl-C",
}


def require(module: str, extra: str) -> None:
    """Fail with an install hint when an optional dependency cannot be imported.

    Importing (not just finding) also catches a broken install, e.g. missing native libraries.
    """
    import importlib

    try:
        importlib.import_module(module)
    except Exception as err:  # a broken install raises more than ImportError (OSError, ...)
        raise DependencyMissing(
            f"the '{module}' package is required for this step but cannot be imported "
            f"({type(err).__name__}: {err})",
            hint=f'pip install "mmedge[{extra}]" (reinstall it if it is installed)',
        ) from None
