"""ONNX Runtime target: FP32 with graph optimizations saved, INT8 static QDQ or dynamic."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field

from mmedge.config import StrictConfig
from mmedge.errors import RecipeError, TargetBuildError, require
from mmedge.targets import BuildResult, Probe, Session, SessionConfig, TargetSpec

if TYPE_CHECKING:
    import torch

    from mmedge.data.datasets import DataSource
    from mmedge.quantize.space import SearchSpace
    from mmedge.recipe import Recipe

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OrtSession(Session):
    """A Session over ``onnxruntime.InferenceSession`` speaking dicts keyed by tensor name."""

    runtime = "onnxruntime"

    def __init__(
        self,
        path: Path | bytes,  # a file, or a serialized model (edited in memory)
        threads: int,
        optimization: str = "all",
        providers: list[str] | None = None,
        save_optimized: Path | None = None,
        profile: bool = False,
        extra_outputs: tuple[str, ...] = (),
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
        self._profile_dir: tempfile.TemporaryDirectory[str] | None = None
        if profile:
            self._profile_dir = tempfile.TemporaryDirectory(prefix="mmedge-ort-profile-")
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
        self._threads = threads
        try:
            source: str | bytes = str(path) if isinstance(path, Path) else path
            if extra_outputs:
                source = with_outputs(path, extra_outputs)
            self._sess = ort.InferenceSession(
                source, sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # ORT raises its own Fail/InvalidGraph types
            name = path.name if isinstance(path, Path) else "the edited model"
            if isinstance(path, Path):
                full_disk(path)  # a file cut short by a full disk reads as a corrupt protobuf
            raise TargetBuildError(f"ONNX Runtime cannot load {name}: {err}"[:600]) from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._sess.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, values, strict=True))

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], float | None]:
        run, names, inputs = self._sess.run, self.output_names, dict(feeds)

        def call() -> None:
            run(names, inputs)  # ONNX Runtime times nothing itself

        return call

    def layer_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        """From ONNX Runtime's own profiler: one ``<node>_kernel_time`` event per node and run."""
        if self._profile_dir is None:
            raise RuntimeError("layer_times needs a session created with profile=True")
        for _ in range(runs):
            self.run(feeds)
        events = json.loads(Path(self._sess.end_profiling()).read_text())
        times: dict[str, list[float]] = {}
        for event in events:
            name = str(event.get("name", ""))
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = name.removesuffix("_kernel_time")
                times.setdefault(node, []).append(float(event["dur"]) / 1e3)
        return {node: float(np.median(v)) for node, v in times.items()}

    def settings(self) -> dict[str, object]:
        return {
            "providers": self._sess.get_providers(),
            "threads": self._threads,
            "inference_precision": "as the graph says",
        }

    def close(self) -> None:
        # InferenceSession has no close(); dropping the reference frees it.
        self.__dict__.pop("_sess", None)
        if self._profile_dir is not None:
            self._profile_dir.cleanup()


class OnnxRuntimeConfig(StrictConfig):
    """``targets.onnxruntime``."""

    # "all" adds CPU-specific layouts, so the portable "extended" is the default.
    graph_optimization: Literal["basic", "extended", "all"] = Field(
        "extended",
        description="level baked into the saved FP32 artifact (sessions always run at all)",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="execution providers, in order of preference",
    )


def settings(recipe: Recipe) -> OnnxRuntimeConfig:
    return recipe.targets.of("onnxruntime", OnnxRuntimeConfig)


class OnnxRuntimeTarget:
    name: ClassVar[str] = "onnxruntime"

    def probe(self) -> Probe:
        try:
            import onnxruntime as ort
        except ImportError:
            return Probe(False, hint=f'pip install "mmedge[{SPEC.extra}]"')
        return Probe(True, ort.__version__, list(ort.get_available_providers()))

    def runtime_missing(self) -> str | None:
        return None

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool:
        return precision == "int8" and recipe.quantization.mode == "static"

    def build(
        self,
        onnx_path: Path | torch.nn.Module,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        assert isinstance(onnx_path, Path)  # SPEC.source is onnx
        require("onnxruntime", SPEC.extra)
        out = out_dir / "model.onnx"
        cfg = settings(recipe)
        if precision == "fp32":
            # Creating a session with optimized_model_filepath writes the optimized graph.
            OrtSession(
                onnx_path, 1, cfg.graph_optimization, cfg.providers, save_optimized=out
            ).close()
            return BuildResult([out], {"graph_optimization": cfg.graph_optimization})
        from mmedge.quantize.ort import quantize_onnx

        details = quantize_onnx(onnx_path, out, recipe, calib)
        return BuildResult([out], details)

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> OrtSession:
        if config.device is not None:
            raise RecipeError(
                f"onnxruntime has no --device ({config.device!r}); it runs on the execution "
                "providers in targets.onnxruntime.providers"
            )
        return OrtSession(
            artifact,
            config.threads,
            "all",
            settings(recipe).providers,
            profile=config.profile,
            extra_outputs=config.extra_outputs,
        ).expecting(recipe)

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> OrtSession:
        return self.load(artifact, recipe, precision, config)

    def search_space(self) -> SearchSpace:
        from mmedge.quantize.space import QdqSpace

        return QdqSpace()


SPEC = TargetSpec(
    name="onnxruntime",
    factory=OnnxRuntimeTarget,
    config=OnnxRuntimeConfig,
    precisions=("fp32", "int8"),
    extra="onnxruntime",
    packages=("onnxruntime",),
    summary="ONNX Runtime: an optimized ONNX graph, INT8 as static Q/DQ or dynamic",
    cpu_int8=True,
    default_variants=("onnxruntime-fp32", "onnxruntime-int8"),
    calibration_methods=True,
    dynamic_int8=True,
)


def with_outputs(path: Path | bytes, names: tuple[str, ...]) -> bytes:
    """The model with intermediate tensors added as graph outputs (shape left to the runtime).

    Loaded with its external data, serialized in memory: fine below protobuf's 2 GB limit,
    which is where per-branch parity is used (edge models).
    """
    import onnx

    model = onnx.load(str(path)) if isinstance(path, Path) else onnx.load_from_string(path)
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    data: bytes = model.SerializeToString()
    return data


def full_disk(path: Path, spare: int = 1 << 20) -> None:
    """Raise `SystemLimit` when the filesystem holding ``path`` is (nearly) full."""
    import shutil

    from mmedge.errors import SystemLimit

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < spare:
        raise SystemLimit(
            f"no space left on the device holding {path.parent} ({free} bytes free): "
            f"{path.name} was cut short",
            hint="free some space (or set TMPDIR to a bigger disk) and run again",
        )
