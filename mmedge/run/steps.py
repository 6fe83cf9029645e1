"""The steps of `mmedge run`: what each reads (its key), writes, needs, and does.

prune (if the recipe prunes) → build each TARGET-PRECISION variant (plus the unpruned ONNX
Runtime FP32 baseline when pruning) → check TensorRT bundles → compare each with PyTorch FP32
→ per-branch parity against the FP32 ONNX export → bench with per-branch profiling. Every
step works through the same library calls as the single commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedge.errors import ArtifactError, DependencyMissing
from mmedge.hashing import sha256_files as files_sha
from mmedge.recipe import Recipe, load_recipe

REFERENCE = "onnxruntime-fp32"  # the FP32 export every per-branch parity is measured against
BASELINE = "onnxruntime-fp32-unpruned"
LATENCY = "latency.json"  # interleaved rounds over every variant: the report's speed-ups


@dataclass
class Step:
    name: str  # "prune", "build:onnxruntime-int8", ...
    needs: list[str]
    outputs: Callable[[], list[Path]]
    key: Callable[[], dict[str, Any]]
    action: Callable[[], dict[str, Any]]  # returns a summary kept in the run manifest
    unavailable: str | None = None  # why it cannot run on this machine (skipped, not failed)
    variant: str | None = None
    lane: str | None = None  # a device's name: lanes run in parallel, each in order
    # Why it cannot run, known only once the steps it needs ran (a device's runtimes).
    unavailable_now: Callable[[], str | None] | None = None


@dataclass
class RunContext:
    directory: Path
    recipe: Recipe  # as given
    recipe_path: Path

    @property
    def pruned_dir(self) -> Path:
        return self.directory / "pruned"

    def effective(self) -> Recipe:
        """The recipe later steps use: the pruned model's derived recipe when pruning."""
        if self.recipe.prune is None:
            return self.recipe
        return load_recipe(self.pruned_dir / "recipe.yaml")

    def artifact(self, variant: str) -> Path:
        return self.directory / variant


def _model_sha(recipe: Recipe) -> str:
    paths = [p for p in (recipe.model.weights, recipe.model.path) if p is not None]
    return files_sha(paths)


def _data_sha(recipe: Recipe, calibration: bool) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    if calibration and recipe.calibration is not None:
        cal = recipe.calibration
        parts["calibration"] = files_sha([cal.path]) if cal.path else cal.model_dump(mode="json")
    if recipe.eval is not None:
        parts["eval"] = files_sha([recipe.eval.path])
    return parts


def _artifact_sha(directory: Path) -> str | None:
    from mmedge.rundir import read_manifest

    try:
        return str(read_manifest(directory)["artifact"]["sha256"])
    except (ArtifactError, KeyError):  # not built (yet): its build step was skipped or failed
        return None


def plan(
    ctx: RunContext,
    targets: list[str] | None,
    probes: dict[str, Any],
    devices: list[Any] | None = None,
) -> list[Step]:
    from mmedge.targets import get_target, target_spec

    recipe = ctx.recipe
    variants = [v for v in recipe.run.variants if targets is None or v.split("-")[0] in targets]
    if REFERENCE not in variants:  # per-branch parity needs the FP32 export
        variants.insert(0, REFERENCE)
    steps: list[Step] = []
    pruning = recipe.prune is not None
    if pruning:
        steps.append(_prune_step(ctx))
        if recipe.run.baseline:
            steps.append(_build_step(ctx, BASELINE, "onnxruntime", "fp32", baseline=True))
    for variant in variants:
        target, precision = variant.split("-", 1)
        probe = probes[target]
        missing = None if probe.installed else f"{target} is not installed ({probe.hint})"
        steps.append(_build_step(ctx, variant, target, precision, unavailable=missing))
    for variant in variants:
        target = variant.split("-")[0]
        missing = None if probes[target].installed else f"{target} is not installed"
        if target_spec(target).rules is not None:
            steps.append(_check_step(ctx, variant))
        elsewhere = get_target(target).runtime_missing() if probes[target].installed else None
        if elsewhere is not None:
            missing = f"{elsewhere} (mmedge build {ctx.artifact(variant)})"
        steps.append(_compare_step(ctx, variant, missing))
        if variant != REFERENCE:
            parity_missing = None if probes[target].installed else missing
            if not recipe.branches:
                parity_missing = "the recipe declares no branches (module-name prefixes)"
            steps.append(_parity_step(ctx, variant, parity_missing))
        steps.append(_bench_step(ctx, variant, missing))
    if pruning and recipe.run.baseline:
        steps.append(_compare_step(ctx, BASELINE, None, baseline=True))
        steps.append(_bench_step(ctx, BASELINE, None))
    timed = [s.variant for s in steps if s.name.startswith("bench:") and s.unavailable is None]
    steps.append(_latency_step(ctx, [v for v in timed if v is not None]))
    if devices:
        from mmedge.run.devices import plan_devices

        built = [s.variant for s in steps if s.name.startswith("build:") and s.unavailable is None]
        steps += plan_devices(ctx, [v for v in built if v is not None], devices)
    return steps


