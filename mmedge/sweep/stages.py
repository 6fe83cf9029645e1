"""A trial's stages: the run engine's steps, keyed as `mmedge run` keys them, stored once.

prune → build:V → compare:V run as Ray tasks (anywhere in the cluster); bench:V runs here, on
the machine the sweep measures ("local"); compare@D:V and bench@D:V run on fleet devices.
Each stage is the run engine's Step (same key, same action), made for a `SweepContext` whose
inputs (the pruned model, the built artifact) are read from the content store, so a key names
the same work in `mmedge run` and in every trial.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmedge.errors import MmedgeError
from mmedge.fleet.inventory import Device
from mmedge.recipe import Recipe, parse_recipe
from mmedge.run.state import key_of
from mmedge.run.steps import RunContext, Step
from mmedge.sweep.store import Store

LOCAL = "local"  # the device name of the machine that runs the sweep
# Held while this machine measures latency, and by a device's stage (its pushes hash and
# encrypt here, its compare records the PyTorch reference here) when this machine is measured
# too: a busy CPU here would be in the local figure.
LOCAL_CPU = threading.Lock()


@dataclass
class SweepContext(RunContext):
    """A run context whose pruned model and artifacts may live elsewhere (the store)."""

    pruned: Path | None = None
    built: dict[str, Path] = field(default_factory=dict)

    @property
    def pruned_dir(self) -> Path:
        return self.pruned if self.pruned is not None else self.directory / "pruned"

    def artifact(self, variant: str) -> Path:
        return self.built.get(variant, self.directory / variant)

    def effective(self) -> Recipe:
        """The trial's recipe on the pruned model. Not the pruned directory's recipe.yaml, as
        in a run: trials that differ only past pruning (quantization...) share one pruned
        model, and that file holds the settings of the trial that pruned it."""
        if self.recipe.prune is None:
            return self.recipe
        from mmedge.prune.artifact import derived_recipe
        from mmedge.recipe import parse_relative

        raw = derived_recipe(self.recipe, self.recipe.prune)
        return parse_relative(raw, self.pruned_dir, f"the pruned recipe of {self.recipe.name}")


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to redo a stage anywhere: plain data, sent to Ray tasks."""

    name: str  # prune, build:V, compare:V
    recipe: dict[str, Any]  # the trial's recipe, validated JSON
    recipe_path: str
    store: str
    prune_key: str | None = None
    build_key: str | None = None

    @property
    def kind(self) -> str:
        return self.name.split(":")[0]

    @property
    def variant(self) -> str | None:
        return self.name.split(":", 1)[1] if ":" in self.name else None


def context(spec: StageSpec, directory: Path) -> SweepContext:
    store = Store(Path(spec.store))
    recipe = parse_recipe(spec.recipe, f"sweep trial recipe ({spec.recipe_path})")
    ctx = SweepContext(directory, recipe, Path(spec.recipe_path))
    if spec.prune_key is not None:
        ctx.pruned = store.entry(spec.prune_key) / "pruned"
    if spec.build_key is not None:  # linked here: a compare writes its result beside it
        store.materialize(spec.build_key, directory)
    return ctx


def units(name: str, device: str = LOCAL) -> list[str]:
    """The files a stage writes, relative to the run directory: what the store keeps of it."""
    kind, _, variant = name.partition(":")
    kind = kind.split("@")[0]
    if kind == "prune":
        return ["pruned"]
    if kind == "build":
        return [variant]
    if device != LOCAL:
        return [f"{variant}/{kind}-on-{device}.json"]
    return [f"{variant}/compare.json" if kind == "compare" else f"{variant}/bench-run.json"]


def make_step(name: str, ctx: SweepContext, device: Device | None = None) -> Step:
    """The run engine's step of that name, its compares reporting rather than gating: a
    point below the gate is still a point (the sweep's constraints decide what is kept)."""
    from mmedge.run import devices, steps

    kind, _, variant = name.partition(":")
    if kind == "prune":
        return steps._prune_step(ctx)
    if kind == "build":
        target, precision = variant.split("-", 1)
        return steps._build_step(ctx, variant, target, precision)
    if kind == "compare":
        step = steps._compare_step(ctx, variant, None)
        step.action = lambda: _compare(ctx, variant)
        return step
    if kind == "bench":
        step = steps._bench_step(ctx, variant, None)
        step.action = lambda: _bench(ctx, variant)
        return step
    assert device is not None, name
    needs: list[str] = []
    if kind.startswith("compare@"):
        step = devices._remote_compare_step(ctx, device, variant, needs)
        step.action = lambda: _compare_on(ctx, device, variant)
        return step
    step = devices._remote_bench_step(ctx, device, variant, needs)
    step.action = lambda: _bench_on(ctx, device, variant)
    return step


