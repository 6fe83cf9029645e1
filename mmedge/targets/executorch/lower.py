"""PyTorch model → ``torch.export`` → (PT2E INT8) → XNNPACK-delegated ExecuTorch program.

The program's forward takes the recipe's inputs positionally (in ``model.json``'s order) and
returns the recipe's outputs, then, when ``branch_outputs`` is on, each branch's output: the
per-branch parity of the runtime's own numerics needs them, and they are a few small tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmedge.errors import RecipeError, TargetBuildError
from mmedge.logs import captured_output, write_log

if TYPE_CHECKING:
    from torch import nn

    from mmedge.data.datasets import DataSource
    from mmedge.recipe import Recipe
    from mmedge.targets import BuildResult
    from mmedge.targets.executorch import ExecuTorchConfig

PROGRAM = "model.pte"
META = "model.json"


@contextlib.contextmanager
def native_output() -> Iterator[list[str]]:
    """ExecuTorch's C++ runtime writes to the C library's stderr (cpuinfo probes, threadpool
    resets) and torchao logs optional kernels it cannot load: kept out of the terminal, where
    they would drown mmedge's own messages (and break --json), and handed to the caller."""
    lines: list[str] = []
    libc = ctypes.CDLL(None)
    # The runtime's pybind11 layer may route C++ streams to Python's sys.stderr instead.
    routed = io.StringIO()
    with (
        tempfile.TemporaryFile(mode="w+b") as sink,
        captured_output() as logged,
        contextlib.redirect_stderr(routed),
    ):
        libc.fflush(None)
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            libc.fflush(None)  # C stdio may hold lines back when stderr is not a terminal
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()
    lines += logged + routed.getvalue().splitlines()