def _latency_step(ctx: RunContext, variants: list[str]) -> Step:
    from mmedge.hardware import cpu_summary
    from mmedge.run.latency import interleaved_latency

    out = ctx.directory / LATENCY
    cfg = ctx.recipe.run
    baseline = BASELINE if BASELINE in variants else REFERENCE

    def action() -> dict[str, Any]:
        # Variants whose build failed are left out rather than failing the comparison.
        from mmedge.rundir import MANIFEST

        ready = {v: ctx.artifact(v) for v in variants if (ctx.artifact(v) / MANIFEST).is_file()}
        if baseline not in ready:
            raise ArtifactError(f"the baseline {baseline} was not built: no speed-ups to measure")
        record = interleaved_latency(ready, baseline, cfg.latency_rounds, cfg.latency_seconds, out)
        return {"speedup": record["speedup"]}

    return Step(
        "latency",
        [f"build:{baseline}"],
        lambda: [out],
        lambda: {
            "artifacts": {v: _artifact_sha(ctx.artifact(v)) for v in variants},
            "bench": ctx.recipe.bench.model_dump(mode="json"),
            "rounds": [cfg.latency_rounds, cfg.latency_seconds],
            "cpu": cpu_summary(),
        },
        action,
    )


def _prune_step(ctx: RunContext) -> Step:
    from mmedge.prune.artifact import _prune_sha, prune_artifact

    def action() -> dict[str, Any]:
        manifest = prune_artifact(ctx.recipe, ctx.pruned_dir, force=True)
        report = manifest["steps"]["prune"]
        return {"accuracy": report["after"]["accuracy"], "before": report["before"]["accuracy"]}

    return Step(
        "prune",
        [],
        lambda: [ctx.pruned_dir / "manifest.json", ctx.pruned_dir / "recipe.yaml"],
        lambda: {"prune": _prune_sha(ctx.recipe), "model": _model_sha(ctx.recipe)},
        action,
    )


def _build_step(
    ctx: RunContext,
    variant: str,
    target: str,
    precision: str,
    unavailable: str | None = None,
    baseline: bool = False,
) -> Step:
    from mmedge.artifacts import build_artifact
    from mmedge.quantize.isa import profile_name

    def recipe() -> Recipe:
        return ctx.recipe if baseline else ctx.effective()

    def key() -> dict[str, Any]:
        r = recipe()
        return {
            "recipe": r.artifact_sha256(target, precision),
            "model": _model_sha(r),
            **_data_sha(r, calibration=precision == "int8"),
            "variant": variant,
            # isa: auto quantizes for this machine's CPU: another CPU class is another artifact.
            "isa": profile_name(r.quantization.isa) if precision == "int8" else None,
        }

    def action() -> dict[str, Any]:
        r = recipe()
        # With a gate in the recipe, every INT8 variant is the fastest policy that meets it.
        auto = precision == "int8" and r.quantization.accuracy is not None
        manifest = build_artifact(r, target, precision, ctx.artifact(variant), True, auto=auto)
        summary: dict[str, Any] = {"bytes": manifest["artifact"]["bytes"]}
        if auto:
            summary["search"] = manifest["steps"]["search"]
        return summary

    needs = [] if baseline or ctx.recipe.prune is None else ["prune"]
    return Step(
        f"build:{variant}",
        needs,
        lambda: [ctx.artifact(variant) / "manifest.json"],
        key,
        action,
        unavailable,
        variant,
    )


