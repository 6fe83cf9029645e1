"""OpenVINO target: IR (FP32, FP16-compressed, NNCF INT8), sessions in latency and throughput modes.

The IR is converted from the exported ONNX, the graph every target starts from: it has passed
the parity check, and its node names carry the module scopes that map layers to branches
(``benchmarks/results/openvino_source.md`` measures the alternative, converting the PyTorch
module directly). Sessions pin the inference precision to what the artifact says: left to the
plugin, an FP32 IR runs in bfloat16 on CPUs with AVX-512 BF16 or AMX.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from mmedge.config import PosInt, StrictConfig
from mmedge.errors import DeviceUnavailable, TargetBuildError, require
from mmedge.logs import captured_output, write_log
from mmedge.targets import (
    BuildResult,
    Probe,
    Session,
    SessionConfig,
    TargetSpec,
    ThroughputRun,
)

if TYPE_CHECKING:
    import torch

    from mmedge.data.datasets import DataSource
    from mmedge.quantize.space import SearchSpace
    from mmedge.recipe import Recipe


class NncfConfig(StrictConfig):
    """NNCF post-training quantization for OpenVINO (per-branch FP32: quantization.keep_fp32)."""

    # None: NNCF's default for the model type (mixed for transformers, performance otherwise).
    preset: Literal["performance", "mixed"] | None = None
    # auto: "transformer" when the graph has attention (a Softmax), else NNCF's default.
    model_type: Literal["auto", "transformer", "default"] = "auto"
    subset_size: PosInt = 300  # calibration samples NNCF uses (at most the set's size)
    fast_bias_correction: bool = True  # False: full bias correction (slower, sometimes better)
    # Regular expressions over OpenVINO op names to leave in float; one that matches nothing
    # is an error (NNCF validates it).
    ignored_patterns: list[str] = Field(default_factory=list)
    # 7-bit weights against u8 x s8 saturation on CPUs without VNNI. None: from quantization.isa
    # (enable without VNNI, disable with it); NNCF's own default is first_layer.
    overflow_fix: Literal["enable", "first_layer", "disable"] | None = None


class OpenVinoConfig(StrictConfig):
    """``targets.openvino``."""

    device: str = Field(
        "CPU", description="CPU, GPU, GPU.1, NPU, AUTO...; checked against the machine's"
    )
    # "device-default" lets the plugin choose: bf16 on CPUs with AVX-512 BF16 or AMX, so an
    # FP32 IR would not run FP32.
    inference_precision: Literal["f32", "bf16", "f16", "device-default"] | None = Field(
        None, description="precision float ops run in [default: what the artifact says]"
    )
    streams: PosInt | None = Field(
        None, description="throughput mode streams [default: the THROUGHPUT hint decides]"
    )
    requests: PosInt | None = Field(
        None, description="requests in flight [default: the compiled model's optimum]"
    )
    nncf: NncfConfig = Field(default_factory=NncfConfig)


def settings(recipe: Recipe) -> OpenVinoConfig:
    return recipe.targets.of("openvino", OpenVinoConfig)


def check_device(available: list[str], device: str) -> None:
    """``GPU`` matches ``GPU.0``; ``AUTO:GPU,CPU``/``HETERO:``/``MULTI:`` lists are checked item
    by item; plain ``AUTO`` picks from what is there."""
    kind, _, listed = device.partition(":")
    wanted = listed.split(",") if kind in ("AUTO", "MULTI", "HETERO") and listed else [device]
    if kind == "AUTO" and not listed:
        return
    for name in wanted:
        if not any(a == name or a.split(".")[0] == name for a in available):
            raise DeviceUnavailable(
                f"OpenVINO device '{name}' is not available on this machine; available: "
                f"{', '.join(available) or 'none'}",
                hint="pick one of those with --device or targets.openvino.device",
            )


def inference_precision(cfg: OpenVinoConfig, precision: str, capabilities: list[str]) -> str | None:
    """The INFERENCE_PRECISION_HINT to set, or None to leave the plugin's default."""
    if cfg.inference_precision == "device-default":
        return None
    if cfg.inference_precision is not None:
        return cfg.inference_precision
    return "f16" if precision == "fp16" and "FP16" in capabilities else "f32"


