"""Calibrate ONNX Runtime's quantizer over batches of *different shapes*, one shape at a time.

A multimodal calibration set should cover its dynamic axes (16 tokens in one shard, 48 in
another). ONNX Runtime's histogram calibrators (Entropy, Percentile) stack every batch of a
tensor with ``np.asarray`` and fail on mixed shapes, and within one ``collect_data`` call they
keep every batch's activations until the end. Its calibrators do merge ranges and histograms
*across* calls, so mmedge calls ``collect_data`` once per run of same-shaped batches (a shard),
then hands the merged ranges to ``quantize_static`` through its calibration cache
(``calibration_cache_path``, onnxruntime >= 1.27). Memory then holds one shard's activations.
With an older onnxruntime, calibration is one pass, as ``quantize_static`` does it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

from mmedge.calibration import DataSource
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
    # The batch size is left out: a shard's short last batch runs through the same session.
    return tuple(v.shape[1:] for v in feeds.values())


def calibrate_to_cache(
    model: Path,
    data: DataSource,
    batch: int,
    method: CalibrationMethod,
    op_types: list[str],
    calib_options: dict[str, Any],
    workdir: Path,
) -> tuple[Path, int, int]:
    """Collect ranges one shape group at a time; return (cache file, samples, shape groups)."""
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
        reader = FeedReader(group)
        calibrator.collect_data(reader)
        samples += reader.samples_seen
        groups += 1
    cache = workdir / "calibration-cache.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache, samples, groups
