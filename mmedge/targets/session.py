"""The Session base every target's runtime wrapper derives from, in the manner of Polygraphy's
runners: a context manager whose ``run()`` checks feeds in one place, then calls the backend.

The check is the recipe's contract without the data scans (names, dtypes, ranks, static dims,
named axes within their ranges): a wrong feed becomes a message naming the input, not a
backend's shape error from deep inside a kernel. Value checks (token ids, NaN) are the data
layer's, done once per shard rather than on every call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mmedge.errors import InputSpecError, RecipeError

if TYPE_CHECKING:
    from typing_extensions import Self

    from mmedge.recipe import Recipe

Feeds = Mapping[str, np.ndarray]


class Session(ABC):
    input_names: list[str]
    output_names: list[str]
    runtime: ClassVar[str]  # the runtime that executes it, for reports ("onnxruntime")
    # Whether layer_times() works (a profile=True session of this backend times its layers).
    profiles_layers: ClassVar[bool] = True
    _contract: Recipe | None = None

    def expecting(self, recipe: Recipe | None) -> Self:
        """Check every feed against ``recipe``'s inputs from now on (without: names only)."""
        self._contract = recipe
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def check(self, feeds: Feeds) -> None:
        if self._contract is not None:
            from mmedge.inputs import validate_feeds

            validate_feeds(feeds, self._contract, f"{type(self).__name__} feeds", values=False)
            return
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise InputSpecError(
                f"feeds do not match the artifact's inputs: missing {missing}, unexpected "
                f"{extra}; it takes {', '.join(self.input_names)}"
            )

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        self.check(feeds)
        return self._run(feeds)

    def prepare(self, feeds: Feeds) -> Callable[[], float | None]:
        """A call that runs one inference on ``feeds`` with the least per-call work (inputs bound
        once, outputs left in place), as benchmark_app and trtexec time it. It returns the
        runtime's own latency measurement in ms where the runtime makes one, else None."""
        self.check(feeds)
        return self._prepare(feeds)

    @abstractmethod
    def _run(self, feeds: Feeds) -> dict[str, np.ndarray]: ...

    def _prepare(self, feeds: Feeds) -> Callable[[], float | None]:
        run, inputs = self._run, dict(feeds)

        def call() -> None:
            run(inputs)

        return call

    def settings(self) -> dict[str, object]:
        """The effective device, precision, threads, streams... for reports."""
        return {}

    def layer_times(self, feeds: Feeds, runs: int) -> dict[str, float]:
        """Median milliseconds per layer (by node name) over ``runs`` runs; needs profile=True."""
        raise RecipeError(f"{type(self).__name__} cannot time layers (no per-layer profiler)")

    def close(self) -> None:  # noqa: B027 (most runtimes free on garbage collection)
        """Free the runtime's resources; the session is not used again."""