# A built artifact serves every trial that builds the same thing, but carries the recipe of the
# trial that built it: measurements take the settings of the trial they are for (its key's).
def _bench(ctx: SweepContext, variant: str) -> dict[str, Any]:
    from mmedge.artifacts import bench_artifact
    from mmedge.rundir import atomic_write_json

    directory = ctx.artifact(variant)
    settings = {**ctx.recipe.bench.model_dump(), "profile": True}
    result = bench_artifact(directory, settings).to_json()
    atomic_write_json(directory / "bench-run.json", result)
    return {"p50_ms": result["latency_ms"]["p50"]}


def bench_flags(ctx: SweepContext) -> list[str]:
    """The trial's bench settings as `mmedge bench` flags, for the device's mmedge."""
    cfg = ctx.recipe.bench
    flags = ["--warmup", str(cfg.warmup), "--iterations", str(cfg.iterations), "--batch",
             str(cfg.batch), "--threads", str(cfg.threads), "--shape", cfg.shape, "--mode",
             cfg.mode, "--profile"]  # fmt: skip
    return flags + (["--duration", str(cfg.duration_s)] if cfg.duration_s else [])


def _bench_on(ctx: SweepContext, device: Device, variant: str) -> dict[str, Any]:
    from mmedge.fleet.commands import bench_on
    from mmedge.fleet.remote import Remote

    result = bench_on(Remote(device), ctx.artifact(variant), bench_flags(ctx))
    return {"p50_ms": result["latency_ms"]["p50"], "warnings": result["warnings"]}


def stage_key(name: str, ctx: SweepContext, device: Device | None = None) -> str:
    return key_of({"step": name.split(":")[0], **make_step(name, ctx, device).key()})


def _compare(ctx: SweepContext, variant: str) -> dict[str, Any]:
    from mmedge.artifacts import compare_artifact

    ev = ctx.effective().eval
    report = compare_artifact(ctx.artifact(variant), samples=ctx.recipe.run.compare_samples,
                              parity=False, eval_path=ev.path if ev else None)  # fmt: skip
    return figures(report.to_json())


def _compare_on(ctx: SweepContext, device: Device, variant: str) -> dict[str, Any]:
    from mmedge.fleet.commands import compare_on, reference_pack
    from mmedge.fleet.remote import Remote
    from mmedge.workspace import scratch_dir

    directory = ctx.artifact(variant)
    samples = ctx.recipe.run.compare_samples
    with scratch_dir("reference") as tmp:
        pack = Path(tmp) if reference_pack(directory, samples, Path(tmp)) else None
        return figures(compare_on(Remote(device), directory, samples, pack))


def figures(compare: dict[str, Any]) -> dict[str, Any]:
    """A compare's accuracy objective, in percent: top-1 accuracy on the labels, else agreement
    with the model before pruning (agreement with the pruned model says nothing of what pruning
    cost), else with the reference."""
    acc = compare.get("accuracy") or {}
    original = compare.get("original") or {}
    agreement = original.get("top1_agreement", compare.get("top1_agreement"))
    if acc.get("candidate") is not None:
        value, metric = acc["candidate"], "accuracy"
    elif agreement is not None:
        value, metric = 100 * agreement, "top1_agreement"
    else:
        value, metric = None, None
    return {
        "accuracy": value,
        "metric": metric,
        "reference_accuracy": acc.get("reference"),
        "top1_agreement": compare.get("top1_agreement"),
        "passed": compare.get("passed", compare.get("exit_code", 0) == 0),
        "failures": compare.get("failures") or [],
    }


def run_stage(spec: StageSpec, key: str) -> dict[str, Any]:
    """A Ray task's body: redo the stage in a scratch directory beside the store, publish its
    files under ``key``. User errors come back as a failed record (no retry can fix them); a
    dead worker is Ray's to retry, and a retry of a published stage only reads the record."""
    import ray

    store = Store(Path(spec.store))
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    done = store.get(key)
    if done is not None:
        return {**done, "status": "ok", "cached": True}
    scratch = store.root / "tmp" / f"work-{key[:16]}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    try:
        ctx = context(spec, scratch)
        summary = make_step(spec.name, ctx).action()
        record = {"step": spec.name, "summary": summary, "node": node,
                  "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
        store.put(key, scratch, units(spec.name), record)
        return {**record, "status": "ok", "cached": False}
    except Exception as err:
        return failure(err, spec.name, started, node)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def failure(err: Exception, name: str, started: float, node: str) -> dict[str, Any]:
    """A failed stage's record: a user error's message and exit code; a bug's traceback."""
    from mmedge.failures import classify
    from mmedge.logs import write_log

    found = classify(err)
    if found is None:
        log = write_log("sweep-stage", traceback.format_exc())
        found = MmedgeError(f"{type(err).__name__}: {err}"[:600], f"traceback: {log}")
    return {
        "step": name,
        "status": "failed",
        "error": found.message,
        "hint": found.hint,
        "exit_code": found.exit_code,
        "node": node,
        "seconds": round(time.perf_counter() - started, 2),
    }


def trial_recipe_json(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")
