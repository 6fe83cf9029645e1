"""The Target protocol and the registry of backends.

Backends are imported lazily (``get_target``) so ``mmedge --help`` works with none installed and
a missing one becomes an install hint. Adding a target is one module, one registry line and one
test module (``tests/test_targets_registry.py`` fails when a registered target has no tests).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from mmedge.errors import RecipeError

if TYPE_CHECKING:
    from mmedge.calibration import DataSource
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


@dataclass(frozen=True)
class ThroughputRun:
    latencies_ms: np.ndarray  # per completed request
    total_s: float  # wall time from the first request to the last completion
    requests: int  # requests kept in flight


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], float | None]:
        """A call that runs one inference on ``feeds`` with the least per-call work (inputs bound
        once, outputs left in place), as benchmark_app and trtexec time it. It returns the
        runtime's own latency measurement in ms where the runtime makes one, else None."""
        ...

    def settings(self) -> dict[str, object]:
        """The effective device, precision, threads, streams... for reports."""
        ...

    def layer_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        """Median milliseconds per layer (by node name) over ``runs`` runs; needs profile=True."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ThroughputSession(Session, Protocol):
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
    precisions: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]  # the pip extra that installs this backend
    # Its INT8 artifacts run on the CPU's integer kernels, whose numerics differ between ISA
    # classes (quantization.isa): compare and bench warn on a mismatch.
    cpu_int8: ClassVar[bool]

    def probe(self) -> Probe: ...

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool: ...

    def build(
        self,
        onnx_path: Path,
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

    def search_space(self) -> SearchSpace:
        """What `quantize --auto` may change for this target (mmedge/quantize/space.py)."""
        ...


REGISTRY: dict[str, str] = {
    "onnxruntime": "mmedge.targets.onnxruntime:OnnxRuntimeTarget",
    "openvino": "mmedge.targets.openvino:OpenVinoTarget",
    "tensorrt": "mmedge.targets.tensorrt:TensorRtTarget",
}


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise RecipeError(f"unknown target {name!r}; available: {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    target: Target = getattr(importlib.import_module(module_name), cls_name)()
    return target
