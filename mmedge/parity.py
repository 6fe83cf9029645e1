"""Per-branch parity: which branch an artifact or precision hurts.

Each branch's output embedding is a tensor at the branch's boundary in the exported graph: the
last tensor a branch produces that something outside it consumes (the fusion concat, a graph
output). Both sides expose those tensors as extra outputs, and the usual metrics (cosine,
SQNR) are computed per branch. The reference is the FP32 ONNX export run in ONNX Runtime,
which the export step has already checked against PyTorch; it needs no torch, and for a pruned
model it is the pruned model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.branches import UNASSIGNED, branch_of, scope_of_name
from mmedge.compare import compare_runners
from mmedge.data.datasets import open_compare_data
from mmedge.errors import ArtifactError
from mmedge.recipe import Recipe
from mmedge.rundir import atomic_write_json

Node = tuple[str, Sequence[str], Sequence[str]]  # (name, input tensors, output tensors)
FLAG_DB = 40.0


def boundary_tensors(
    nodes: Iterable[Node], graph_outputs: Iterable[str], branches: dict[str, list[str]]
) -> dict[str, str]:
    """Branch → the tensor carrying its output. A tensor's branch comes from its own scoped
    name (runtimes keep it when they fuse the producer away), else from its producer's."""
    producer: dict[str, tuple[int, str]] = {}
    listed = list(nodes)
    for order, (name, _, outputs) in enumerate(listed):
        for tensor in outputs:
            branch = branch_of(scope_of_name(tensor), branches)
            if branch == UNASSIGNED:
                branch = branch_of(scope_of_name(name), branches)
            producer[tensor] = (order, branch)
    found: dict[str, tuple[int, str]] = {}

    def offer(tensor: str) -> None:
        order, branch = producer[tensor]
        if branch != UNASSIGNED and order > found.get(branch, (-1, ""))[0]:
            found[branch] = (order, tensor)  # the latest crossing tensor is the branch output

    for name, inputs, _ in listed:
        here = branch_of(scope_of_name(name), branches)
        for tensor in inputs:
            if tensor in producer and producer[tensor][1] != here:
                offer(tensor)
    for tensor in graph_outputs:
        if tensor in producer:
            offer(tensor)
    return {b: t for b, (_, t) in sorted(found.items())}


def onnx_boundary(path: Path, branches: dict[str, list[str]]) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = [(n.name, list(n.input), list(n.output)) for n in model.graph.node]
    return boundary_tensors(nodes, [o.name for o in model.graph.output], branches)


def branch_parity(
    directory: Path, reference_dir: Path, samples: int | None = None
) -> dict[str, Any]:
    """Per-branch metrics of the artifact in ``directory`` against the FP32 ONNX Runtime
    artifact in ``reference_dir``; saved as ``directory/parity.json``."""
    from mmedge.artifacts import open_artifact

    manifest, recipe, artifact = open_artifact(directory)
    ref_manifest, _, ref_artifact = open_artifact(reference_dir)
    if ref_manifest["target"] != "onnxruntime" or ref_manifest["precision"] != "fp32":
        raise ArtifactError(f"{reference_dir} is not an ONNX Runtime FP32 artifact")
    record = parity_against(ref_artifact, manifest, recipe, artifact, samples)
    record["reference"] = str(reference_dir)
    atomic_write_json(directory / "parity.json", record)
    return record


def parity_against(
    fp32_onnx: Path,
    manifest: dict[str, Any],
    recipe: Recipe,
    artifact: Path,
    samples: int | None = None,
) -> dict[str, Any]:
    """Per-branch cosine and SQNR of an artifact against an FP32 ONNX of the same model."""
    from mmedge.targets import SessionConfig, get_target
    from mmedge.targets.onnxruntime import OrtSession

    tensors = onnx_boundary(fp32_onnx, recipe.branches)
    if not tensors:
        raise ArtifactError(
            "no branch boundaries found: the recipe declares no branches, or no ONNX node "
            "carries their module names",
            hint="declare 'branches' (module-name prefixes) in the recipe",
        )
    config = SessionConfig(
        threads=recipe.bench.threads,
        extra_outputs=tuple(tensors.values()),
        branch_outputs=dict(tensors),  # runtimes without ONNX names return them by branch
    )
    target = get_target(manifest["target"])
    reference = OrtSession(fp32_onnx, config.threads, extra_outputs=config.extra_outputs)
    candidate = target.load_here(artifact, recipe, manifest["precision"], config)
    runs_in = manifest["target"]
    if target.runtime_missing() is not None:  # load_here gave what this machine can run
        runs_in = f"{candidate.runtime} ({runs_in} artifact's graph; {runs_in} cannot run here)"
    with reference, candidate:
        data = open_compare_data(recipe, samples)
        batch = recipe.eval.batch if recipe.eval else 16
        report = compare_runners(
            _branches_only(reference.run, tensors),
            _branches_only(candidate.run, tensors),
            data,
            batch,
            score_output=next(iter(tensors)) if tensors else None,
            labelled=False,
        )
    metrics = {b: report.outputs[b] for b in tensors if b in report.outputs}
    # The most affected branch: lowest SQNR, when it is below FLAG_DB (40 dB: error power above
    # 0.01% of the signal's, i.e. error RMS above 1% of the signal's RMS); above that,
    # differences are float rounding and no branch is singled out.
    low = {b: m.sqnr_db for b, m in metrics.items() if m.sqnr_db < FLAG_DB}
    worst = min(low, key=lambda b: low[b]) if low else None
    return {
        "runs_in": runs_in,
        "tensors": tensors,
        "branches": {
            b: {"cosine": m.cosine, "cosine_min": m.cosine_min, "sqnr_db": m.sqnr_db}
            for b, m in metrics.items()
        },
        "most_affected": worst,
        "samples": report.samples,
        "data": data.describe(),
    }


def _branches_only(
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], tensors: dict[str, str]
) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    def call(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = run(feeds)
        missing = [t for t in tensors.values() if t not in out]
        if missing:
            raise ArtifactError(
                f"the artifact has no tensor(s) {missing[:3]}: its graph does not keep the "
                "branch boundaries of the FP32 export"
            )
        return {b: out[t] for b, t in tensors.items()}

    return call
