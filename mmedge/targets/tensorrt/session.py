"""A TensorRT engine behind mmedge's Session: named tensors, CUDA events, per-layer times.

Uses the name-based tensor API of TensorRT 10+ (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); device memory and timing come from cuda-python (cuda.py). Inputs are
checked against the engine's optimization profile before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmedge.errors import ArtifactError, DependencyMissing
from mmedge.targets import Session
from mmedge.targets.tensorrt.bundle import ENGINE, ENGINE_META, check_shapes
from mmedge.targets.tensorrt.config import settings
from mmedge.targets.tensorrt.cuda import Buffer, Stream, Timer, device_info
from mmedge.targets.tensorrt.engine import (
    check_engine_compatible,
    collecting_logger,
    tensorrt_version,
)

if TYPE_CHECKING:
    from mmedge.recipe import Recipe
    from mmedge.targets import SessionConfig


class TrtSession(Session):
    runtime = "tensorrt"

    def __init__(
        self, directory: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> None:
        version = tensorrt_version()
        if version is None:
            raise DependencyMissing(
                "TensorRT is not installed here (or does not import): a TensorRT bundle's "
                "engine is built and run where TensorRT and a GPU are",
                hint='pip install "mmedge[tensorrt]" on that machine, then mmedge build '
                f"{directory}",
            )
        import tensorrt as trt

        if not (directory / ENGINE).is_file():
            raise ArtifactError(
                f"{directory} has no {ENGINE} yet",
                hint=f"build it on this device: mmedge build {directory}",
            )
        device = settings(recipe).cuda_device
        self.info = {"tensorrt_version": version, **device_info(device)}
        check_engine_compatible(json.loads((directory / ENGINE_META).read_text()), self.info)
        self.recipe = recipe
        self.precision = precision
        self._logger = collecting_logger()
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine((directory / ENGINE).read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT cannot deserialize {directory / ENGINE}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        # nptype is TensorRT's own DataType -> NumPy mapping (untyped in its stubs).
        self._dtype = {
            n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n)))  # type: ignore[no-untyped-call]
            for n in names
        }
        self._profile = {n: self._profile_shape(n) for n in self.input_names}
        self._stream = Stream(device)
        self._timer = Timer()
        self._buffers: dict[str, Buffer] = {}
        self._profiler: Any = None

    def _profile_shape(self, name: str) -> dict[str, list[int]]:
        low, opt, high = self._engine.get_tensor_profile_shape(name, 0)
        return {"min": _dims(low), "opt": _dims(opt), "max": _dims(high)}

    def _buffer(self, name: str, nbytes: int) -> Buffer:
        buf = self._buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self._buffers[name] = Buffer(nbytes)
        return buf

    def _bind(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Upload inputs, set shapes and addresses; return host arrays for the outputs."""
        check_shapes({k: tuple(v.shape) for k, v in feeds.items()}, self._profile, self.recipe)
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtype[name])  # e.g. int64 ids
            buf = self._buffer(name, array.nbytes)
            buf.upload(array, self._stream)
            self._context.set_input_shape(name, array.shape)
            self._context.set_tensor_address(name, buf.ptr)
        outputs = {}
        for name in self.output_names:
            shape = tuple(_dims(self._context.get_tensor_shape(name)))
            outputs[name] = np.empty(shape, dtype=self._dtype[name])
            self._context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes).ptr)
        return outputs

    def _execute(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise ArtifactError("TensorRT failed to execute the engine")

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._bind(feeds)
        self._execute()
        for name, array in outputs.items():
            self._buffers[name].download(array, self._stream)
        self._stream.synchronize()
        return outputs

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], float | None]:
        self._bind(feeds)

        def call() -> float:
            self._timer.begin(self._stream)
            self._execute()
            return self._timer.stop(self._stream)  # the GPU's own time for the inference

        return call

    def layer_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        import tensorrt as trt

        times: dict[str, list[float]] = {}

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.setdefault(layer_name, []).append(ms)

        self._profiler = Profiler()  # kept alive while the context holds it
        self._context.profiler = self._profiler
        for _ in range(runs):
            self.run(feeds)
        return {name: float(np.median(v)) for name, v in times.items()}

    def settings(self) -> dict[str, object]:
        return {**self.info, "precision": self.precision, "timer": "CUDA events"}

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        self._timer.close()
        self._stream.close()


def _dims(dims: Any) -> list[int]:
    """TensorRT Dims as a list (they index and have a length but do not iterate)."""
    return [int(dims[i]) for i in range(len(dims))]
