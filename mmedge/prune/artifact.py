"""`mmedge prune`: prune, sparsify, recover, measure before and after, save for every target.

The pruned model keeps its class: its weights (``pruned.safetensors``) and the layer widths
pruning changed (``pruned-shapes.json``, see mmedge/prune/shapes.py) are saved beside a recipe that
builds it with the original factory, so export treats it exactly like the unpruned model (same
exporter, same module names). A model that came as a ``torch.export`` program is saved as one
(``pruned.pt2``). The report holds parameters, MACs and ONNX
Runtime FP32 latency per branch, before and after, and accuracy on the eval split before
pruning, after pruning and after recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from mmedge.bench import time_calls
from mmedge.branches import time_by_branch
from mmedge.compare import accuracy
from mmedge.data.datasets import (
    DataSource,
    ShardDataset,
    data_from_factory,
    open_calibration,
    open_eval,
)
from mmedge.errors import InputSpecError, RecipeError
from mmedge.export import dynamic_shapes, export_onnx, trace_feeds
from mmedge.hashing import sha256_bytes
from mmedge.inputs import dummy_feeds
from mmedge.model import load_torch_model, ordered_args, torch_runner
from mmedge.progress import Status, TrainStep, quiet
from mmedge.prune.recover import recover
from mmedge.prune.structured import apply_sparsity, branch_ratios, remove_masks, structured_prune
from mmedge.recipe import DataFactory, PruneConfig, Recipe
from mmedge.rundir import check_output_dir, staged_output, write_manifest
from mmedge.stats import branch_stats, stats_json
from mmedge.workspace import scratch_dir

if TYPE_CHECKING:
    from torch import nn

PROGRAM = "pruned.pt2"
WEIGHTS = "pruned.safetensors"
SHAPES = "pruned-shapes.json"
RECIPE = "recipe.yaml"
REPORT = "report.json"
NOTES = {
    "unstructured": "unstructured sparsity zeroes weights inside dense tensors: on dense CPU "
    "kernels (ONNX Runtime, OpenVINO) it shrinks nothing and speeds nothing up",
    "2:4": "2:4 sparsity needs sparse tensor cores (NVIDIA Ampere or newer, TensorRT with sparse "
    "weights, which the derived recipe enables); on CPUs it shrinks nothing and speeds nothing up",
}


def recovery_data(recipe: Recipe, cfg: PruneConfig) -> DataSource | None:
    rec = cfg.recover
    if rec.mode == "none":
        return None
    label = rec.label_key if rec.mode == "finetune" else None
    if isinstance(rec.data, DataFactory):
        return data_from_factory(rec.data, recipe)
    if rec.data is not None:
        return ShardDataset(rec.data, recipe, label)
    if recipe.calibration is None:
        raise InputSpecError(
            f"prune.recover.mode is '{rec.mode}' but there is no data to recover on: set "
            "prune.recover.data, add a calibration section, or set prune.recover.mode: none"
        )
    return open_calibration(recipe)


def _accuracy(model: nn.Module, recipe: Recipe) -> float | None:
    data = open_eval(recipe)
    if data is None:
        return None
    run = torch_runner(model, recipe.outputs)
    score = recipe.eval.output if recipe.eval and recipe.eval.output else recipe.outputs[0]
    pairs = [(run(b.feeds)[score], b.labels) for b in data.batches(64)]
    return accuracy(np.concatenate([p for p, _ in pairs]), np.concatenate([y for _, y in pairs]))


def _measure(model: nn.Module, recipe: Recipe, tmp: Path, tag: str) -> dict[str, Any]:
    """Params and MACs per branch (opt shapes, batch 1) and ONNX Runtime FP32 latency."""
    from mmedge.targets import SessionConfig
    from mmedge.targets.onnxruntime import OnnxRuntimeTarget

    feeds = dummy_feeds(recipe, "opt", batch=1)
    onnx_path = tmp / f"{tag}.onnx"
    export_onnx(model, recipe, onnx_path)
    target, threads = OnnxRuntimeTarget(), recipe.bench.threads
    profiled = target.load(onnx_path, recipe, "fp32", SessionConfig(threads, profile=True))
    branch_ms = time_by_branch(profiled.layer_times(feeds, runs=20), recipe.branches)
    profiled.close()
    session = target.load(onnx_path, recipe, "fp32", SessionConfig(threads))
    p50 = float(np.median(time_calls(session.prepare(feeds), 20, 200)))
    session.close()
    return {
        "stats": stats_json(branch_stats(model, feeds, recipe.branches)),
        "onnxruntime_fp32": {"p50_ms": p50, "branch_ms": branch_ms, "threads": threads},
        "onnx_bytes": onnx_path.stat().st_size,
    }


def _taylor(teacher: nn.Module, data: DataSource | None) -> Callable[[nn.Module], None]:
    """Gradients for Taylor importance: cross-entropy against the unpruned model's predictions
    (pseudo-labels), so no labels are needed."""

    def run(model: nn.Module) -> None:
        import torch
        import torch.nn.functional as F

        if data is None:
            raise InputSpecError("prune.importance 'taylor' needs calibration data")
        model.zero_grad()
        for batch in data.batches(32):
            feeds = {k: torch.from_numpy(v) for k, v in batch.feeds.items()}
            with torch.no_grad():
                target = teacher(*ordered_args(teacher, feeds)).argmax(-1)
            F.cross_entropy(model(*ordered_args(model, feeds)), target).backward()

    return run


def prune_artifact(
    recipe: Recipe,
    out: Path,
    force: bool = False,
    progress: Status = quiet,
    on_step: TrainStep | None = None,
) -> dict[str, Any]:
    import torch

    cfg = recipe.prune or PruneConfig()
    if not any(branch_ratios(recipe, cfg).values()) and cfg.sparsity.mode == "none":
        raise RecipeError(
            "nothing to prune: every branch's ratio is 0 and sparsity is none",
            hint="give --ratio R or --branch NAME=R (or a prune section in the recipe)",
        )
    identity = {"target": "pytorch", "precision": "pruned", "recipe_sha256": _prune_sha(recipe)}
    check_output_dir(out, identity, force)
    data = recovery_data(recipe, cfg)  # fails fast when recovery has no data
    progress("loading PyTorch model")
    model = load_torch_model(recipe)
    teacher = model  # structured_prune prunes a copy: this one stays the unpruned teacher
    feeds = {k: torch.from_numpy(v) for k, v in trace_feeds(recipe).items()}
    report: dict[str, Any] = {"config": cfg.model_dump(mode="json")}
    with (
        scratch_dir("prune") as tmp_dir,
        staged_output(out) as stage,
    ):
        tmp = Path(tmp_dir)
        # Pruning first: a model it cannot prune fails in seconds, not after the minutes the
        # "before" measurements take on a real model (seen: ~200 s per failed attempt).
        progress("pruning")
        calib = (
            data if data is not None else (open_calibration(recipe) if recipe.calibration else None)
        )
        result = structured_prune(model, feeds, recipe, cfg, _taylor(teacher, calib))
        model = result.model
        progress("measuring the unpruned model")
        report["before"] = {  # the teacher: an untouched copy of the model
            **_measure(teacher, recipe, tmp, "before"),
            "accuracy": _accuracy(teacher, recipe),
        }
        report["structured"] = {
            "ratios": result.ratios,
            "heads": result.heads,
            "protected": result.protected,
            "untouched_layers": result.skipped,
            "left_whole": result.left_whole,
            "by_branch": result.by_branch,
        }
        if cfg.sparsity.mode != "none":
            report["sparsity"] = {
                **apply_sparsity(model, cfg.sparsity),
                "note": NOTES[cfg.sparsity.mode],
            }
        report["after_pruning_accuracy"] = _accuracy(model, recipe)
        if data is not None:
            progress("recovering accuracy")
            report["recovery"] = recover(model, teacher, data, recipe, cfg.recover, on_step)
        remove_masks(model)
        progress("measuring the pruned model")
        report["after"] = {
            **_measure(model, recipe, tmp, "after"),
            "accuracy": _accuracy(model, recipe),
        }
        progress("saving")
        saved = _save_model(model, teacher, recipe, feeds, stage)
        (stage / RECIPE).write_text(yaml.safe_dump(derived_recipe(recipe, cfg), sort_keys=False))
        from mmedge.rundir import atomic_write_json

        atomic_write_json(stage / REPORT, report)
        manifest = write_manifest(
            stage,
            [*saved, stage / RECIPE, stage / REPORT],
            {
                "identity": identity,
                "target": "pytorch",
                "precision": "fp32",
                "recipe": recipe.model_dump(mode="json", exclude={"sweep"}),
                "steps": {"prune": report},
            },
        )
    return manifest


def _prune_sha(recipe: Recipe) -> str:
    """The fields a pruned model depends on: not the quantization settings, nor the export's
    (a sweep over them prunes once); the calibration set only when pruning reads it (Taylor
    importance, or recovery without data of its own)."""
    import json

    cfg = recipe.prune
    reads_calibration = cfg is not None and (
        cfg.importance == "taylor" or (cfg.recover.mode != "none" and cfg.recover.data is None)
    )
    fields = {"model", "inputs", "axes", "outputs", "branches"}
    text = json.dumps(
        {
            "model": recipe.model_dump(
                mode="json", include=fields | ({"calibration"} if reads_calibration else set())
            ),
            "prune": cfg.model_dump(mode="json") if cfg else None,
        },
        sort_keys=True,
    )
    return sha256_bytes(text.encode())


def _save_model(
    model: nn.Module, teacher: nn.Module, recipe: Recipe, feeds: dict[str, Any], stage: Path
) -> list[Path]:
    """Weights + changed widths for a factory's model; a program for a program."""
    if recipe.model.factory is None:
        _save_program(model, recipe, feeds, stage / PROGRAM)
        return [stage / PROGRAM]
    from safetensors.torch import save_file

    from mmedge.prune.shapes import save_shapes

    # Cloned: safetensors refuses tensors that share storage (tied weights).
    save_file(
        {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()},
        str(stage / WEIGHTS),
    )
    save_shapes(model, teacher, stage / SHAPES, recipe.model.shapes)
    return [stage / WEIGHTS, stage / SHAPES]


def _save_program(model: nn.Module, recipe: Recipe, feeds: dict[str, Any], path: Path) -> None:
    import torch

    model.eval()
    args = ordered_args(model, feeds)
    program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes(recipe))
    torch.export.save(program, str(path))


def derived_recipe(recipe: Recipe, cfg: PruneConfig) -> dict[str, Any]:
    """The same recipe, pointing at the pruned program (paths stay absolute)."""
    # None values stay: some mean "not checked" (compare gates), not "use the default".
    raw = recipe.model_dump(mode="json", exclude={"prune", "sweep"})
    raw["name"] = f"{recipe.name}-pruned"
    if recipe.model.factory is None:
        raw["model"] = {"path": PROGRAM}
    else:
        raw["model"] = {**raw["model"], "weights": WEIGHTS, "shapes": SHAPES}
    if cfg.sparsity.mode == "2:4":  # targets with sparse kernels (TensorRT's tensor cores)
        for name, section in raw["targets"].items():
            if "sparse_weights" in section:
                raw["targets"][name]["sparse_weights"] = True
    return raw
