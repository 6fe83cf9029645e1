"""ONNX Runtime target: FP32 with graph optimizations saved, INT8 static QDQ or dynamic."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mmedge.errors import TargetBuildError, require
from mmedge.targets import BuildResult, Probe

if TYPE_CHECKING:
    from mmedge.calibration import DataSource
    from mmedge.recipe import Recipe

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OrtSession:
    """A Session over ``onnxruntime.InferenceSession`` speaking dicts keyed by tensor name."""

    def __init__(
        self,
        path: Path,
        threads: int,
        optimization: str = "all",
        providers: list[str] | None = None,
        save_optimized: Path | None = None,
    ) -> None:
        require("onnxruntime", "onnxruntime")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[optimization])
        opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
        if save_optimized is not None:
            opts.optimized_model_filepath = str(save_optimized)
        try:
            self._sess = ort.InferenceSession(
                str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            raise TargetBuildError(f"ONNX Runtime cannot load {path.name}: {err}"[:600]) from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._sess.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, values, strict=True))

    @property
    def raw(self) -> object:
        """The underlying InferenceSession, for callers that time ``run`` directly."""
        return self._sess

    def close(self) -> None:
        # InferenceSession has no close(); dropping the reference frees it.
        self.__dict__.pop("_sess", None)


class OnnxRuntimeTarget:
    name: ClassVar[str] = "onnxruntime"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")
    extra: ClassVar[str] = "onnxruntime"

    def probe(self) -> Probe:
        try:
            import onnxruntime as ort
        except ImportError:
            return Probe(False, hint=f'pip install "mmedge[{self.extra}]"')
        return Probe(True, ort.__version__, list(ort.get_available_providers()))

    def build(
        self,
        onnx_path: Path,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        require("onnxruntime", self.extra)
        out = out_dir / "model.onnx"
        cfg = recipe.targets.onnxruntime
        if precision == "fp32":
            # Creating a session with optimized_model_filepath writes the optimized graph.
            OrtSession(
                onnx_path, 1, cfg.graph_optimization, cfg.providers, save_optimized=out
            ).close()
            return BuildResult(out, {"graph_optimization": cfg.graph_optimization})
        from mmedge.quantize.ort import quantize_onnx

        details = quantize_onnx(onnx_path, out, recipe, calib)
        return BuildResult(out, details)

    def load(self, artifact: Path, recipe: Recipe, threads: int) -> OrtSession:
        return OrtSession(artifact, threads, "all", recipe.targets.onnxruntime.providers)