class OvSession(Session):
    """A compiled OpenVINO model speaking dicts keyed by tensor name."""

    runtime = "openvino"

    def __init__(
        self,
        xml: Path,
        recipe: Recipe,
        precision: str,
        config: SessionConfig,
        model: Any = None,  # an ov.Model already read (and edited) from ``xml``
    ) -> None:
        require("openvino", "openvino")
        import openvino as ov

        cfg = settings(recipe)
        core = ov.Core()
        self.device = config.device or cfg.device
        check_device(list(core.available_devices), self.device)
        props: dict[str, Any] = {"PERFORMANCE_HINT": config.mode.upper()}
        base = self.device.split(".")[0]
        if base in ("CPU", "GPU"):
            caps = list(core.get_property(self.device, "OPTIMIZATION_CAPABILITIES"))
            hint = inference_precision(cfg, precision, caps)
            if hint is not None:
                props["INFERENCE_PRECISION_HINT"] = hint
        if base == "CPU":
            props["INFERENCE_NUM_THREADS"] = config.threads
        if config.mode == "throughput" and cfg.streams is not None:
            props["NUM_STREAMS"] = cfg.streams
        if config.profile:
            props["PERF_COUNT"] = True
        try:
            with captured_output():
                model = core.read_model(str(xml)) if model is None else model
                for name in config.extra_outputs:
                    # A tensor the conversion renamed or fused away is simply not returned;
                    # the caller names what is missing.
                    with contextlib.suppress(RuntimeError):
                        model.add_outputs(name)
                if config.static_shapes:
                    model.reshape({k: list(v) for k, v in config.static_shapes.items()})
                self._compiled = core.compile_model(model, self.device, props)
        except (RuntimeError, ValueError) as err:  # OpenVINO reports failures as RuntimeError
            log = write_log("openvino-compile", traceback.format_exc())
            raise TargetBuildError(
                f"OpenVINO cannot compile {xml.name} for {self.device}: {err}"[:600],
                hint=f"full log: {log}",
            ) from None
        self._requests = cfg.requests
        self._request = self._compiled.create_infer_request()
        self._outputs = {_output_name(o, config.extra_outputs): o for o in self._compiled.outputs}
        self.input_names = [i.get_any_name() for i in self._compiled.inputs]
        self.output_names = list(self._outputs)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: no copy into the request's tensors, as benchmark_app does not copy.
        results = self._request.infer(dict(feeds), share_inputs=True)
        return {name: np.array(results[port]) for name, port in self._outputs.items()}

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], float | None]:
        import openvino as ov

        request = self._compiled.create_infer_request()
        for name, value in feeds.items():
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(value)))

        def call() -> float:
            request.infer()
            return float(request.latency)  # OpenVINO's own measure (what benchmark_app reports)

        return call

    def run_throughput(
        self,
        feeds: Mapping[str, np.ndarray],
        warmup: int,
        iterations: int,
        duration_s: float | None,
    ) -> ThroughputRun:
        """Keep every request busy; per-request latencies are OpenVINO's own measurements.

        The loop is benchmark_app's: take the next idle request, read the latency of the
        inference it just finished, start it again. No Python callback is installed: a callback
        runs on OpenVINO's executor threads and needs the GIL, and destroying the compiled model
        (with the GIL held) while such a thread waits for it deadlocks.
        """
        self.check(feeds)
        import openvino as ov

        optimum = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(self._compiled, self._requests or optimum)
        for request in queue:  # inputs set once per request, as benchmark_app does
            for name, value in feeds.items():
                request.set_tensor(name, ov.Tensor(np.ascontiguousarray(value)))
        _drive(queue, count=warmup, deadline=None)
        start = time.perf_counter()
        deadline = start + duration_s if duration_s is not None else None
        latencies = _drive(queue, count=iterations, deadline=deadline)
        total = time.perf_counter() - start
        return ThroughputRun(np.asarray(latencies), total, len(queue))

    def layer_times(self, feeds: Mapping[str, np.ndarray], runs: int) -> dict[str, float]:
        times: dict[str, list[float]] = {}
        for _ in range(runs):
            self._request.infer(dict(feeds), share_inputs=True)
            for info in self._request.profiling_info:
                if str(info.status).endswith("EXECUTED"):
                    ms = info.real_time.total_seconds() * 1e3
                    times.setdefault(info.node_name, []).append(ms)
        return {name: float(np.median(v)) for name, v in times.items()}

    def settings(self) -> dict[str, object]:
        found: dict[str, object] = {"device": self.device}
        for key, prop in (
            ("inference_precision", "INFERENCE_PRECISION_HINT"),
            ("performance_hint", "PERFORMANCE_HINT"),
            ("streams", "NUM_STREAMS"),
            ("threads", "INFERENCE_NUM_THREADS"),
            ("optimal_requests", "OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
        ):
            try:
                value = self._compiled.get_property(prop)
            except RuntimeError:  # not every device has every property
                continue
            # Element types print as "<Type: 'float32'>"; their names are what users type.
            found[key] = value.to_string() if hasattr(value, "to_string") else str(value)
        return found

    def close(self) -> None:
        self.__dict__.pop("_request", None)
        self.__dict__.pop("_compiled", None)


class OpenVinoTarget:
    name: ClassVar[str] = "openvino"

    def runtime_missing(self) -> str | None:
        return None

    def probe(self) -> Probe:
        try:
            import openvino as ov
        except ImportError:
            return Probe(False, hint=f'pip install "mmedge[{SPEC.extra}]"')
        return Probe(True, ov.get_version(), list(ov.Core().available_devices))

    def needs_calibration(self, precision: str, recipe: Recipe) -> bool:
        return precision == "int8"  # NNCF post-training quantization is always calibrated

    def build(
        self,
        onnx_path: Path | torch.nn.Module,
        recipe: Recipe,
        precision: str,
        out_dir: Path,
        calib: DataSource | None,
    ) -> BuildResult:
        assert isinstance(onnx_path, Path)  # SPEC.source is onnx
        require("openvino", SPEC.extra)
        import openvino as ov

        start = time.perf_counter()
        model = convert(onnx_path)
        details: dict[str, object] = {
            "converted_from": "onnx",
            "convert_seconds": round(time.perf_counter() - start, 3),
        }
        if precision == "int8":
            require("nncf", SPEC.extra)
            from mmedge.quantize.nncf import quantize_openvino

            assert calib is not None  # the pipeline opens calibration data for int8
            batch = recipe.calibration.batch if recipe.calibration else 8
            model, quant = quantize_openvino(model, recipe, calib, batch)
            details.update(quant)
        xml = out_dir / "model.xml"
        # FP16 compresses weights to half precision on disk; compute precision is the session's.
        ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        details["compress_to_fp16"] = precision == "fp16"
        return BuildResult([xml, xml.with_suffix(".bin")], details)

    def load(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> OvSession:
        return OvSession(artifact, recipe, precision, config).expecting(recipe)

    def load_here(
        self, artifact: Path, recipe: Recipe, precision: str, config: SessionConfig
    ) -> OvSession:
        return self.load(artifact, recipe, precision, config)

    def search_space(self) -> SearchSpace:
        from mmedge.quantize.space import NncfSpace

        return NncfSpace()


SPEC = TargetSpec(
    name="openvino",
    factory=OpenVinoTarget,
    config=OpenVinoConfig,
    precisions=("fp32", "fp16", "int8"),
    extra="openvino",
    packages=("openvino", "nncf"),
    summary="OpenVINO: IR for Intel CPUs, GPUs and NPUs, INT8 by NNCF",
    cpu_int8=True,
    default_variants=("openvino-fp32", "openvino-int8"),
)


def _drive(queue: Any, count: int, deadline: float | None) -> list[float]:
    """Start ``count`` inferences (or until ``deadline``); return their latencies in ms."""
    in_flight: set[int] = set()
    latencies: list[float] = []
    started = 0
    while (started < count) if deadline is None else (time.perf_counter() < deadline):
        idle = queue.get_idle_request_id()  # waits until a request is free
        if idle in in_flight:
            latencies.append(float(queue[idle].latency))  # its previous inference
        in_flight.add(idle)
        queue.start_async()
        started += 1
    queue.wait_all()
    latencies += [float(queue[i].latency) for i in in_flight]
    return latencies


def convert(onnx_path: Path) -> Any:
    """The ONNX model as an OpenVINO model, every op named after its place in the graph."""
    import openvino as ov

    with captured_output() as logged:
        try:
            return stable_names(ov.convert_model(str(onnx_path)))
        except Exception as err:  # the converter raises its own Error and RuntimeError types
            log = write_log("openvino-convert", "\n".join([*logged, traceback.format_exc()]))
            failed = _FAILED_OP.findall(str(err))  # "Conversion failed for AveragePool-18"
            checks = [c for c in _CHECK.findall(str(err)) if c != "false"]
            what = (
                f"conversion failed for {', '.join(dict.fromkeys(failed))}"
                + (f" (its check '{checks[0]}' failed)" if checks else "")
                if failed
                else f"{type(err).__name__}: {err}"
            )
            raise TargetBuildError(
                f"OpenVINO cannot convert the ONNX model: {what}"[:600],
                hint=f"full log: {log}",
            ) from None


_FAILED_OP = re.compile(r"Conversion failed for ([A-Za-z]+-\d+)")
_CHECK = re.compile(r"Check '([^']+)' failed")


_GENERATED = re.compile(r"[A-Za-z]+_\d+")


def stable_names(model: Any) -> Any:
    """Ops the converter creates (a LayerNorm fused into ``MVN_180523``) get numbered names
    that change from one conversion to the next, and no module scope. They are renamed after
    their first input's producer (``/text_encoder/layers.0/norm1/.../MVN``), in graph order: the
    same on every conversion, so an NNCF IgnoredScope can name them, and their branch is known
    for per-branch latency and parity."""
    taken = {op.get_friendly_name() for op in model.get_ops()}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if not _GENERATED.fullmatch(name) or op.get_input_size() == 0:
            continue
        producer = op.input_value(0).get_node().get_friendly_name()
        base = f"{producer}/{op.get_type_name()}"
        new, k = base, 1
        while new in taken:
            k += 1
            new = f"{base}_{k}"
        op.set_friendly_name(new)
        taken.add(new)
    return model


def _output_name(port: Any, wanted: tuple[str, ...]) -> str:
    """An output's name as the caller asked for it (a tensor may carry several names)."""
    names = port.get_names()
    return next((w for w in wanted if w in names), port.get_any_name())
