"""INT8 for OpenVINO with NNCF post-training quantization, fed by mmedge's calibration source.

The same named multimodal samples as every other target (token ids stay int64), one sample
per item so NNCF's ``subset_size`` counts samples, whatever shard batch sizes and shapes are.
Per-branch precision (``quantization.keep_fp32``) becomes an ``IgnoredScope`` of the exact op
names that branch owns in the OpenVINO model.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from typing import Any

from mmedge.branches import UNASSIGNED, branch_of, scope_of_name
from mmedge.data.datasets import DataSource
from mmedge.errors import InputSpecError, TargetBuildError
from mmedge.inputs import Feeds
from mmedge.logs import captured_output, write_log
from mmedge.quantize.isa import nncf_overflow_fix, profile_name
from mmedge.recipe import Recipe
from mmedge.targets.openvino import settings as openvino_settings

# mmedge's spelling (the recipe's) → NNCF's OverflowFix values.
_OVERFLOW_FIX = {"enable": "enable", "first_layer": "first_layer_only", "disable": "disable"}


class Samples:
    """A re-iterable view of a data source, one sample (batch of 1) per item."""

    def __init__(self, data: DataSource, batch: int) -> None:
        self.data = data
        self.batch = batch

    def __iter__(self) -> Iterator[Feeds]:
        for item in self.data.batches(self.batch):
            n = next(iter(item.feeds.values())).shape[0]
            for i in range(n):
                yield {k: v[i : i + 1] for k, v in item.feeds.items()}

    def __len__(self) -> int:
        return self.data.samples


def ops_by_branch(model: Any, branches: dict[str, list[str]]) -> dict[str, list[str]]:
    """OpenVINO op names per branch (the ONNX node names they were converted from)."""
    found: dict[str, list[str]] = {b: [] for b in [*branches, UNASSIGNED]}
    for op in model.get_ops():
        name = op.get_friendly_name()
        found[branch_of(scope_of_name(name), branches)].append(name)
    return found


def ignored_scope(model: Any, recipe: Recipe) -> Any:
    import nncf

    owned = ops_by_branch(model, recipe.branches)
    names: list[str] = []
    for branch in recipe.quantization.keep_fp32:
        if not owned[branch]:
            raise InputSpecError(
                f"quantization.keep_fp32 names branch '{branch}', but no OpenVINO op belongs to "
                f"it (prefixes {recipe.branches[branch]}); check the module names in 'branches'"
            )
        names += owned[branch]
    patterns = list(openvino_settings(recipe).nncf.ignored_patterns)
    return nncf.IgnoredScope(names=names, patterns=patterns, validate=True)


def has_attention(model: Any) -> bool:
    return any(op.get_type_name() == "Softmax" for op in model.get_ops())


def quantize_openvino(
    model: Any, recipe: Recipe, calib: DataSource, batch: int
) -> tuple[Any, dict[str, Any]]:
    """The NNCF-quantized model and what the manifest records about the step."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    cfg = openvino_settings(recipe).nncf
    transformer = cfg.model_type == "transformer" or (
        cfg.model_type == "auto" and has_attention(model)
    )
    kwargs: dict[str, Any] = {
        "subset_size": min(cfg.subset_size, calib.samples),
        "fast_bias_correction": cfg.fast_bias_correction,
        "ignored_scope": ignored_scope(model, recipe),
    }
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if cfg.preset is not None:
        kwargs["preset"] = nncf.QuantizationPreset(cfg.preset)
    overflow_fix, overflow_reason = nncf_overflow_fix(recipe)
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix(_OVERFLOW_FIX[overflow_fix])
    )
    start = time.perf_counter()
    # NNCF draws progress bars and logs at INFO; the terminal gets mmedge's summary instead.
    with captured_output() as logged:
        try:
            quantized = nncf.quantize(model, nncf.Dataset(Samples(calib, batch)), **kwargs)
        except nncf.ValidationError as err:
            raise InputSpecError(
                f"NNCF refused the ignored scope: {str(err).strip()}",
                hint="check targets.openvino.nncf.ignored_patterns against the model's op names",
            ) from None
        except (InputSpecError, KeyboardInterrupt):
            raise
        except Exception as err:  # NNCF and OpenVINO raise many types
            log = write_log("quantize-nncf", "\n".join([*logged, traceback.format_exc()]))
            raise TargetBuildError(
                f"NNCF quantization failed: {type(err).__name__}: {err}"[:500],
                hint=f"full log: {log}",
            ) from None
    details = {
        "quantizer": "nncf",
        "calibration_samples": kwargs["subset_size"],
        "model_type": "transformer" if transformer else "default",
        "preset": cfg.preset or "nncf default",
        "fast_bias_correction": cfg.fast_bias_correction,
        "ignored_ops": len(kwargs["ignored_scope"].names),
        "ignored_patterns": list(cfg.ignored_patterns),
        "kept_fp32_branches": list(recipe.quantization.keep_fp32),
        "int8_types": {
            "profile": profile_name(recipe.quantization.isa),
            "overflow_fix": overflow_fix,
            "reason": overflow_reason,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    if logged:
        details["quantizer_log"] = str(write_log("quantize-nncf", "\n".join(logged)))
    return quantized, details