def _check_step(ctx: RunContext, variant: str) -> Step:
    from mmedge.artifacts import check_artifact
    from mmedge.errors import RuleViolation
    from mmedge.findings import summary

    def action() -> dict[str, Any]:
        data = summary(check_artifact(ctx.artifact(variant)))
        if data["errors"]:
            raise RuleViolation(f"{data['errors']} rule violation(s) in {variant}")
        return {"errors": data["errors"], "warnings": data["warnings"]}

    return Step(
        f"check:{variant}",
        [f"build:{variant}"],
        lambda: [],
        lambda: {"artifact": _artifact_sha(ctx.artifact(variant))},
        action,
        variant=variant,
    )


def _compare_step(
    ctx: RunContext, variant: str, unavailable: str | None, baseline: bool = False
) -> Step:
    from mmedge.artifacts import compare_artifact, enforce_gate

    directory = ctx.artifact(variant)

    def action() -> dict[str, Any]:
        # Per-branch parity is a step of its own in a run (against the run's FP32 export).
        report = compare_artifact(directory, samples=ctx.recipe.run.compare_samples, parity=False)
        enforce_gate(report, directory)
        return {"accuracy": report.accuracy, "top1_agreement": report.top1_agreement}

    def key() -> dict[str, Any]:
        r = ctx.recipe if baseline else ctx.effective()
        return {
            "artifact": _artifact_sha(directory),
            **_data_sha(r, calibration=False),
            "gate": r.compare.model_dump(mode="json"),
            "samples": ctx.recipe.run.compare_samples,
        }

    return Step(
        f"compare:{variant}",
        [f"build:{variant}"],
        lambda: [directory / "compare.json"],
        key,
        action,
        unavailable,
        variant,
    )


def _parity_step(ctx: RunContext, variant: str, unavailable: str | None) -> Step:
    from mmedge.parity import branch_parity

    directory = ctx.artifact(variant)

    def action() -> dict[str, Any]:
        record = branch_parity(directory, ctx.artifact(REFERENCE), ctx.recipe.run.compare_samples)
        return {"most_affected": record["most_affected"]}

    return Step(
        f"parity:{variant}",
        [f"build:{variant}", f"build:{REFERENCE}"],
        lambda: [directory / "parity.json"],
        lambda: {
            "artifact": _artifact_sha(directory),
            "reference": _artifact_sha(ctx.artifact(REFERENCE)),
            **_data_sha(ctx.effective(), calibration=False),
            "samples": ctx.recipe.run.compare_samples,
        },
        action,
        unavailable,
        variant,
    )


def _bench_step(ctx: RunContext, variant: str, unavailable: str | None) -> Step:
    from mmedge.artifacts import bench_artifact
    from mmedge.hardware import cpu_summary

    directory = ctx.artifact(variant)
    out = directory / "bench-run.json"

    def action() -> dict[str, Any]:
        from mmedge.rundir import atomic_write_json

        result = bench_artifact(directory, {"profile": True}).to_json()
        atomic_write_json(out, result)
        return {"p50_ms": result["latency_ms"]["p50"]}

    return Step(
        f"bench:{variant}",
        [f"build:{variant}"],
        lambda: [out],
        lambda: {
            "artifact": _artifact_sha(directory),
            "bench": ctx.recipe.bench.model_dump(mode="json"),
            "cpu": cpu_summary(),
        },
        action,
        unavailable,
        variant,
    )


def require_all(probes: dict[str, Any], targets: list[str]) -> None:
    """--strict: every requested target must be usable here."""
    for target in targets:
        if not probes[target].installed:
            raise DependencyMissing(
                f"target {target} is not installed (--strict)", hint=probes[target].hint
            )
