"""A session on ExecuTorch's Python runtime: the C++ runtime and XNNPACK kernels an app links."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.errors import ArtifactError, InputSpecError, TargetBuildError, require
from mmedge.targets import Session, SessionConfig
from mmedge.targets.executorch.lower import META, native_output


class ExecuTorchSession(Session):
    """Feeds by name in, outputs by name out; branch outputs on request (per-branch parity)."""

    runtime = "executorch"

    profiles_layers = False  # ETDump profiles need an ETRecord; not wired up here

    def __init__(self, artifact: Path, config: SessionConfig) -> None:
        require("executorch", "executorch")
        meta_path = artifact.with_name(META)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{meta_path} cannot be read: {err}") from None
        self.input_names = list(meta["inputs"])
        self.output_names = list(meta["outputs"])
        self._branches: list[str] = list(meta["branches"])
        self._static: dict[str, int] = dict(meta["static_axes"])
        # Branch outputs asked for, returned under the caller's names (SessionConfig).
        self._wanted = {b: n for b, n in config.branch_outputs.items() if b in self._branches}
        self._threads = config.threads
        with native_output() as log:
            try:
                from executorch.extension.pybindings import portable_lib
                from executorch.runtime import Runtime

                # One pool per process, like an app's: set for this session's thread count.
                portable_lib._unsafe_reset_threadpool(config.threads)
                program = Runtime.get().load_program(artifact)
                self._method = program.load_method("forward")
                meta = self._method.metadata
            except Exception as err:  # the runtime raises RuntimeError with an error code
                why = [line for line in log if "fail" in line.lower()][-2:]
                raise TargetBuildError(
                    f"ExecuTorch cannot load {artifact.name}: {err}"
                    + (f" ({'; '.join(why)})" if why else "")
                ) from None
        self._program = program
        # Memory planning bounds each dynamic dim; a larger batch runs in chunks of this many
        # samples (as an app feeding a bounded program would).
        self.max_batch = min(
            int(meta.input_tensor_meta(i).sizes()[0]) for i in range(meta.num_inputs())
        )

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        super().check(feeds)
        for name, spec in self._contract.inputs.items() if self._contract else ():
            for dim, size in zip(spec.shape, np.shape(feeds[name]), strict=False):
                if isinstance(dim, str) and dim in self._static and size != self._static[dim]:
                    raise InputSpecError(
                        f"input '{name}' axis '{dim}' is {size}; this program was built with "
                        f"'{dim}' fixed at {self._static[dim]} (targets.executorch.static_axes)"
                    )

    def _inputs(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        import torch

        return [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]

    def _chunks(self, feeds: Mapping[str, np.ndarray]) -> list[list[Any]]:
        batch = int(np.shape(next(iter(feeds.values())))[0])
        step = max(1, self.max_batch)
        return [
            self._inputs({n: a[start : start + step] for n, a in feeds.items()})
            for start in range(0, batch, step)
        ]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Program outputs: the model's, then each branch's (under the name asked for, once: a
        # fusion branch's output may be the model's own).
        names: list[str | None] = list(self.output_names)
        for branch in self._branches:
            name = self._wanted.get(branch)
            names.append(name if name not in names else None)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names if n}
        for inputs in self._chunks(feeds):
            values = self._method.execute(inputs)
            for k, name in enumerate(names):
                if name:  # copies: the runtime may reuse its output memory on the next call
                    parts[name].append(np.array(values[k]))
        return {n: np.concatenate(p) if len(p) > 1 else p[0] for n, p in parts.items()}

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], float | None]:
        execute, chunks = self._method.execute, self._chunks(feeds)

        def call() -> None:
            for inputs in chunks:  # one, unless the batch exceeds the program's bound
                execute(inputs)  # the runtime times nothing itself

        return call

    def settings(self) -> dict[str, object]:
        return {
            "runtime": "executorch",
            "delegate": "XNNPACK",
            "threads": self._threads,
            "max_batch": self.max_batch,
            "inference_precision": "as the program says",
        }

    def close(self) -> None:
        self.__dict__.pop("_method", None)
        self.__dict__.pop("_program", None)
