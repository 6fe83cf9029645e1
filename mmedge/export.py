"""torch → ONNX with named inputs and dynamic axes, then checks before anything else happens.

The exporter is a recipe choice. TorchScript is the default: it is what Olive, Optimum and
ModelOpt still use, it is ~10x faster here, and it names nodes after module scopes. dynamo is
PyTorch's default since 2.9; when the chosen exporter fails and ``export.fallback`` is on, the
other one is tried and the reason is recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mmedge.branches import normalize_node_names
from mmedge.errors import TargetBuildError
from mmedge.inputs import Feeds, Point, dummy_feeds
from mmedge.logs import write_log
from mmedge.model import forward_parameters, ordered_args, torch_runner
from mmedge.recipe import Recipe
from mmedge.workspace import scratch_dir

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ExportResult:
    exporter: str
    seconds: float
    fallback_reason: str | None = None
    parity: list[dict[str, Any]] = field(default_factory=list)


def trace_feeds(recipe: Recipe, static: frozenset[str] = frozenset()) -> Feeds:
    """Feeds at the opt shapes, with every dynamic axis of size 1 traced at 2 instead.

    Tracing at size 1 lets the exporter treat the axis as broadcastable and bake the 1 in.
    ``static`` axes are meant to be baked in, so they keep their opt size.
    """
    axes = {
        n: a if n in static or a.opt > 1 else a.model_copy(update={"opt": 2, "max": max(2, a.max)})
        for n, a in recipe.axes.items()
    }
    return dummy_feeds(recipe.model_copy(update={"axes": axes}), "opt")


def export_onnx(model: nn.Module, recipe: Recipe, out: Path) -> ExportResult:
    """Export, normalize node names, check, infer shapes and save to ``out``."""
    order = [recipe.export.exporter]
    if getattr(model, "exported_program", None) is not None:
        # A torch.export program goes to the dynamo exporter as it is: it carries its own
        # dynamic shapes, and TorchScript cannot trace it (it refuses train()/eval()).
        order = ["dynamo"]
    elif recipe.export.fallback:
        order.append("dynamo" if order[0] == "torchscript" else "torchscript")
    failures: list[str] = []
    for exporter in order:
        start = time.perf_counter()
        try:
            proto = _run_exporter(model, recipe, exporter)
        except Exception as err:  # exporters raise many types; each failure is recorded
            log = write_log(f"export-{exporter}", traceback.format_exc())
            failures.append(f"{exporter}: {type(err).__name__}: {_first_line(err)} (log: {log})")
            continue
        _finish(proto, recipe, out)
        reason = "; ".join(failures) or None
        return ExportResult(exporter, time.perf_counter() - start, fallback_reason=reason)
    raise TargetBuildError(
        "ONNX export failed:\n  " + "\n  ".join(failures),
        hint="try the other exporter (export.exporter) or a different opset (export.opset)",
    )


def _first_line(err: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # the dynamo exporter colours its text
    return text.splitlines()[0][:300] if text else ""


def _run_exporter(model: nn.Module, recipe: Recipe, exporter: str) -> onnx.ModelProto:

    import torch

    feeds = {k: torch.from_numpy(v) for k, v in trace_feeds(recipe).items()}
    args = ordered_args(model, feeds)
    # Names in the order of the args (forward's), whatever order the recipe lists them in.
    names = [p.name for p in forward_parameters(model) if p.name in feeds]
    kwargs: dict[str, Any] = {
        "input_names": names,
        "output_names": list(recipe.outputs),
        "opset_version": recipe.export.opset,
    }
    program = getattr(model, "exported_program", None)
    if program is not None:
        model, args = program, ()
        kwargs["opset_version"] = max(18, recipe.export.opset)
    elif exporter == "dynamo":
        # The dynamo exporter implements opset >= 18 only.
        kwargs["opset_version"] = max(18, recipe.export.opset)
        kwargs["dynamic_shapes"] = dynamic_shapes(recipe)
    else:
        kwargs["dynamic_axes"] = {
            name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            for name, spec in recipe.inputs.items()
        }
    # Exporters print progress and warnings; the user sees our summary, the log keeps details.
    with (
        scratch_dir("export") as tmp,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _quiet_logger("torch.onnx"),
    ):
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(
            model,
            args,
            None if exporter == "dynamo" else path,
            dynamo=exporter == "dynamo",
            **kwargs,
        )
        if exporter == "dynamo":
            assert program is not None
            proto: onnx.ModelProto = program.model_proto
            return proto
        return onnx.load(str(path))


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # The dynamo exporter logs through torch's own handlers (e.g. "torchvision is not
    # installed"), which bypass warnings filters and the root logger.
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


def dynamic_shapes(
    recipe: Recipe, static: frozenset[str] = frozenset()
) -> dict[str, dict[int, Any]]:
    """torch.export dims per input (by name); ``static`` axes are left out (fixed)."""
    import torch

    dims = {
        name: torch.export.Dim(name, min=rng.min, max=rng.max)
        for name, rng in recipe.axes.items()
        if name not in static
    }
    return {
        name: {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str) and d in dims}
        for name, spec in recipe.inputs.items()
    }


def _finish(proto: onnx.ModelProto, recipe: Recipe, out: Path) -> None:
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if sorted(got_in) != sorted(recipe.inputs) or got_out != list(recipe.outputs):
        raise TargetBuildError(
            f"exported graph has inputs {got_in} and outputs {got_out}, recipe declares "
            f"{list(recipe.inputs)} and {recipe.outputs}",
            hint="an input the model never uses is dropped by the exporter; remove it from the "
            "recipe, or check the forward signature",
        )
    _check_graph_dims(proto, recipe)
    normalize_node_names(proto)
    # The dynamo exporter annotates every node with its stack trace, FX node and class
    # hierarchy: half the bytes of a small model, debug data nothing downstream reads (the
    # module scope now lives in the node name), so the artifact does not ship it.
    for node in proto.graph.node:
        del node.metadata_props[:]
    try:
        onnx.checker.check_model(proto, full_check=False)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise TargetBuildError(f"exported ONNX does not pass onnx.checker: {err}") from None
    onnx.save(proto, str(out))


def _check_graph_dims(proto: onnx.ModelProto, recipe: Recipe) -> None:
    """Every recipe axis stays dynamic in the graph, and every static dimension matches."""
    for value in proto.graph.input:
        spec = recipe.inputs[value.name]
        dims = value.type.tensor_type.shape.dim
        for i, (dim, want) in enumerate(zip(dims, spec.shape, strict=False)):
            if isinstance(want, str) and dim.HasField("dim_value"):
                raise TargetBuildError(
                    f"exported graph fixes input '{value.name}' dim {i} to {dim.dim_value}, but "
                    f"the recipe declares it as dynamic axis '{want}' "
                    f"[{recipe.axes[want].min}, {recipe.axes[want].max}]",
                    hint="export the model (or torch.export program) with that dimension "
                    "dynamic, or make it static in the recipe",
                )
            if isinstance(want, int) and dim.HasField("dim_value") and dim.dim_value != want:
                raise TargetBuildError(
                    f"exported graph has input '{value.name}' dim {i} = {dim.dim_value}, "
                    f"the recipe declares {want}"
                )
        if len(dims) != len(spec.shape):
            raise TargetBuildError(
                f"exported graph has input '{value.name}' of rank {len(dims)}, the recipe "
                f"declares shape {spec.shape}"
            )


def check_parity(
    model: nn.Module, onnx_path: Path, recipe: Recipe, extra: Feeds | None = None
) -> list[dict[str, Any]]:
    """ONNX vs PyTorch at the min and max shapes (and on real data when given).

    Testing at shapes other than the traced one catches sizes the exporter baked in.
    """
    from mmedge.targets.onnxruntime import OrtSession

    session = OrtSession(onnx_path, threads=2, optimization="all")
    reference = torch_runner(model, recipe.outputs)
    points: tuple[Point, ...] = ("min", "max")
    cases: list[tuple[str, Feeds]] = [(p, dummy_feeds(recipe, p, seed=1)) for p in points]
    if extra is not None:
        cases.append(("calibration batch", extra))
    results = []
    with session:
        for label, feeds in cases:
            try:
                got = session.run(feeds)
            except Exception as err:  # ONNX Runtime's own error types
                raise TargetBuildError(
                    f"exported ONNX fails at {label} shapes: {_first_line(err)}"
                ) from None
            for name, want in reference(feeds).items():
                results.append(_parity_case(label, name, want, got[name], recipe))
    return results


def _parity_case(
    label: str, name: str, want: np.ndarray, got: np.ndarray, recipe: Recipe
) -> dict[str, Any]:
    if want.shape != got.shape:
        raise TargetBuildError(
            f"exported ONNX output '{name}' has shape {list(got.shape)} at {label} shapes, "
            f"PyTorch gives {list(want.shape)}: a dynamic axis was probably baked in"
        )
    err = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
    tol = recipe.export.atol + recipe.export.rtol * float(np.max(np.abs(want), initial=0.0))
    if not err <= tol:
        raise TargetBuildError(
            f"exported ONNX output '{name}' differs from PyTorch at {label} shapes: "
            f"max abs error {err:.3g} > tolerance {tol:.3g}",
            hint="raise export.atol/rtol if this is expected, or try the other exporter",
        )
    return {"case": label, "output": name, "max_abs": err, "tolerance": tol}
