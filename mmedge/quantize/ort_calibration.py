"""Calibrate ONNX Runtime's quantizer over batches of *different shapes*, one shape at a time.

A multimodal calibration set should cover its dynamic axes (16 tokens in one shard, 48 in
another). ONNX Runtime's histogram calibrators (Entropy, Percentile) stack every batch of a
tensor with ``np.asarray`` and fail on mixed shapes, and within one ``collect_data`` call they
keep every batch's activations until the end. Its calibrators do merge ranges and histograms
*across* calls, so mmedge calls ``collect_data`` once per run of same-shaped batches (a shard),
then hands the merged ranges to ``quantize_static`` through its calibration cache
(``calibration_cache_path``, onnxruntime >= 1.27). Memory then holds one shard's activations.
With an older onnxruntime, calibration is one pass, as ``quantize_static`` does it, with the
histogram options (bins) put into the calibrator it creates (``calibrator_options``).

Entropy and Percentile differ from MinMax only where their thresholds clip a tensor's range;
``range_summary`` counts those tensors so the manifest can say when none was clipped.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

from mmedge.data.datasets import DataSource
from mmedge.inputs import Feeds


class FeedReader(CalibrationDataReader):  # type: ignore[misc]
    """ONNX Runtime's reader interface over an iterator of named-input batches."""

    def __init__(self, feeds: Iterator[Feeds]) -> None:
        self._it = feeds
        self.samples_seen = 0

    def get_next(self) -> Feeds | None:
        feeds = next(self._it, None)
        if feeds is not None:
            self.samples_seen += next(iter(feeds.values())).shape[0]
        return feeds


def per_shape_supported() -> bool:
    try:
        from onnxruntime.quantization.calibrate import save_tensors_data  # noqa: F401
    except ImportError:
        return False
    return True


def _shape_key(feeds: Feeds) -> tuple[tuple[int, ...], ...]:
    # The batch size is left out: a shard's short last batch belongs to the shard's group.
    return tuple(v.shape[1:] for v in feeds.values())


def _batch_key(feeds: Feeds) -> tuple[tuple[int, ...], ...]:
    return tuple(v.shape for v in feeds.values())


def calibrate_to_cache(
    model: Path,
    data: DataSource,
    batch: int,
    method: CalibrationMethod,
    op_types: list[str],
    calib_options: dict[str, Any],
    workdir: Path,
) -> tuple[Path, int, int, dict[str, int] | None]:
    """Collect ranges one shape group at a time.

    Returns (cache file, samples, shape groups, ``range_summary`` of the ranges).
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model,
        op_types,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=method,
        extra_options=calib_options,
    )
    samples = groups = 0
    feeds = (b.feeds for b in data.batches(batch))
    for _, group in itertools.groupby(feeds, key=_shape_key):
        groups += 1
        # One collect_data call per run of *identical* batch shapes: the histogram collectors
        # stack a call's batches with np.asarray, so a shard's short last batch (20 samples in
        # batches of 8) in the same call failed with "inhomogeneous shape".
        for _, same in itertools.groupby(group, key=_batch_key):
            reader = FeedReader(same)
            calibrator.collect_data(reader)
            samples += reader.samples_seen
    ranges = calibrator.compute_data()
    cache = workdir / "calibration-cache.json"
    save_tensors_data(ranges, cache)
    return cache, samples, groups, range_summary(calibrator, ranges)


def range_summary(calibrator: Any, ranges: Any) -> dict[str, int] | None:
    """{"tensors": calibrated, "narrowed": those whose range is inside the data's min/max}.

    None for MinMax (its ranges are the min/max). With nothing narrowed, an Entropy or
    Percentile artifact is quantized exactly as a MinMax one, and the manifest must say so.
    """
    collector = getattr(calibrator, "collector", None)
    # The histogram collectors keep (hist, edges, min, max, ...) per tensor.
    seen: dict[str, Any] = collector.get_histogram_dict() if collector is not None else {}
    if not seen or ranges is None:
        return None
    narrowed = 0
    for name, observed in seen.items():
        if name not in ranges or len(observed) < 4:
            return None
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value)
        seen_low, seen_high = float(observed[2]), float(observed[3])
        # Histogram edges are float32: a difference of a few ulps is not a narrower range.
        tolerance = 1e-6 * max(seen_high - seen_low, 1e-30)
        narrowed += low > seen_low + tolerance or high < seen_high - tolerance
    return {"tensors": len(seen), "narrowed": narrowed}


class CalibratorCapture:
    """The calibrator ``quantize_static`` created and the ranges it computed."""

    def __init__(self) -> None:
        self.calibrator: Any = None
        self.ranges: Any = None


@contextlib.contextmanager
def calibrator_options(options: dict[str, Any], capture: CalibratorCapture) -> Iterator[None]:
    """Make ``quantize_static`` create its calibrator with ``options`` (num_bins...).

    ``quantize_static`` (every onnxruntime version) maps only a few extra_options onto its
    calibrator (symmetric, moving average, percentile in newer ones) and has none for the
    histogram bins, so its Entropy calibrator keeps 128 bins for 128 quantized bins: one
    candidate threshold, the full range, a byte-identical MinMax model. Before onnxruntime 1.27
    (no calibration cache) the calibrator it creates is the only one there is, so its
    ``create_calibrator`` is wrapped for the duration of the call. Not thread-safe; mmedge
    quantizes one model at a time.
    """
    import importlib

    # Not ``import onnxruntime.quantization.quantize as m``: the package's ``quantize``
    # attribute is a function of that name, which the ``as`` form would bind.
    ort_quantize: Any = importlib.import_module("onnxruntime.quantization.quantize")
    original = ort_quantize.create_calibrator

    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs["extra_options"] = {**(kwargs.get("extra_options") or {}), **options}
        calibrator = original(*args, **kwargs)
        compute = calibrator.compute_data

        def compute_and_keep() -> Any:
            capture.ranges = compute()
            return capture.ranges

        calibrator.compute_data = compute_and_keep
        capture.calibrator = calibrator
        return calibrator

    ort_quantize.create_calibrator = create
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original