def build_program(
    model: nn.Module,
    recipe: Recipe,
    precision: str,
    out_dir: Path,
    calib: DataSource | None,
    cfg: ExecuTorchConfig,
) -> BuildResult:
    import torch

    from mmedge.targets import BuildResult

    if precision == "int8" and recipe.quantization.mode != "static":
        raise RecipeError(
            "executorch quantizes statically (PT2E, calibrated); set quantization.mode: static"
        )
    unknown = sorted(set(cfg.static_axes) - set(recipe.axes))
    if unknown:
        raise RecipeError(
            f"targets.executorch.static_axes names {unknown}, which are not axes of the recipe "
            f"(axes: {', '.join(recipe.axes)})"
        )
    wrapper = positional(model, recipe, cfg.branch_outputs)
    static = list(cfg.static_axes)
    details: dict[str, Any] = {}
    log: list[str] = []
    try:
        with native_output() as log, torch.no_grad():
            start = time.perf_counter()
            program, static = _export(wrapper, recipe, static)
            example = _example_inputs(recipe, wrapper.input_names, set(static))
            dynamic = _dynamic_shapes(recipe, wrapper.input_names, set(static))
            details["static_axes"] = static
            details["specialized_axes"] = [a for a in static if a not in cfg.static_axes]
            details["export_seconds"] = round(time.perf_counter() - start, 3)
            if precision == "int8":
                assert calib is not None  # the pipeline opens calibration data for int8
                start = time.perf_counter()
                quantized, details["quantize"] = _quantize(program, recipe, calib, cfg, wrapper)
                program = torch.export.export(quantized, example, dynamic_shapes=dynamic)
                details["quantize"]["seconds"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            buffer, details["delegation"] = _lower(program)
            details["lower_seconds"] = round(time.perf_counter() - start, 3)
    except (RecipeError, TargetBuildError):
        raise
    except Exception as err:  # torch.export and the lowering raise many types
        where = write_log("executorch-build", "\n".join([*log, traceback.format_exc()]))
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TargetBuildError(
            f"ExecuTorch cannot build the {precision} program: {first}"[:600],
            hint=f"full log: {where}",
        ) from None
    pte, meta = out_dir / PROGRAM, out_dir / META
    pte.write_bytes(buffer)
    record = {
        "inputs": wrapper.input_names,
        "outputs": list(recipe.outputs),
        "branches": wrapper.branch_names,
        "static_axes": {a: recipe.axes[a].opt for a in static},
    }
    meta.write_text(json.dumps(record, indent=2) + "\n")
    details["branch_outputs"] = wrapper.branch_names
    details["notes"] = _notes(details["delegation"], recipe, static)
    if details["specialized_axes"]:
        details["notes"].append(
            f"torch.export found the model's code fixes {details['specialized_axes']} (its "
            "constraints were violated as dynamic): the program takes only their opt size"
        )
    details["check"] = _check_program(pte, recipe, wrapper, example, precision)
    return BuildResult([pte, meta], details)


@dataclass
class Positional:
    """The module torch.export sees: inputs by position, outputs as one flat tuple."""

    module: nn.Module
    input_names: list[str]
    branch_names: list[str]  # branch outputs returned after the recipe's outputs


def positional(model: nn.Module, recipe: Recipe, branch_outputs: bool) -> Positional:
    from torch import nn

    from mmedge.model import forward_parameters

    names = [p.name for p in forward_parameters(model) if p.name in recipe.inputs]
    modules = dict(model.named_modules())
    # A branch's output is its module's, where the branch is one module (its boundary).
    boundaries = {
        branch: prefixes[0]
        for branch, prefixes in recipe.branches.items()
        if branch_outputs and len(prefixes) == 1 and prefixes[0] in modules
    }

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> tuple[Any, ...]:
            seen: dict[str, Any] = {}
            hooks = [
                modules[prefix].register_forward_hook(
                    lambda _m, _i, out, b=branch: seen.__setitem__(b, out)
                )
                for branch, prefix in boundaries.items()
            ]
            try:
                result = self.model(*args)
            finally:
                for hook in hooks:
                    hook.remove()
            # A branch returning a tensor is returned after the model's outputs; one returning
            # a structure (a transformers ModelOutput) is not: which of its tensors meets the
            # fusion head is not known here. Set while torch.export traces this forward.
            import torch

            returned[:] = [b for b in boundaries if isinstance(seen.get(b), torch.Tensor)]
            return (*_tensors(result, recipe.outputs), *(seen[b] for b in returned))

    returned: list[str] = []
    return Positional(Wrapped().eval(), names, returned)


def _tensors(result: Any, outputs: list[str]) -> list[Any]:
    """The model's outputs in the recipe's order (a tensor, a tuple, or a mapping)."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [result[o] for o in outputs]
    return list(result)


_VIOLATED = re.compile(r"Constraints violated \(([^)]*)\)")


def _export(wrapper: Positional, recipe: Recipe, static: list[str]) -> tuple[Any, list[str]]:
    """torch.export with the recipe's dynamic axes; an axis the model's own code fixes (a GRU
    unrolled over a fixed length, a reshape to a constant) is made static and the export
    retried, once per such axis, rather than failing the build."""
    import torch

    while True:
        example = _example_inputs(recipe, wrapper.input_names, set(static))
        dynamic = _dynamic_shapes(recipe, wrapper.input_names, set(static))
        try:
            # The wrapper's forward(*args) takes its dims under "args".
            program = torch.export.export(wrapper.module, example, dynamic_shapes={"args": dynamic})
            return program, static
        except Exception as err:  # torch._dynamo.exc.UserError, among others
            found = _VIOLATED.search(str(err))
            names = [n.strip() for n in found.group(1).split(",")] if found else []
            fixable = [n for n in names if n in recipe.axes and n not in static]
            if not fixable or recipe.batch_axis in fixable:
                raise
            static = [*static, *fixable]


def _example_inputs(recipe: Recipe, names: list[str], static: set[str]) -> tuple[Any, ...]:
    """Inputs at the opt point in the program's order (export's own trace feeds)."""
    import torch

    from mmedge.export import trace_feeds

    feeds = trace_feeds(recipe, frozenset(static))
    return tuple(torch.from_numpy(feeds[n]) for n in names)


def _dynamic_shapes(recipe: Recipe, names: list[str], static: set[str]) -> tuple[Any, ...]:
    """Export's dims, one entry per input in the program's order (None: all fixed)."""
    from mmedge.export import dynamic_shapes

    dims = dynamic_shapes(recipe, frozenset(static))
    return tuple(dims[n] or None for n in names)


def _quantize(
    program: Any, recipe: Recipe, calib: DataSource, cfg: ExecuTorchConfig, wrapper: Positional
) -> tuple[Any, dict[str, Any]]:
    """PT2E: annotate with the XNNPACK quantizer, observe the calibration set, convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    qcfg = get_symmetric_quantization_config(is_per_channel=recipe.quantization.per_channel)
    # The concat joining quantized branches must be annotated too: XNNPACK runs a concat
    # between quantized tensors as a quantized concat, which takes one scale for all its
    # inputs and refuses the program at load time otherwise (seen on the reference model).
    patterns = _patterns(recipe.quantization.op_types) | {"cat"}

    class Quantizer(XNNPACKQuantizer):  # type: ignore[misc]
        # quantization.op_types, as the XNNPACK quantizer's patterns: weighted ops only by
        # default. Its own default also quantizes add/mul; on the reference model that cost
        # the text branch (the attention-mask add), as it did with ONNX Runtime.
        SUPPORTED_PATTERNS: ClassVar[list[Any]] = [
            p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if p.name.split("_")[0] in patterns
        ]

        def transform_for_annotation(self, model: Any) -> Any:
            # The XNNPACK quantizer turns Python scalars into tensor attributes so that add/mul
            # with a constant can be quantized. Without those patterns there is nothing to
            # gain, and it breaks index arithmetic (transformers' attention masks then index
            # with float tensors).
            if patterns & {"add", "mul"}:
                return super().transform_for_annotation(model)
            return model

    quantizer = Quantizer()
    # Only floating-point ops: a concat of token positions or masks (transformers builds them
    # in its forward) must stay integer, or an embedding gets float indices.
    quantizer.set_filter_function(_floating)
    kept = set(recipe.quantization.keep_fp32)
    unknown = sorted(kept - set(recipe.branches))
    if unknown:
        raise RecipeError(f"quantization.keep_fp32 names {unknown}, which are not branches")
    if recipe.branches:
        # Branch by branch (a module name each): a branch in keep_fp32 is left out, and ops
        # outside every branch (the concat between them) stay float. Quantizing those too
        # (set_global) made a program XNNPACK refused at load time (unsupported parameter).
        modules = [
            f"model.{prefix}"
            for branch, prefixes in recipe.branches.items()
            if branch not in kept
            for prefix in prefixes
        ]
        for name in modules:
            quantizer.set_module_name(name, qcfg)
        if not kept:  # the concats between branches live outside every branch module
            quantizer.set_operator_type(torch.ops.aten.cat.default, qcfg)
    else:
        modules = ["(whole model)"]
        quantizer.set_global(qcfg)
    prepared = prepare_pt2e(program.module(), quantizer)
    batch = recipe.calibration.batch if recipe.calibration else 8
    observed = 0
    for k, item in enumerate(calib.batches(batch)):
        if cfg.calibration_batches is not None and k >= cfg.calibration_batches:
            break
        prepared(
            *[torch.from_numpy(np.ascontiguousarray(item.feeds[n])) for n in wrapper.input_names]
        )
        observed += next(iter(item.feeds.values())).shape[0]
    return convert_pt2e(prepared), {
        "patterns": [p.name for p in Quantizer.SUPPORTED_PATTERNS],
        "scheme": "PT2E, XNNPACK quantizer, symmetric "
        + ("per-channel" if recipe.quantization.per_channel else "per-tensor")
        + " weights, static activations",
        "quantized_modules": modules,
        "kept_fp32": sorted(kept),
        "calibration_samples": observed,
    }


