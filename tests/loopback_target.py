"""A target registered only by tests: the registry meta-test proves that the CLI, the recipe,
`run`, `doctor` and the manifest pick it up with no other file edited.

It is a real target, not a mock: its artifact is the FP32 ONNX with every output scaled by its
own setting ``gain`` (a graph edit), run by ONNX Runtime. With ``gain: 1`` it matches the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx
import torch
from pydantic import Field

from mmedge.config import StrictConfig
from mmedge.data.datasets import DataSource
from mmedge.quantize.space import QdqSpace, SearchSpace
from mmedge.recipe import Recipe
from mmedge.targets import BuildResult, Probe, Session, SessionConfig, TargetSpec
from mmedge.targets.onnxruntime import OrtSession


class LoopbackConfig(StrictConfig):
    gain: float = Field(1.0, description="every output is multiplied by this")


class LoopbackTarget:
    name: ClassVar[str] = "loopback"

    def probe(self) -> Probe:
        return Probe(True, "1.0", ["CPU"])

    def runtime_missing(self) -> str | None:
        return None

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool:
        return False

    def build(
        self,
        source: Path | torch.nn.Module,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        assert isinstance(source, Path)
        gain = recipe.targets.of("loopback", LoopbackConfig).gain
        model = onnx.load(str(source))
        graph = model.graph
        graph.initializer.append(onnx.numpy_helper.from_array(_scalar(gain), "loopback_gain"))
        for output in graph.output:
            raw = f"{output.name}_before_gain"
            for node in graph.node:
                node.output[:] = [raw if o == output.name else o for o in node.output]
            graph.node.append(onnx.helper.make_node("Mul", [raw, "loopback_gain"], [output.name]))
        out = out_dir / "model.onnx"
        onnx.save(model, str(out))
        return BuildResult([out], {"gain": gain})

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> Session:
        return OrtSession(
            artifact, config.threads, profile=config.profile, extra_outputs=config.extra_outputs
        )

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> Session:
        return self.load(artifact, recipe, precision, config)

    def search_space(self) -> SearchSpace:
        return QdqSpace()


def _scalar(value: float) -> object:
    import numpy as np

    return np.array(value, dtype=np.float32)


SPEC = TargetSpec(
    name="loopback",
    factory=LoopbackTarget,
    config=LoopbackConfig,
    precisions=("fp32",),
    extra="loopback",
    packages=("hypothesis",),  # installed here, and in no built-in target's list
    summary="a test target: the FP32 graph, outputs times gain",
    default_variants=("loopback-fp32",),
)
