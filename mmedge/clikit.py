"""What every command shares: failures rendered with their exit codes, and common options."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import typer
from rich.markup import escape

try:  # Typer >= 0.29 vendors click: a device-side install has no click package
    from typer._click.exceptions import ClickException
except ImportError:  # older Typer runs on click itself
    from click.exceptions import ClickException  # type: ignore[assignment]

from mmedge import console
from mmedge.errors import INTERRUPTED_EXIT_CODE, TERMINATED_EXIT_CODE, Terminated

P = ParamSpec("P")
R = TypeVar("R")

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout only.")


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every failure into a message and its documented exit code, without a traceback:
    user errors and the system's refusals by `mmedge.failures.classify`, a bug with the path of
    its logged traceback (``MMEDGE_DEBUG=1`` re-raises it instead). SIGTERM is handled as
    Ctrl-C, so `timeout` and CI leave nothing half-written either."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from mmedge.failures import classify, log_internal

        with _sigterm_as_interrupt():
            try:
                return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, ClickException):
                raise
            except Terminated:
                console.err.print("[bold red]terminated:[/] nothing half-written was left behind")
                raise typer.Exit(TERMINATED_EXIT_CODE) from None
            except KeyboardInterrupt:
                console.err.print("[bold red]interrupted:[/] nothing half-written was left behind")
                raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
            except Exception as exc:
                found = classify(exc)
                if found is not None:
                    console.error(found)
                    raise typer.Exit(found.exit_code) from None
                if os.environ.get("MMEDGE_DEBUG"):
                    raise
                where = log_internal(exc)
                console.err.print(
                    f"[bold red]internal error:[/] {escape(type(exc).__name__)}: "
                    f"{escape(str(exc)[:500])}",
                    soft_wrap=True,
                )
                console.err.print(
                    f"this is a bug in mmedge: please report it with the traceback in {where}"
                    if where
                    else "this is a bug in mmedge: rerun with MMEDGE_DEBUG=1 for the traceback",
                    soft_wrap=True,
                )
                raise typer.Exit(1) from None

    return wrapper


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
