"""Reference vs candidate on the same inputs: per-output error metrics, agreement, accuracy.

The metric functions are pure (arrays in, numbers out); ``compare_runners`` feeds both sides
batch by batch from a shard set and accumulates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mmedge.data.datasets import DataSource
from mmedge.errors import InputSpecError
from mmedge.recipe import CompareGate

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class OutputMetrics:
    cosine: float  # mean over samples of the per-sample cosine similarity
    cosine_min: float
    max_abs: float
    mean_abs: float
    sqnr_db: float  # 10·log10(signal power / error power); inf when identical
    nonfinite: int  # NaN/Inf values in the candidate


def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = cand.reshape(cand.shape[0], -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    # Two zero vectors are identical (cosine 1); one zero vector against another is not.
    both_zero = den == 0
    same = np.all(a == b, axis=1)
    return np.where(both_zero, np.where(same, 1.0, 0.0), num / np.where(both_zero, 1.0, den))


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    noise = float(np.sum((ref.astype(np.float64) - cand) ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def output_metrics(
    ref: np.ndarray | list[np.ndarray], cand: np.ndarray | list[np.ndarray]
) -> OutputMetrics:
    """Metrics over all samples; non-finite candidate values are counted, not propagated.

    Lists are chunks of samples whose sizes may differ between chunks (e.g. per-token outputs
    of batches with different sequence lengths); each chunk pair must match in shape.
    """
    refs = ref if isinstance(ref, list) else [ref]
    cands = cand if isinstance(cand, list) else [cand]
    cos, diffs, clean_all = [], [], []
    nonfinite = 0
    for r, c in zip(refs, cands, strict=True):
        if r.shape != c.shape:
            raise ValueError(f"shape mismatch: reference {r.shape} vs candidate {c.shape}")
        finite = np.isfinite(c)
        nonfinite += int(c.size - np.count_nonzero(finite))
        clean = np.where(finite, c, 0.0).astype(np.float64)
        cos.append(cosine_per_sample(r, clean))
        diffs.append(np.abs(r.astype(np.float64) - clean).ravel())
        clean_all.append(clean.ravel())
    cosines, diff = np.concatenate(cos), np.concatenate(diffs)
    return OutputMetrics(
        cosine=float(np.mean(cosines)),
        cosine_min=float(np.min(cosines)),
        max_abs=float(np.max(diff)) if diff.size else 0.0,
        mean_abs=float(np.mean(diff)) if diff.size else 0.0,
        sqnr_db=sqnr_db(np.concatenate([r.ravel() for r in refs]), np.concatenate(clean_all)),
        nonfinite=nonfinite,
    )


def top1_agreement(ref_scores: np.ndarray, cand_scores: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref_scores, axis=-1) == np.argmax(cand_scores, axis=-1)))


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    classes = scores.shape[-1]
    outside = labels[(labels < 0) | (labels >= classes)]
    if outside.size:
        # Otherwise no prediction can match them and a gate on accuracy "passes" at 0%.
        raise InputSpecError(
            f"eval labels hold {outside.size} value(s) outside the model's {classes} classes "
            f"[0, {classes}) (e.g. {int(outside[0])})",
            hint="check eval.label_key and the label encoding, or eval.output (class scores)",
        )
    return 100.0 * float(np.mean(np.argmax(scores, axis=-1) == labels))


@dataclass
class CompareReport:
    outputs: dict[str, OutputMetrics]
    top1_agreement: float | None
    accuracy: dict[str, float] | None
    samples: int
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parity: dict[str, Any] | None = None  # per-branch parity against the FP32 export
    next_steps: list[str] = field(default_factory=list)  # what to try when the gate fails
    # A pruned model's artifact, also against the model before pruning: agreement with the
    # pruned model alone says nothing about what pruning cost (100% with a collapsed model).
    original: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "top1_agreement": self.top1_agreement,
            "accuracy": self.accuracy,
            "samples": self.samples,
            "passed": self.passed,
            "failures": self.failures,
            "warnings": self.warnings,
            "parity": self.parity,
            "next_steps": self.next_steps,
            "original": self.original,
        }


def gate_failures(report: CompareReport, gate: CompareGate) -> list[str]:
    """Which thresholds the report misses; NaN/Inf in any output always fails."""
    fails = [
        f"output '{k}' has {m.nonfinite} NaN/Inf values"
        for k, m in report.outputs.items()
        if m.nonfinite
    ]
    if gate.min_cosine is not None:
        fails += [
            f"output '{k}' cosine {m.cosine:.5f} < min_cosine {gate.min_cosine}"
            for k, m in report.outputs.items()
            if m.cosine < gate.min_cosine
        ]
    agree = report.top1_agreement
    if (
        gate.min_top1_agreement is not None
        and agree is not None
        and agree < gate.min_top1_agreement
    ):
        fails.append(f"top-1 agreement {agree:.4f} < min_top1_agreement {gate.min_top1_agreement}")
    acc = report.accuracy
    if gate.max_accuracy_drop is not None and acc is not None:
        drop = acc["reference"] - acc["candidate"]
        if drop > gate.max_accuracy_drop:
            fails.append(
                f"accuracy drop {drop:.2f} points > max_accuracy_drop {gate.max_accuracy_drop}"
            )
    return fails


def compare_runners(
    reference: Runner,
    candidate: Runner,
    data: DataSource,
    batch: int,
    score_output: str | None,
    labelled: bool = True,
) -> CompareReport:
    """Run both sides on every batch; ``score_output`` (class scores) drives agreement/accuracy.
    ``labelled=False``: the outputs are not class scores (branch embeddings), so the data's
    labels are not theirs to score."""
    refs: dict[str, list[np.ndarray]] = {}
    cands: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    for item in data.batches(batch):
        ref, cand = reference(item.feeds), candidate(item.feeds)
        for name in ref:
            refs.setdefault(name, []).append(ref[name].reshape(ref[name].shape[0], -1))
            cands.setdefault(name, []).append(cand[name].reshape(cand[name].shape[0], -1))
        if item.labels is not None and labelled:
            labels.append(item.labels)
    merged = {n: output_metrics(refs[n], cands[n]) for n in refs}
    scores = score_output or next(iter(refs))
    samples = sum(r.shape[0] for r in refs[scores])
    if len({r.shape[1] for r in refs[scores]}) > 1:
        # Token-level outputs (a branch's [batch, seq, width] edge) change width with the
        # shard's sequence length: no class scores, so no agreement or accuracy to compute.
        return CompareReport(merged, None, None, samples=samples)
    ref_s, cand_s = np.concatenate(refs[scores]), np.concatenate(cands[scores])
    acc = None
    if labels:
        y = np.concatenate(labels)
        acc = {"reference": accuracy(ref_s, y), "candidate": accuracy(cand_s, y)}
    return CompareReport(merged, top1_agreement(ref_s, cand_s), acc, samples=samples)
