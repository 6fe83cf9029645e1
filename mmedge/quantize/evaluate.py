"""How good a quantization candidate is: the accuracy gate on a validation set held in memory.

The reference is the FP32 ONNX export run in ONNX Runtime (checked against PyTorch when it was
exported): its outputs are computed once, and every candidate of a search is measured against
them on the same batches. The metric functions are compare.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmedge.compare import accuracy, cosine_per_sample, sqnr_db, top1_agreement
from mmedge.data.datasets import DataSource, open_calibration, open_eval
from mmedge.errors import InputSpecError, RecipeError
from mmedge.inputs import Feeds
from mmedge.recipe import AccuracyConfig, Recipe

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Scores:
    top1_agreement: float
    cosine: float
    sqnr_db: float
    accuracy_drop: float | None  # points; None without labels

    def metric(self, name: str) -> float:
        value = getattr(self, name)
        if value is None:
            raise InputSpecError(f"metric {name} needs labels, and the validation set has none")
        return float(value)

    def to_json(self) -> dict[str, float | None]:
        return {
            "top1_agreement": self.top1_agreement,
            "cosine": self.cosine,
            "sqnr_db": self.sqnr_db if np.isfinite(self.sqnr_db) else None,
            "accuracy_drop": self.accuracy_drop,
        }


def passes(value: float, cfg: AccuracyConfig) -> bool:
    return value <= cfg.target if cfg.metric == "accuracy_drop" else value >= cfg.target


def better(a: float, b: float, metric: str) -> bool:
    """Is ``a`` a better value of ``metric`` than ``b``."""
    return a < b if metric == "accuracy_drop" else a > b


class Validation:
    """Validation batches, FP32 reference outputs on them, and a ranking subset."""

    def __init__(self, recipe: Recipe, fp32_onnx: Path, threads: int) -> None:
        from mmedge.targets.onnxruntime import OrtSession

        cfg = recipe.quantization.accuracy
        assert cfg is not None  # the search is only started with a gate
        source: DataSource | None = open_eval(recipe)
        self.described = "eval set"
        if source is None:
            source = open_calibration(recipe)
            self.described = "calibration set (the recipe has no eval set)"
        if cfg.samples is not None:
            source = source.limited(cfg.samples)
        if cfg.ranking_samples > source.samples:
            raise RecipeError(
                f"quantization.accuracy.ranking_samples is {cfg.ranking_samples}, larger than the "
                f"{self.described} ({source.samples} samples)",
                hint=f"set ranking_samples to at most {source.samples}",
            )
        batch = recipe.eval.batch if recipe.eval else 16
        self.batches = [(b.feeds, b.labels) for b in source.batches(batch)]
        self.samples = source.samples
        self.score = recipe.eval.output if recipe.eval and recipe.eval.output else recipe.outputs[0]
        self.ranking = _take(self.batches, cfg.ranking_samples)
        session = OrtSession(fp32_onnx, threads)
        with session:
            self.reference = [session.run(feeds)[self.score] for feeds, _ in self.batches]
        labels = [y for _, y in self.batches if y is not None]
        complete = len(labels) == len(self.batches)
        self.labels: np.ndarray | None = np.concatenate(labels) if complete else None
        if cfg.metric == "accuracy_drop" and self.labels is None:
            raise InputSpecError(
                f"quantization.accuracy.metric accuracy_drop needs labels; the {self.described} "
                "has none",
                hint="use top1_agreement, cosine or sqnr_db, which compare with FP32 outputs",
            )

    def scores(self, run: Runner, ranking: bool = False) -> Scores:
        """The candidate's scores on every validation batch (or only the ranking subset)."""
        batches = self.ranking if ranking else self.batches
        got = [run(feeds)[self.score] for feeds, _ in batches]
        n = sum(a.shape[0] for a in got)  # the ranking subset ends inside a batch
        ref = [np.concatenate([a.reshape(a.shape[0], -1) for a in self.reference])[:n]]
        return score_arrays(ref, got, None if ranking else self.labels)


def score_arrays(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], labels: np.ndarray | None
) -> Scores:
    r = np.concatenate([a.reshape(a.shape[0], -1) for a in ref])
    c = np.concatenate([a.reshape(a.shape[0], -1) for a in got])
    c = np.where(np.isfinite(c), c, 0.0)  # NaN/Inf count as total error, not as a crash
    drop = None
    if labels is not None:
        drop = accuracy(r, labels) - accuracy(c, labels)
    return Scores(
        top1_agreement=top1_agreement(r, c),
        cosine=float(np.mean(cosine_per_sample(r, c))),
        sqnr_db=sqnr_db(r, c),
        accuracy_drop=drop,
    )


def _take(
    batches: list[tuple[Feeds, np.ndarray | None]], samples: int
) -> list[tuple[Feeds, np.ndarray | None]]:
    taken: list[tuple[Feeds, np.ndarray | None]] = []
    left = samples
    for feeds, labels in batches:
        if left <= 0:
            break
        n = next(iter(feeds.values())).shape[0]
        k = min(n, left)
        taken.append(({a: v[:k] for a, v in feeds.items()}, None if labels is None else labels[:k]))
        left -= k
    return taken


def branch_sqnr(
    reference: Runner,
    candidate: Runner,
    tensors: dict[str, str],
    batches: list[tuple[Feeds, object]],
) -> dict[str, float]:
    """SQNR of each branch's output embedding (branch → boundary tensor) over ``batches``."""
    refs: dict[str, list[np.ndarray]] = {b: [] for b in tensors}
    cands: dict[str, list[np.ndarray]] = {b: [] for b in tensors}
    for feeds, _ in batches:
        r, c = reference(feeds), candidate(feeds)
        for branch, tensor in tensors.items():
            if tensor in r and tensor in c:
                refs[branch].append(r[tensor].ravel())
                cands[branch].append(c[tensor].ravel())
    return {
        b: sqnr_db(np.concatenate(refs[b]), np.concatenate(cands[b])) for b in tensors if refs[b]
    }
