"""The progress callbacks every long operation takes, one vocabulary for all of them.

The library reports; the CLI (mmedge/console.py) decides how to show it. Each callback is
optional and must not raise.
"""

from __future__ import annotations

from collections.abc import Callable

Status = Callable[[str], None]  # what is happening now: "exporting ONNX"
Count = Callable[[str, int, int], None]  # (what, done, total): a run's steps, a set's files
TrainStep = Callable[[int, int, int, int, float], None]  # (epoch, epochs, step, steps, loss)


def quiet(*_: object) -> None:
    """The callback that shows nothing."""
