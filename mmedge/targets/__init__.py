"""The Target protocol and the registry of backends.

Backends are imported lazily (``get_target``) so ``mmedge --help`` works with none installed and
a missing one becomes an install hint. Adding a target is one module (its config model, Target
class and ``SPEC``), one registry line and one test module: ``tests/test_targets_registry.py``
fails when a registered target has no tests, and proves that the CLI, the recipe, ``run``,
``doctor`` and the manifest all read the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel

from mmedge.errors import RecipeError

# The base every target's session derives from (re-exported: targets name it from here).
from mmedge.targets.session import Session as Session

if TYPE_CHECKING:
    import torch

    from mmedge.data.datasets import DataSource
    from mmedge.quantize.space import SearchSpace
    from mmedge.recipe import Recipe

Precision = Literal["fp32", "fp16", "int8"]
Mode = Literal["latency", "throughput"]


@dataclass(frozen=True)
class Probe:
    """What is installed; ``probe()`` never raises."""

    installed: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    hint: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What a build produced (in the staging dir): the artifact's files, main file first."""

    files: list[Path]
    details: dict[str, object]


@dataclass(frozen=True)
class SessionConfig:
    """How to run an artifact; a backend ignores what it has no notion of (and says so)."""

    threads: int = 2
    mode: Mode = "latency"
    device: str | None = None  # None: the recipe's device for this target
    # Compile for these shapes only (benchmarks, as benchmark_app and trtexec do); None keeps
    # the recipe's dynamic axes.
    static_shapes: dict[str, tuple[int, ...]] | None = None
    profile: bool = False  # collect per-layer times (costs some speed)
    # Intermediate tensors to return as extra outputs (per-branch parity: branch embeddings).
    extra_outputs: tuple[str, ...] = ()
    # The same, for runtimes without ONNX tensor names: branch -> the name to return its
    # output under (an ExecuTorch program returns branch outputs after the model's).
    branch_outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ThroughputRun:
    latencies_ms: np.ndarray  # per completed request
    total_s: float  # wall time from the first request to the last completion
    requests: int  # requests kept in flight


@runtime_checkable
class ThroughputSession(Protocol):
    """A session that can keep several requests in flight (OpenVINO's async API)."""

    def run_throughput(
        self,
        feeds: Mapping[str, np.ndarray],
        warmup: int,
        iterations: int,
        duration_s: float | None,
    ) -> ThroughputRun: ...


class Target(Protocol):
    name: ClassVar[str]

    def probe(self) -> Probe: ...

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool: ...

    def build(
        self,
        source: Path | torch.nn.Module,  # the FP32 ONNX, or the model (TargetSpec.source)
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult: ...

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> Session: ...

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> Session:
        """A session on this machine: the backend's own where it runs here, else what this
        machine can run of the artifact (a TensorRT bundle's graph in ONNX Runtime)."""
        ...

    def runtime_missing(self) -> str | None:
        """Why this machine cannot run the artifacts in the target's own runtime (None: it
        can). A target can be installed for building while its runtime lives on the device."""
        ...

    def search_space(self) -> SearchSpace:
        """What `quantize --auto` may change for this target (mmedge/quantize/space.py)."""
        ...


@runtime_checkable
class OnDeviceTarget(Target, Protocol):
    """A target whose bundle carries its own parity set (TargetSpec.on_device)."""

    def recorded_reference(
        self, directory: Path, recipe: Recipe
    ) -> tuple[DataSource, Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]]:
        """The bundle's recorded inputs, and a runner returning their recorded FP32 outputs."""
        ...


# Name -> "module:SPEC". A target is one module holding its TargetSpec (config model, Target
# class, what it needs); installed packages may add more through the ``mmedge.targets`` entry
# point group (``name = "package.module:SPEC"``). Specs load on first use, backends only when a
# target is used: ``mmedge --help`` works with none installed.
REGISTRY: dict[str, str] = {
    "onnxruntime": "mmedge.targets.onnxruntime:SPEC",
    "openvino": "mmedge.targets.openvino:SPEC",
    "tensorrt": "mmedge.targets.tensorrt:SPEC",
    "executorch": "mmedge.targets.executorch:SPEC",
}

ENTRY_POINT_GROUP = "mmedge.targets"


@dataclass(frozen=True)
class TargetSpec:
    """Everything mmedge needs to know about a target, owned by the target's module: the recipe's
    ``targets.<name>`` section, the CLI's choices, ``run``'s variants, ``doctor`` and the
    manifest's versions are all read from here."""

    name: str
    factory: Callable[[], Target]
    # The recipe's ``targets.<name>`` section; its fields are also `-O FIELD=VALUE` on the CLI.
    config: type[BaseModel]
    precisions: tuple[str, ...]
    extra: str  # the pip extra that installs the backend: pip install "mmedge[EXTRA]"
    packages: tuple[str, ...]  # import names: doctor reports them, manifests record versions
    summary: str  # one line for --help and doctor
    # What build() starts from: the exported FP32 ONNX, or the PyTorch model itself.
    source: Literal["onnx", "torch"] = "onnx"
    # Its artifacts are bundles whose runtime artifact is built on the device (mmedge build):
    # compare there uses the bundle's recorded inputs and outputs, not the recipe's data.
    on_device: bool = False
    # Its INT8 artifacts run on the CPU's integer kernels, whose numerics differ between ISA
    # classes (quantization.isa): compare and bench warn on a mismatch.
    cpu_int8: bool = False
    default_variants: tuple[str, ...] = ()  # in run.variants when the recipe names none
    # quantize's --method / --mode dynamic apply to this target's INT8.
    calibration_methods: bool = False
    dynamic_int8: bool = False
    # "module:function" checking an artifact's graph against the backend's rules
    # (``mmedge check``): (directory) -> list of findings.
    rules: str | None = None


_SPECS: dict[str, TargetSpec] = {}  # resolved, by "module:SPEC" path


def _resolve(path: str) -> TargetSpec:
    if path not in _SPECS:
        module_name, attr = path.split(":")
        found = getattr(importlib.import_module(module_name), attr)
        if not isinstance(found, TargetSpec):
            raise TypeError(f"{path} is a {type(found).__name__}, not a TargetSpec")
        _SPECS[path] = found
    return _SPECS[path]


def _entry_points() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def specs() -> dict[str, TargetSpec]:
    """Every registered target, built-in first, then installed plugins."""
    paths = {**_entry_points(), **REGISTRY}
    order = list(REGISTRY) + sorted(set(paths) - set(REGISTRY))
    return {name: _resolve(paths[name]) for name in order}


def target_names() -> list[str]:
    return list(specs())


def target_spec(name: str) -> TargetSpec:
    found = specs()
    if name not in found:
        raise RecipeError(f"unknown target {name!r}; available: {', '.join(found)}")
    return found[name]


def get_target(name: str) -> Target:
    return target_spec(name).factory()


def variant_names() -> list[str]:
    """Every TARGET-PRECISION a recipe's run.variants may list."""
    return [f"{s.name}-{p}" for s in specs().values() for p in s.precisions]


def default_variants() -> list[str]:
    return [v for s in specs().values() for v in s.default_variants]


def package_names() -> list[str]:
    """Import names of every target's backend packages, without repeats."""
    return list(dict.fromkeys(p for s in specs().values() for p in s.packages))
