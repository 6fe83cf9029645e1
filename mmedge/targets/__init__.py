"""The Target protocol and the registry of backends.

Backends are imported lazily (``get_target``) so ``mmedge --help`` works with none installed and
a missing one becomes an install hint. Adding a target is one module, one registry line and one
test module (``tests/test_targets_registry.py`` fails when a registered target has no tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np

from mmedge.errors import RecipeError

if TYPE_CHECKING:
    from mmedge.calibration import DataSource
    from mmedge.recipe import Recipe

Precision = Literal["fp32", "int8"]


@dataclass(frozen=True)
class Probe:
    """What is installed; ``probe()`` never raises."""

    installed: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    hint: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the artifact file (in the staging dir) and step details."""

    artifact: Path
    details: dict[str, object]


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class Target(Protocol):
    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]  # the pip extra that installs this backend

    def probe(self) -> Probe: ...

    def build(
        self,
        onnx_path: Path,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult: ...

    def load(self, artifact: Path, recipe: Recipe, threads: int) -> Session: ...


REGISTRY: dict[str, str] = {
    "onnxruntime": "mmedge.targets.onnxruntime:OnnxRuntimeTarget",
}


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise RecipeError(f"unknown target {name!r}; available: {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    target: Target = getattr(importlib.import_module(module_name), cls_name)()
    return target
