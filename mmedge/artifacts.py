"""Library entry points: build an artifact, compare it, bench it. The CLI only renders these."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from mmedge.bench import BenchResult, summarize, time_calls
from mmedge.branches import time_by_branch
from mmedge.compare import CompareReport, Runner, compare_runners, gate_failures
from mmedge.data.datasets import DataSource, open_calibration, open_compare_data
from mmedge.errors import (
    AccuracyError,
    ArtifactError,
    DependencyMissing,
    InputSpecError,
    MmedgeError,
    RecipeError,
)
from mmedge.findings import Finding
from mmedge.inputs import dummy_feeds
from mmedge.progress import Status, quiet
from mmedge.recipe import BenchConfig, Recipe, format_validation_error, parse_recipe
from mmedge.rundir import (
    atomic_write_json,
    check_output_dir,
    read_manifest,
    staged_output,
    verified_artifact,
    write_manifest,
)
from mmedge.targets import (
    OnDeviceTarget,
    Session,
    SessionConfig,
    ThroughputSession,
    get_target,
    target_spec,
)
from mmedge.workspace import scratch_dir


def build_artifact(
    recipe: Recipe,
    target_name: str,
    precision: str,
    out: Path,
    force: bool = False,
    progress: Status = quiet,
    auto: bool = False,
) -> dict[str, Any]:
    """Export (or take the recipe's ONNX), check parity, build for the target; return the manifest.

    ``auto``: search the fastest INT8 policy that meets ``quantization.accuracy`` first.
    """
    spec = target_spec(target_name)
    target = spec.factory()
    probe = target.probe()
    if not probe.installed:  # before any export work, not after it
        raise DependencyMissing(f"the {target_name} backend is not installed", hint=probe.hint)
    if precision not in spec.precisions:
        raise RecipeError(
            f"target {target_name} has no precision {precision!r}; choose {spec.precisions}"
        )
    identity = {
        "target": target_name,
        "precision": precision,
        "recipe_sha256": recipe.artifact_sha256(target_name, precision),
    }
    check_output_dir(out, identity, force)
    if auto:
        from mmedge.quantize.search import check_auto

        check_auto(recipe, precision)
    needs_calib = target.needs_calibration(precision, recipe)
    calib = open_calibration(recipe) if needs_calib else None  # fails fast on bad data
    # Parity after export also runs on one real batch when the recipe has data.
    parity_data = calib or (open_calibration(recipe) if recipe.calibration else None)
    with staged_output(out) as stage, scratch_dir("build") as tmp:
        source: Path | Any
        if spec.source == "torch":  # built from the model itself (torch.export), not ONNX
            source, steps = _torch_source(recipe, progress)
        else:
            source, steps = _fp32_onnx(recipe, Path(tmp), parity_data, progress)
        if calib is not None:
            steps["calibration"] = calib.describe()
        if auto:
            from mmedge.quantize.search import search_into

            assert calib is not None  # INT8 on every target is calibrated
            result, recipe, steps["search"] = search_into(
                stage, recipe, target, source, calib, out, progress
            )
        else:
            progress(f"building {target_name} {precision}")
            result = target.build(source, recipe, precision, stage, calib)
        steps["build"] = result.details
        progress("writing manifest")
        manifest = write_manifest(
            stage,
            result.files,
            {
                "identity": identity,
                "target": target_name,
                "precision": precision,
                # The sweep section shapes no artifact (and an older reader would refuse it).
                "recipe": recipe.model_dump(mode="json", exclude={"sweep"}),
                "steps": steps,
            },
        )
    if auto:
        from mmedge.quantize.search import workdir_for

        shutil.rmtree(workdir_for(out), ignore_errors=True)  # its record is in the artifact
    return manifest


def _fp32_onnx(
    recipe: Recipe,
    tmp: Path,
    calib: DataSource | None,
    progress: Status,
    check: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """The FP32 ONNX every target starts from, with what was done to get it. ``check=False``
    skips the parity check against PyTorch (a reference export whose outputs are compared
    with PyTorch anyway)."""
    src = recipe.model.path
    if src is not None and src.suffix == ".onnx":
        _check_onnx_source(src, recipe)
        return src, {"export": {"source": str(src)}}
    from mmedge.export import check_parity, export_onnx
    from mmedge.model import load_torch_model

    progress("loading PyTorch model")
    model = load_torch_model(recipe)
    out = tmp / "fp32.onnx"
    progress(f"exporting ONNX ({recipe.export.exporter})")
    exported = export_onnx(model, recipe, out)
    parity = None
    if check:
        progress("checking ONNX against PyTorch")
        extra = calib.first(recipe.calibration.batch) if calib and recipe.calibration else None
        parity = check_parity(model, out, recipe, extra)
    export = {
        "exporter": exported.exporter,
        "seconds": round(exported.seconds, 3),
        "fallback_reason": exported.fallback_reason,
        "opset": recipe.export.opset,
    }
    return out, {"export": export, "parity": parity}


def _torch_source(recipe: Recipe, progress: Status) -> tuple[Any, dict[str, Any]]:
    """The PyTorch model, for targets that build from it (TargetSpec.source == "torch")."""
    src = recipe.model.path
    if src is not None and src.suffix == ".onnx":
        raise RecipeError(
            f"the recipe's model is an ONNX file ({src.name}); this target builds from the "
            "PyTorch model (model.factory or a .pt2)"
        )
    from mmedge.model import load_torch_model

    progress("loading PyTorch model")
    return load_torch_model(recipe), {"export": {"source": "pytorch"}}


def _check_onnx_source(path: Path, recipe: Recipe) -> None:
    from mmedge.onnxio import read_onnx

    graph = read_onnx(path).graph
    names = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if sorted(names) != sorted(recipe.inputs):
        raise InputSpecError(
            f"{path.name} has inputs {names}, recipe declares {list(recipe.inputs)}"
        )


def open_artifact(directory: Path) -> tuple[dict[str, Any], Recipe, Path]:
    manifest = read_manifest(directory)
    artifact = verified_artifact(directory, manifest)
    return manifest, parse_recipe(manifest["recipe"], f"{directory}/manifest.json recipe"), artifact


def load_session(
    manifest: dict[str, Any], recipe: Recipe, artifact: Path, config: SessionConfig
) -> Session:
    if manifest["target"] == "pytorch":
        raise ArtifactError(
            f"{artifact.parent} holds a pruned PyTorch model, not a target artifact",
            hint=f"export it first: mmedge export {artifact.parent / 'recipe.yaml'} --target ...",
        )
    target = get_target(manifest["target"])
    return target.load(artifact, recipe, manifest["precision"], config)


def reference_runner(recipe: Recipe, reference_dir: Path | None, config: SessionConfig) -> Runner:
    """Another artifact, the recipe's source ONNX, or the PyTorch FP32 model."""
    if reference_dir is not None:
        manifest, ref_recipe, artifact = open_artifact(reference_dir)
        return load_session(manifest, ref_recipe, artifact, config).run
    src = recipe.model.path
    if src is not None and src.suffix == ".onnx":
        from mmedge.targets.onnxruntime import OrtSession

        return OrtSession(src, config.threads).run
    from mmedge.model import load_torch_model, torch_runner
    from mmedge.refcache import cached_reference

    def load() -> Runner:
        try:
            model = load_torch_model(recipe)
        except DependencyMissing as err:
            raise DependencyMissing(
                f"{err.message}; the default reference is the PyTorch FP32 model",
                hint=f"{err.hint}, or compare against an FP32 artifact: --reference DIR",
            ) from None
        return torch_runner(model, recipe.outputs)  # type: ignore[no-any-return]

    return cached_reference(recipe, load)  # type: ignore[no-any-return]


def compare_artifact(
    directory: Path,
    reference_dir: Path | None = None,
    samples: int | None = None,
    device: str | None = None,
    parity: bool = True,
    eval_path: Path | None = None,
    recipe_path: Path | None = None,
    recorded: Path | None = None,
) -> CompareReport:
    """Compare with the reference on the recipe's data; save compare.json beside the artifact.

    ``device`` applies to the candidate only; the reference runs where it runs by default.
    ``parity``: also measure each branch against the FP32 export (reduced-precision artifacts
    of recipes with branches), to say which branch to blame when the gate fails.
    ``recorded``: inputs and reference outputs recorded elsewhere (`mmedge.data.recorded`), for
    a device that cannot run the reference.
    """
    manifest, recipe, artifact = open_artifact(directory)
    if recipe_path is not None:  # the gate and eval set of an edited recipe, without a rebuild
        recipe = _with_recipe(recipe, recipe_path)
    if eval_path is not None:  # the frozen recipe's data, replaced without a rebuild
        recipe = _with_eval(recipe, eval_path)
    config = SessionConfig(threads=recipe.bench.threads)
    target = get_target(manifest["target"])
    on_device = isinstance(target, OnDeviceTarget) and target_spec(manifest["target"]).on_device
    if recorded is not None:
        from mmedge.data.recorded import recorded_source

        data, reference = recorded_source(recorded, recipe, "the recorded reference")
        data = data.limited(samples) if samples is not None else data
    elif on_device:
        # The bundle's own inputs and FP32 outputs: no torch or recipe data on the device.
        assert isinstance(target, OnDeviceTarget)
        data, replay = target.recorded_reference(directory, recipe)
        data = data.limited(samples) if samples is not None else data
        reference = reference_runner(recipe, reference_dir, config) if reference_dir else replay
    else:
        data = open_compare_data(recipe, samples)
        reference = reference_runner(recipe, reference_dir, config)
    candidate = load_session(manifest, recipe, artifact, replace(config, device=device))
    warnings = isa_warnings(manifest, device)
    batch = recipe.eval.batch if recipe.eval else 16
    score = recipe.eval.output if recipe.eval else None
    with candidate:
        report = compare_runners(reference, candidate.run, data, batch, score)
    report.failures = gate_failures(report, recipe.compare)
    report.warnings = warnings
    if recipe.compare.max_accuracy_drop is not None and report.accuracy is None:
        report.warnings.append(
            "max_accuracy_drop was not checked: the data has no labels (agreement with the "
            "reference and cosine/SQNR were)"
        )
    if parity and recorded is None and recipe.branches and manifest["precision"] != "fp32":
        report.parity = _parity_or_none(manifest, recipe, artifact, samples)
    original = None if reference_dir or recorded else pruned_from(recipe)
    if original is not None and not on_device:
        report.original = _against_original(original, candidate_config(config, device),
                                            manifest, recipe, artifact, data, batch, score)  # fmt: skip
    if not report.passed:
        report.next_steps = next_steps(report, manifest)
    default_reference = "fp32-recorded" if on_device or recorded else "pytorch-fp32"
    record = {
        **report.to_json(),
        "reference": str(reference_dir or default_reference),
        "data": data.describe(),
    }
    report.warnings += save_beside(directory, "compare.json", record)
    return report


def save_beside(directory: Path, name: str, data: dict[str, Any]) -> list[str]:
    """Save a result next to its artifact; a directory that refuses (read-only, full) costs
    the saved copy, not the measurement just made: a warning, which the caller prints."""
    from mmedge.failures import os_error

    try:
        atomic_write_json(directory / name, data)
    except OSError as err:
        found = os_error(err)
        why = f"{found.message}; {found.hint}" if found else f"{type(err).__name__}: {err}"
        return [f"{name} was not saved in {directory}: {why}"]
    return []


_SAME_MODEL = ("model", "inputs", "axes", "outputs", "branches")


def _with_recipe(frozen: Recipe, path: Path) -> Recipe:
    """The artifact's recipe with the eval set, compare gate and eval settings of ``path``,
    which must describe the same model (else the artifact would be judged as another one)."""
    from mmedge.recipe import load_recipe

    edited = load_recipe(path)
    for field in _SAME_MODEL:
        if getattr(edited, field) != getattr(frozen, field):
            raise RecipeError(
                f"--recipe {path}: its '{field}' differs from the recipe the artifact was built "
                "from, so it describes another model",
                hint="rebuild the artifact from this recipe (export / quantize), or give --eval",
            )
    return frozen.model_copy(update={"eval": edited.eval, "compare": edited.compare})


def _with_eval(recipe: Recipe, path: Path) -> Recipe:
    from mmedge.recipe import with_overrides

    if not path.exists():
        raise InputSpecError(f"--eval {path}: not found (a directory of .npz shards or one .npz)")
    return with_overrides(recipe, {"eval.path": str(path.resolve())})


def pruned_from(recipe: Recipe) -> Recipe | None:
    """The recipe of the model a pruned model was made from (its prune manifest records it),
    or None when the recipe's model is not one mmedge pruned (a program, or weights + shapes)."""
    src = recipe.model.shapes or recipe.model.path
    if src is None or src.suffix not in {".pt2", ".json"}:
        return None
    manifest_path = src.parent / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or "prune" not in (manifest.get("steps") or {}):
            return None
        original = parse_recipe(manifest["recipe"], f"{manifest_path} recipe")
    except (OSError, ValueError, KeyError, TypeError, MmedgeError):
        return None  # moved or edited: the comparison with the pruned model still stands
    # The same data as this comparison (the pruned recipe may have had its own eval path).
    return original.model_copy(update={"eval": recipe.eval, "compare": recipe.compare})


def candidate_config(config: SessionConfig, device: str | None) -> SessionConfig:
    return replace(config, device=device)


def _against_original(
    original: Recipe,
    config: SessionConfig,
    manifest: dict[str, Any],
    recipe: Recipe,
    artifact: Path,
    data: DataSource,
    batch: int,
    score: str | None,
) -> dict[str, Any] | None:
    try:
        reference = reference_runner(original, None, config)
    except MmedgeError as err:  # the original model's files are gone: say so, do not fail
        return {"error": err.message}
    candidate = load_session(manifest, recipe, artifact, config)
    with candidate:
        report = compare_runners(reference, candidate.run, data, batch, score)
    main = next(iter(report.outputs.values()))
    return {
        "model": original.model.factory or str(original.model.path),
        "top1_agreement": report.top1_agreement,
        "cosine": main.cosine,
        "sqnr_db": main.sqnr_db,
        "accuracy": report.accuracy,
    }


def _parity_or_none(
    manifest: dict[str, Any], recipe: Recipe, artifact: Path, samples: int | None
) -> dict[str, Any] | None:
    """Per-branch parity against a fresh FP32 export; None where none can be made (no torch
    on a device, model files not here: `compare --reference DIR` needs neither) or the graph
    keeps no branch boundaries. It explains a comparison; it never fails one."""
    from mmedge.parity import parity_against

    with scratch_dir("parity") as tmp:
        try:
            source, _ = _fp32_onnx(recipe, Path(tmp), None, quiet, check=False)
            return parity_against(source, manifest, recipe, artifact, samples)
        except MmedgeError:
            return None


def next_steps(report: CompareReport, manifest: dict[str, Any]) -> list[str]:
    """What to try when the gate fails, most specific first."""
    found = []
    if report.warnings:
        found.append("re-quantize for the CPU this runs on (--isa, or quantization.isa: auto)")
    worst = (report.parity or {}).get("most_affected")
    if worst is not None:
        sqnr = report.parity["branches"][worst]["sqnr_db"]  # type: ignore[index]
        found.append(
            f"the {worst} branch loses most (SQNR {sqnr:.1f} dB against the FP32 export): "
            f"keep it in float with --keep-fp32 {worst}, or let `mmedge quantize --auto` "
            "return only its most harmful layers to float"
        )
    if manifest["precision"] == "int8":
        found.append(
            "`mmedge quantize RECIPE --target "
            f"{manifest['target']} --auto` searches the fastest INT8 policy that meets "
            "quantization.accuracy (add that gate to the recipe)"
        )
    return found


def isa_warnings(manifest: dict[str, Any], device: str | None) -> list[str]:
    """An INT8 CPU artifact quantized for other INT8 kernels than this CPU's."""
    from mmedge.hardware import host_profile
    from mmedge.quantize.isa import artifact_isa, kernel_mismatch

    built_for = artifact_isa(manifest)
    if built_for is None or not target_spec(manifest["target"]).cpu_int8:
        return []
    configured = manifest["recipe"]["targets"].get(manifest["target"], {}).get("device")
    if (device or configured or "CPU") != "CPU":  # a GPU or NPU runs its own kernels
        return []
    found = kernel_mismatch(built_for, host_profile())
    return [found] if found else []


def enforce_gate(report: CompareReport, directory: Path) -> None:
    if not report.passed:
        raise AccuracyError(
            "comparison gate failed:\n  " + "\n  ".join(report.failures),
            hint=f"the artifact is kept; details in {directory / 'compare.json'}",
        )


def bench_settings(recipe: Recipe, overrides: dict[str, Any]) -> BenchConfig:
    merged = {**recipe.bench.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        cfg = BenchConfig.model_validate(merged)
    except ValidationError as err:
        raise RecipeError(f"invalid bench settings:\n{format_validation_error(err)}") from None
    limit = recipe.axes[recipe.batch_axis].max
    if cfg.batch > limit:
        raise RecipeError(
            f"bench batch {cfg.batch} is above the recipe's batch axis max of {limit}",
            hint=f"raise axes.{recipe.batch_axis}.max in the recipe and rebuild the artifact",
        )
    return cfg


def bench_artifact(
    directory: Path, overrides: dict[str, Any] | None = None, device: str | None = None
) -> BenchResult:
    """Time the artifact on inputs at the configured shape point; save bench-*.json beside it.

    Inputs are random at fixed shapes, and backends that can compile for static shapes do
    (as benchmark_app and trtexec do): these models' cost does not depend on values, and a
    stated shape is what makes a figure comparable with those tools.
    """
    manifest, recipe, artifact = open_artifact(directory)
    cfg = bench_settings(recipe, overrides or {})
    feeds = dummy_feeds(recipe, cfg.shape, batch=cfg.batch)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    config = SessionConfig(cfg.threads, cfg.mode, device, static_shapes=shapes)
    session = load_session(manifest, recipe, artifact, config)
    runtime: np.ndarray | None
    with session:
        if cfg.mode == "throughput":
            if not isinstance(session, ThroughputSession):
                raise RecipeError(
                    f"{manifest['target']} has no throughput mode (several requests in flight); "
                    "use --mode latency"
                )
            run = session.run_throughput(feeds, cfg.warmup, cfg.iterations, cfg.duration_s)
            samples, total_s, requests = run.latencies_ms, run.total_s, run.requests
            runtime = samples  # per-request latencies come from the runtime in this mode
        else:
            samples, runtime = _time_prepared(session.prepare(feeds), cfg)
            total_s, requests = float(np.sum(samples)) / 1e3, 1
        settings = {**session.settings(), "requests": requests}
    branch_ms = _branch_profile(manifest, recipe, artifact, config, feeds) if cfg.profile else None
    result = summarize(
        samples,
        runtime_ms=runtime,
        total_s=total_s,
        target=manifest["target"],
        precision=manifest["precision"],
        mode=cfg.mode,
        batch=cfg.batch,
        threads=cfg.threads,
        shapes={k: list(v) for k, v in shapes.items()},
        settings=settings,
        branch_ms=branch_ms,
        warnings=isa_warnings(manifest, device) + thread_warnings(cfg.threads),
    )
    name = f"bench-{cfg.mode}-b{cfg.batch}-t{cfg.threads}-{cfg.shape}.json"
    result.warnings += save_beside(directory, name, result.to_json())
    return result


def thread_warnings(threads: int) -> list[str]:
    cores = os.cpu_count() or 1
    if threads <= cores:
        return []
    return [
        f"{threads} threads on {cores} logical CPUs: threads beyond the CPUs only contend "
        "for them, so this figure is not what the device gives with the right setting"
    ]


def _time_prepared(
    call: Callable[[], float | None], cfg: BenchConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Wall-clock ms per call, and the runtime's own ms per call where it reports them."""
    reported: list[float] = []

    def timed() -> None:
        value = call()
        if value is not None:
            reported.append(value)

    samples = time_calls(timed, cfg.warmup, cfg.iterations, cfg.duration_s)
    own = np.asarray(reported[len(reported) - samples.size :]) if reported else None
    return samples, own


def _branch_profile(
    manifest: dict[str, Any],
    recipe: Recipe,
    artifact: Path,
    config: SessionConfig,
    feeds: dict[str, np.ndarray],
) -> dict[str, float] | None:
    """Median per-layer times (a separate, profiling session: counters cost speed) per branch;
    None where the runtime has no per-layer profiler."""
    with load_session(manifest, recipe, artifact, replace(config, profile=True)) as session:
        if not session.profiles_layers:
            return None
        session.run(feeds)  # warm-up, not profiled apart: backends record from the first run
        layers = session.layer_times(feeds, runs=20)
    return time_by_branch(layers, recipe.branches)


def inspect_recipe(recipe: Recipe) -> dict[str, Any]:
    """Inputs, axes, outputs and per-branch parameters and MACs (at opt shapes, batch 1)."""
    from mmedge.stats import branch_stats, onnx_params_by_branch, stats_json

    feeds = dummy_feeds(recipe, "opt", batch=1)
    src = recipe.model.path
    if src is not None and src.suffix == ".onnx":
        import onnx

        _check_onnx_source(src, recipe)
        stats = onnx_params_by_branch(onnx.load(str(src)), recipe.branches)
    else:
        from mmedge.model import load_torch_model

        stats = branch_stats(load_torch_model(recipe), feeds, recipe.branches)
    return {
        "name": recipe.name,
        "inputs": {
            n: {
                "shape": spec.shape,
                "dtype": spec.dtype,
                "modality": spec.modality,
                "opt_shape": list(feeds[n].shape),
            }
            for n, spec in recipe.inputs.items()
        },
        "axes": {n: a.model_dump() for n, a in recipe.axes.items()},
        "outputs": recipe.outputs,
        "branches": recipe.branches,
        "stats": stats_json(stats),
    }


def check_artifact(directory: Path) -> list[Finding]:
    """The artifact's target's rule checker (TargetSpec.rules) on it; saved as check.json."""
    import importlib

    from mmedge.findings import summary
    from mmedge.targets import specs, target_spec

    manifest, recipe, artifact = open_artifact(directory)
    spec = target_spec(manifest["target"])
    if spec.rules is None:
        with_rules = [s.name for s in specs().values() if s.rules]
        raise RecipeError(
            f"{directory} is a {spec.name} artifact, which has no rule checker; targets with "
            f"one: {', '.join(with_rules) or 'none'}"
        )
    module_name, function = spec.rules.split(":")
    found: list[Finding] = getattr(importlib.import_module(module_name), function)(artifact, recipe)
    atomic_write_json(directory / "check.json", summary(found))
    return found
