"""INT8 quantization with ONNX Runtime's own quantizer (static QDQ or dynamic).

mmedge adds the multimodal glue: calibration batches of named inputs from the recipe's shards,
and per-branch precision (``quantization.keep_fp32: [text]``) turned into the quantizer's node
exclusion list through the branch scopes kept in ONNX node names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from mmedge.branches import nodes_by_branch
from mmedge.data.datasets import DataSource
from mmedge.errors import InputSpecError, TargetBuildError
from mmedge.logs import captured_output, write_log
from mmedge.quantize.isa import ort_types
from mmedge.quantize.ort_calibration import (
    CalibratorCapture,
    FeedReader,
    calibrate_to_cache,
    calibrator_options,
    per_shape_supported,
    range_summary,
)
from mmedge.recipe import QuantizationConfig, Recipe
from mmedge.workspace import scratch_dir

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
# Not used: extra_options["CalibMaxIntermediateOutputs"]. In ONNX Runtime (seen in 1.32) the
# MinMax calibrator clears the batches it collected when that count is reached without merging
# their ranges first, so calibration data is silently thrown away ("No data is collected" when
# the count divides the batch count; onnxruntime#18893). MinMax keeps only per-batch
# ReduceMin/ReduceMax values, so it needs no cap; the histogram methods keep activations of
# every batch until the end whatever the options (peak memory is in benchmarks/).


def excluded_nodes(model: onnx.ModelProto, recipe: Recipe) -> list[str]:
    """Node names of the branches kept in float, plus any raw names the recipe lists."""
    cfg = recipe.quantization
    by_branch = nodes_by_branch(model, recipe.branches)
    names = [n for branch in cfg.keep_fp32 for n in by_branch[branch]]
    for branch in cfg.keep_fp32:
        if not by_branch[branch]:
            raise InputSpecError(
                f"quantization.keep_fp32 names branch '{branch}', but no ONNX node belongs to it "
                f"(prefixes {recipe.branches[branch]}); check the module names in 'branches'"
            )
    known = {n.name for n in model.graph.node}
    unknown = [n for n in cfg.exclude_nodes if n not in known]
    if unknown:
        raise InputSpecError(
            f"quantization.exclude_nodes names nodes not in the graph: {unknown[:5]}"
        )
    return sorted(set(names) | set(cfg.exclude_nodes))


def preprocess(src: Path, dst: Path) -> dict[str, Any]:
    """ORT's recommended pre-pass; symbolic shape inference fails on some transformer graphs.

    When it is incomplete, ONNX Runtime's symbolic shape inference saves the partial model as
    ``sym_shape_infer_temp.onnx`` plus an external-data file into the *current directory*
    before raising (onnxruntime/tools/symbolic_shape_infer.py). The pass therefore runs with
    the scratch directory as its working directory, so nothing lands in the user's.
    """
    src, dst = src.resolve(), dst.resolve()
    with _working_directory(dst.parent):
        try:
            quant_pre_process(str(src), str(dst))
            return {"symbolic_shape_inference": True}
        except Exception as err:  # e.g. "Incomplete symbolic shape inference", an assertion
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            reason = f"{type(err).__name__}: {err}"[:300]
            return {"symbolic_shape_inference": False, "reason": reason}


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    # contextlib.chdir exists from Python 3.11 only; mmedge supports 3.10.
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quantize_onnx(
    fp32: Path, out: Path, recipe: Recipe, calib: DataSource | None
) -> dict[str, Any]:
    """Write the INT8 model to ``out``; return what the manifest records about the step."""
    cfg = recipe.quantization
    start = time.perf_counter()
    with scratch_dir("quant") as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        details: dict[str, Any] = {"preprocess": preprocess(fp32, pre)}
        exclude = excluded_nodes(onnx.load(str(pre)), recipe)
        with captured_output() as logged:
            try:
                if cfg.mode == "dynamic":
                    _dynamic(pre, out, cfg, exclude)
                    details["int8_types"] = ort_types(cfg).to_json()
                else:
                    if calib is None:
                        raise InputSpecError("static quantization needs calibration data")
                    batch = recipe.calibration.batch if recipe.calibration else 8
                    details.update(_static(pre, out, cfg, exclude, calib, batch, Path(tmp)))
            except (InputSpecError, KeyboardInterrupt):
                raise
            except Exception as err:
                log = write_log(
                    "quantize-onnxruntime", "\n".join([*logged, traceback.format_exc()])
                )
                raise TargetBuildError(
                    f"ONNX Runtime quantization failed: {type(err).__name__}: {err}"[:500],
                    hint=f"full log: {log}",
                ) from None
        if logged:
            details["quantizer_log"] = str(write_log("quantize-onnxruntime", "\n".join(logged)))
    details.update(
        mode=cfg.mode,
        method=cfg.method if cfg.mode == "static" else None,
        excluded_nodes=len(exclude),
        kept_fp32_branches=list(cfg.keep_fp32),
        seconds=round(time.perf_counter() - start, 3),
    )
    return details


def _static(
    src: Path,
    out: Path,
    cfg: QuantizationConfig,
    exclude: list[str],
    calib: DataSource,
    batch: int,
    workdir: Path,
) -> dict[str, Any]:
    method = _METHODS[cfg.method]
    types = ort_types(cfg)
    extra: dict[str, Any] = {}
    if cfg.method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    if types.activation_type == "int8":
        # Signed activations are meant to be symmetric (TensorRT-style, zero point 0).
        extra["ActivationSymmetric"] = True
    extra["QuantizeBias"] = cfg.quantize_bias
    if not cfg.quantize_weighted_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
    common: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ,
        "per_channel": cfg.per_channel,
        "reduce_range": types.reduce_range,
        "activation_type": _TYPES[types.activation_type],
        "weight_type": _TYPES[types.weight_type],
        "nodes_to_exclude": exclude,
        "op_types_to_quantize": list(cfg.op_types),
        "calibrate_method": method,
        "extra_options": extra,
    }
    recorded: dict[str, Any] = {"int8_types": types.to_json()}
    if per_shape_supported():
        cache, samples, groups, ranges = calibrate_to_cache(
            src, calib, batch, method, list(cfg.op_types), _calib_options(cfg), workdir
        )
        quantize_static(str(src), str(out), None, calibration_cache_path=str(cache), **common)
        recorded.update(_ranges_record(cfg.method, ranges))
        return {"calibration_samples": samples, "calibration_shape_groups": groups, **recorded}
    reader = FeedReader(b.feeds for b in calib.batches(batch))
    capture = CalibratorCapture()
    try:
        # Without the options ONNX Runtime's Entropy calibrator has 128 bins and equals MinMax.
        with calibrator_options(_calib_options(cfg), capture):
            quantize_static(str(src), str(out), reader, **common)
    except ValueError as err:
        if "inhomogeneous" not in str(err):
            raise
        raise TargetBuildError(
            f"{cfg.method} calibration in this onnxruntime needs calibration batches of one shape",
            hint="upgrade to onnxruntime >= 1.27 (calibrates one shape at a time), use "
            "--method minmax, or give shards of one shape whose sample count is a multiple of "
            "calibration.batch (a short last batch is a batch of another shape)",
        ) from None
    recorded.update(_ranges_record(cfg.method, range_summary(capture.calibrator, capture.ranges)))
    return {
        "calibration_samples": reader.samples_seen,
        "calibration_shape_groups": None,
        **recorded,
    }


def _ranges_record(method: str, summary: dict[str, int] | None) -> dict[str, Any]:
    """What the manifest records about the calibrated ranges of a histogram method.

    Entropy (or Percentile) can legitimately pick the full min/max range of every tensor (few
    samples, no outliers); that artifact is then the MinMax one, and the manifest says so
    rather than letting ``method: entropy`` suggest otherwise.
    """
    if summary is None:
        return {}
    record: dict[str, Any] = {"calibration_ranges": summary}
    if summary["tensors"] and not summary["narrowed"]:
        note = (
            f"{method} thresholds equal the min/max range of all {summary['tensors']} "
            "calibrated tensors: the model is quantized exactly as with --method minmax"
        )
        record["method_note"] = note
        logging.getLogger(__name__).warning(note)  # kept in the quantizer log
    return record


def _calib_options(cfg: QuantizationConfig) -> dict[str, Any]:
    if cfg.method == "percentile":
        return {"percentile": cfg.percentile}
    if cfg.method == "entropy":
        # ONNX Runtime creates its entropy calibrator with 128 histogram bins and 128 quantized
        # bins, for which the KL search has one candidate threshold: the full range, i.e. MinMax
        # (measured: a byte-identical model). TensorRT's entropy calibration uses 2048 bins.
        # Both calibration paths must pass these: quantize_static has no option for them.
        return {"num_bins": 2048, "num_quantized_bins": 128}
    return {}


def _dynamic(src: Path, out: Path, cfg: QuantizationConfig, exclude: list[str]) -> None:
    types = ort_types(cfg)
    quantize_dynamic(
        str(src),
        str(out),
        # Dynamic quantization has no activation ranges to calibrate: weighted ops only.
        op_types_to_quantize=[
            op for op in cfg.op_types if op in ("MatMul", "Gemm", "Gather", "Conv")
        ],
        per_channel=cfg.per_channel,
        reduce_range=types.reduce_range,
        weight_type=_TYPES[types.weight_type],
        nodes_to_exclude=exclude,
    )
