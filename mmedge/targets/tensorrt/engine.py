"""Build a bundle's engine with the TensorRT found on this machine (Python API, else trtexec).

Version-aware by feature detection rather than version lists: the network is created strongly
typed (TensorRT 10 needs the flag; 11 accepts and ignores it, always typing strongly), and the
only precision flag used, FP16 for a weakly typed build of an FP32 bundle, is refused where the
installed TensorRT no longer has it (11). Profiles come from the bundle's profile.json, the
timing cache is read and written back, and the engine is saved with metadata (TensorRT version,
GPU, compute capability) that sessions check before loading it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmedge.branches import branch_of, scope_of_name
from mmedge.errors import ArtifactError, DependencyMissing, TargetBuildError
from mmedge.logs import write_log
from mmedge.rundir import atomic_write_json
from mmedge.targets.tensorrt.bundle import (
    ENGINE,
    ENGINE_META,
    SCRIPT,
    TIMING_CACHE,
    Profile,
    check_profile,
    read_profile,
)
from mmedge.targets.tensorrt.config import settings

if TYPE_CHECKING:
    from mmedge.recipe import Recipe
    from mmedge.targets.tensorrt.config import TensorRtConfig


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None. A bare ``import tensorrt`` is not proof: the
    ``tensorrt-stubs`` package (type stubs only) leaves an importable, empty namespace package."""
    try:
        import tensorrt as trt
    except Exception:  # ImportError, or a broken install (missing CUDA libraries: OSError...)
        return None
    version = getattr(trt, "__version__", None)
    return str(version) if version and hasattr(trt, "Builder") else None


def major(version: str) -> int:
    return int(version.split(".", 1)[0])


@dataclass(frozen=True)
class BuildOptions:
    weak_fp16: bool = False  # TensorRT 10 only: let TensorRT pick FP16 per layer (FP32 bundle)
    use_trtexec: bool = False  # even when the Python API is there


def engine_metadata(version: str, gpu: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    return {"tensorrt_version": version, **gpu, **extra}


def check_engine_compatible(built: dict[str, Any], here: dict[str, str]) -> None:
    """Refuse an engine built for another GPU or TensorRT version, naming both."""
    for key, what in (
        ("tensorrt_version", "TensorRT"),
        ("gpu", "GPU"),
        ("compute_capability", "compute capability"),
    ):
        if str(built.get(key)) != str(here.get(key)):
            raise ArtifactError(
                f"this engine was built with TensorRT {built.get('tensorrt_version')} for "
                f"{built.get('gpu')} (compute {built.get('compute_capability')}); this machine has "
                f"TensorRT {here.get('tensorrt_version')} on {here.get('gpu')} (compute "
                f"{here.get('compute_capability')}): the {what} differs",
                hint="rebuild it here: mmedge build DIR",
            )


def build_engine(directory: Path, recipe: Recipe, options: BuildOptions) -> dict[str, Any]:
    """Write model.engine and engine.json into ``directory``; return the metadata."""
    profile = read_profile(directory)
    check_profile(profile, recipe)
    version = tensorrt_version()
    if version is None or options.use_trtexec:
        return _build_with_trtexec(directory, version, options)
    from mmedge.targets.tensorrt.cuda import device_info

    gpu = device_info(settings(recipe).cuda_device)
    start = time.perf_counter()
    plan = _build_with_api(directory, recipe, profile, options)
    meta = engine_metadata(
        version,
        gpu,
        {
            "built_by": "tensorrt python api",
            "build_seconds": round(time.perf_counter() - start, 1),
            "weak_fp16": options.weak_fp16,
        },
    )
    # Metadata first: an engine file never exists without the record of what it is for.
    atomic_write_json(directory / ENGINE_META, meta)
    tmp = directory / f".{ENGINE}.tmp"
    try:
        tmp.write_bytes(plan)
        tmp.replace(directory / ENGINE)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _build_with_trtexec(
    directory: Path, version: str | None, options: BuildOptions
) -> dict[str, Any]:
    if shutil.which("trtexec") is None:
        raise DependencyMissing(
            "neither the TensorRT Python package nor trtexec is available on this machine",
            hint="build on the device that will run the engine (JetPack ships both), or install "
            'TensorRT: pip install "mmedge[tensorrt]"',
        )
    if options.weak_fp16:
        raise TargetBuildError(
            "--weak-fp16 needs the TensorRT Python API; build.sh is strongly typed"
        )
    done = subprocess.run(["bash", str(directory / SCRIPT)], capture_output=True, text=True)
    if done.returncode != 0:
        log = write_log("trtexec", done.stdout + done.stderr)
        raise TargetBuildError("trtexec failed to build the engine", hint=f"full log: {log}")
    meta: dict[str, Any] = json.loads((directory / ENGINE_META).read_text())
    return meta


def _build_with_api(
    directory: Path, recipe: Recipe, profile: Profile, options: BuildOptions
) -> bytes:
    import tensorrt as trt

    cfg: TensorRtConfig = settings(recipe)
    logger = collecting_logger()
    builder = trt.Builder(logger)
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if options.weak_fp16 or strong is None else 1 << int(strong)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(directory / "model.onnx")):
        raise TargetBuildError(_parser_errors(parser, recipe), hint=f"full log: {_log(logger)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    config.builder_optimization_level = cfg.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for profiling
    if options.weak_fp16:
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise TargetBuildError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (TensorRT 11 removed them)",
                hint="export --precision fp16 instead: an FP16 ONNX builds on every version",
            )
        config.set_flag(fp16)
    if cfg.sparse_weights:  # a 2:4 model from `mmedge prune`: let sparse tensor cores use it
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    cache_path = cfg.timing_cache or directory / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    for name, points in profile.items():
        opt.set_shape(
            name, trt.Dims(points["min"]), trt.Dims(points["opt"]), trt.Dims(points["max"])
        )
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TargetBuildError(
            "TensorRT could not build the engine", hint=f"full log: {_log(logger)}"
        )
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _parser_errors(parser: Any, recipe: Recipe) -> str:
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = str(error.node_name())
        branch = branch_of(scope_of_name(node), recipe.branches)
        lines.append(f"{node or '(graph)'} [{branch}] {error.node_operator()}: {error.desc()}")
    return "TensorRT's ONNX parser rejected the model:\n  " + "\n  ".join(lines)


def collecting_logger() -> Any:
    """A TensorRT logger that keeps messages for the log file instead of printing them."""
    import tensorrt as trt

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            self.lines.append(f"{severity}: {msg}")

    return Collecting()


def _log(logger: Any) -> Path:
    return write_log("tensorrt-build", "\n".join(logger.lines))