# quantization.op_types (ONNX names) → the XNNPACK quantizer's pattern families. Gather (an
# embedding table) has no pattern there: embeddings stay float in an ExecuTorch program.
_PATTERNS = {
    "Conv": ("conv",),
    "ConvTranspose": ("conv",),  # conv_transpose* patterns share the "conv" family
    "MatMul": ("linear",),
    "Gemm": ("linear",),
    "Add": ("add",),
    "Mul": ("mul",),
    "Concat": ("cat",),
    "GlobalAveragePool": ("adaptive",),
}


def _floating(node: Any) -> bool:
    value = node.meta.get("val")
    return value is None or not hasattr(value, "dtype") or bool(value.dtype.is_floating_point)


def _patterns(op_types: Sequence[str]) -> set[str]:
    return {family for op in op_types for family in _PATTERNS.get(op, ())}


def _partitioner() -> Any:
    """XNNPACK's partitioner, minus ops its lowering would reject on dynamic shapes.

    ExecuTorch 1.5's XNNPACK lowering emits a static reshape, which takes at most one dynamic
    dim, for an unsqueeze and for the 3-D → 4-D lift of Conv1d and BatchNorm1d. Its partitioner
    does not check that, so one such op with two dynamic dims (batch and frames, batch and
    sequence) fails the whole build. Those ops are left to portable kernels instead; the build
    records how many (``delegation.portable_ops``).
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.gemm_configs import ConvolutionConfig
    from executorch.backends.xnnpack.partition.config.generic_node_configs import (
        UnsqueezeCopyConfig,
    )
    from executorch.backends.xnnpack.partition.config.node_configs import BatchNormConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from torch.fx.experimental.symbolic_shapes import free_symbols

    def dynamic_dims(shape: Any) -> int:
        return sum(bool(free_symbols(d)) for d in shape)

    def lifted_3d(node: Any) -> bool:  # Conv1d / BatchNorm1d input, reshaped to 4-D
        shape = node.args[0].meta["val"].shape
        return len(shape) == 3 and dynamic_dims(shape) > 1

    def unsqueezed(node: Any) -> bool:
        return bool(dynamic_dims(node.meta["val"].shape) > 1)

    def guarded(base: type, refused: Any) -> type:
        class Guarded(base):  # type: ignore[misc]
            def check_constraints(self, node: Any, ep: Any) -> bool:
                return bool(super().check_constraints(node, ep)) and not refused(node)

        Guarded.__name__ = base.__name__
        return Guarded

    replaced = {
        ConvolutionConfig: guarded(ConvolutionConfig, lifted_3d),
        BatchNormConfig: guarded(BatchNormConfig, lifted_3d),
        UnsqueezeCopyConfig: guarded(UnsqueezeCopyConfig, unsqueezed),
    }
    return XnnpackPartitioner(configs=[replaced.get(c, c) for c in ALL_PARTITIONER_CONFIGS])


def _lower(program: Any) -> tuple[bytes, dict[str, Any]]:
    import executorch.kernels.quantized  # noqa: F401 (portable INT8 kernels for ops left out)
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[_partitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    portable = {
        op: b.non_delegated
        for op, b in info.delegation_by_operator.items()
        if b.non_delegated and not op.startswith(("getitem", "sym_size", "alloc"))
    }
    delegation = {
        "delegate": "XnnpackBackend",
        "subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "portable_nodes": info.num_non_delegated_nodes,
        "portable_ops": dict(sorted(portable.items(), key=lambda kv: -kv[1])),
    }
    return bytes(edge.to_executorch().buffer), delegation


def _notes(delegation: dict[str, Any], recipe: Recipe, static: list[str]) -> list[str]:
    """Advice the build can give: heavy ops left to portable kernels by dynamic shapes."""
    heavy = {
        op: n
        for op, n in delegation["portable_ops"].items()
        if "convolution" in op or "batch_norm" in op
    }
    if not heavy:
        return []
    dynamic = [a for a in recipe.axes if a not in static and a != recipe.batch_axis]
    return [
        f"{sum(heavy.values())} convolution/batch-norm op(s) run in portable kernels, not "
        f"XNNPACK, because two of their dims are dynamic (measured on the reference model: "
        f"about 20x slower). Fixing an axis at its opt size delegates them: "
        f"-O static_axes=[AXIS] with AXIS one of {dynamic}"
    ]


def _check_program(
    pte: Path, recipe: Recipe, wrapper: Positional, example: tuple[Any, ...], precision: str
) -> dict[str, Any]:
    """Load the written program in the runtime and run it once: XNNPACK refuses some graphs
    only when the program loads, and that belongs to the build, not to a later compare."""
    from mmedge.targets import SessionConfig
    from mmedge.targets.executorch.session import ExecuTorchSession

    feeds = {n: t.numpy() for n, t in zip(wrapper.input_names, example, strict=True)}
    with ExecuTorchSession(pte, SessionConfig(threads=1)) as session:
        got = session.run(feeds)
        max_batch = session.max_batch
    import torch

    with torch.no_grad():
        want = wrapper.module(*example)
    errors = {
        name: float(np.max(np.abs(got[name] - want[i].numpy())))
        for i, name in enumerate(recipe.outputs)
    }
    return {
        "loads_and_runs": True,
        "max_abs_error_vs_pytorch": errors,
        "precision": precision,
        # The batch memory planning made room for; larger batches run in chunks of it.
        "max_batch": max_batch,
    }
