"""The ``mmedge`` command: parse, call the library, render. No logic lives here.

Every failure is caught in one place, ``_handled``, and printed without a traceback with its
exit code (``mmedge.failures`` classifies); Ctrl-C exits 130, SIGTERM 143.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand

from mmedge import __version__, console
from mmedge.clikit import JsonOpt
from mmedge.clikit import handled as _handled
from mmedge.errors import EXIT_CODES
from mmedge.fleet.cli import device_app

if TYPE_CHECKING:
    from mmedge.recipe import Recipe

P = ParamSpec("P")
R = TypeVar("R")

_EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())

app = typer.Typer(
    name="mmedge",
    help="Prune, quantize, export and benchmark multimodal fusion models for edge targets.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _registered_target(value: str) -> str:
    """--target is checked against the registry when the command runs, not when this module is
    imported: a target registered by a plugin or a test is a valid choice."""
    from mmedge.targets import target_names

    names = target_names()
    if value not in names:
        raise typer.BadParameter(
            f"{value!r} is not a registered target; choose from {', '.join(names)}"
        )
    return value


def _target_option(help: str) -> Any:
    return typer.Option(
        "onnxruntime",
        "--target",
        "-t",
        metavar="TARGET",
        callback=_registered_target,
        help=f"{help} One of the registered targets (listed below).",
    )


def _target_options_help() -> str:
    """Each target's own settings, from its config model: what -O FIELD=VALUE takes."""
    from mmedge.targets import specs

    lines = ["Targets, and their options (-O FIELD=VALUE, or targets.TARGET.FIELD in a recipe):"]
    for name, spec in specs().items():
        lines.append(f"{name} ({', '.join(spec.precisions)}): {spec.summary}.")
        fields = []
        for field, info in spec.config.model_fields.items():
            fields.append(f"{field}: {info.description}" if info.description else field)
        lines.append(f"  {name} options: {'; '.join(fields)}.")
    return escape("\n\n".join(lines))  # help is Rich markup: [default: ...] is text


class _TargetOptionsCommand(TyperCommand):
    """A command whose help ends with every registered target and its own options, read when
    the help is shown (a plugin's target appears without editing this module)."""

    @property
    def epilog(self) -> str:
        return f"{self._epilog}\n\n{_target_options_help()}".strip()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        self._epilog = value or ""


def _option_overrides(target: str, values: list[str] | None) -> dict[str, Any]:
    """-O FIELD=VALUE (YAML values: 3, true, [a, b]) → targets.TARGET.FIELD, checked against
    the target's config model with the rest of the recipe."""
    import yaml

    from mmedge.errors import RecipeError

    found: dict[str, Any] = {}
    for item in values or []:
        field, sep, raw = item.partition("=")
        if not sep or not field.strip():
            raise RecipeError(f"-O takes FIELD=VALUE (e.g. -O device=GPU), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        found[f"targets.{target}.{field.strip()}"] = value
    return found


OptionOpt = typer.Option(
    None,
    "--option",
    "-O",
    help="FIELD=VALUE of the target's own settings (repeatable; listed below).",
)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class BenchMode(str, Enum):
    latency = "latency"
    throughput = "throughput"


class Method(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantMode(str, Enum):
    static = "static"
    dynamic = "dynamic"


class ShapePoint(str, Enum):
    min = "min"
    opt = "opt"
    max = "max"


def _version(value: bool) -> None:
    if value:
        console.out.print(f"mmedge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Prune, quantize, export and benchmark multimodal fusion models for edge targets."""


RecipeArg = typer.Argument(..., help="Recipe YAML file.", show_default=False)
ArtifactArg = typer.Argument(..., help="An artifact directory made by export or quantize.")
IsaOpt = typer.Option(
    None,
    "--isa",
    help="The CPU the INT8 artifact will run on: auto (this one), x86-avx2, x86-avx512, "
    "x86-vnni, x86-amx, arm-neon, arm-dotprod, arm-i8mm (overrides quantization.isa).",
)
DeviceOpt = typer.Option(
    None,
    help="Device, for targets that have several (OpenVINO: CPU, GPU, NPU, AUTO...) "
    "\\[default: the recipe's].",
)


OnOpt = typer.Option(
    None,
    "--on",
    help="Run it on these devices instead (NAME[,NAME...], mmedge device list): the artifact "
    "is pushed (only what the device lacks) and the device's mmedge measures.",
)


def _load(recipe: Path, overrides: dict[str, Any]) -> Recipe:
    from mmedge.recipe import load_recipe

    return load_recipe(recipe, overrides)


def _default_out(recipe: Recipe, target: str, precision: str) -> Path:
    return Path("runs") / recipe.name / f"{target}-{precision}"


def _quant_overrides(
    calib: Path | None,
    samples: int | None,
    method: Method | None,
    mode: QuantMode | None,
    keep_fp32: list[str] | None,
    exporter: str | None,
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if calib is not None:
        found["calibration.path"] = str(calib.expanduser().resolve())
        found["calibration.synthetic"] = None
    if samples is not None:
        found["calibration.samples"] = samples
    if method is not None:
        found["quantization.method"] = method.value
    if mode is not None:
        found["quantization.mode"] = mode.value
    if keep_fp32:
        found["quantization.keep_fp32"] = keep_fp32
    if exporter is not None:
        found["export.exporter"] = exporter
    return found


def _target_help(command: str) -> str:
    return f"Target (registered: see `mmedge doctor`) \\[default: onnxruntime]; {command}"


def _build(
    recipe_path: Path,
    target: str,
    precision: str,
    out: Path | None,
    force: bool,
    overrides: dict[str, Any],
    as_json: bool,
    auto: bool = False,
) -> None:
    from mmedge.artifacts import build_artifact

    recipe = _load(recipe_path, overrides)
    out = out or _default_out(recipe, target, precision)
    with console.status(not as_json) as progress:
        manifest = build_artifact(recipe, target, precision, out, force, progress, auto)
    if as_json:
        console.print_json({"directory": str(out), **manifest})
    else:
        console.manifest(manifest, str(out))


@app.command()
@_handled
def inspect(recipe: Path = RecipeArg, as_json: bool = JsonOpt) -> None:
    """Inputs, dynamic axes, branches, and parameters and MACs per branch."""
    from mmedge.artifacts import inspect_recipe

    data = inspect_recipe(_load(recipe, {}))
    console.print_json(data) if as_json else console.inspect(data)


@app.command(cls=_TargetOptionsCommand)
@_handled
def export(
    recipe: Path = RecipeArg,
    target: str = _target_option("Target to build for."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", "-p"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory \\[default: runs/RECIPE_NAME/TARGET-PRECISION]"
    ),
    force: bool = typer.Option(False, "--force", help="Replace a different artifact at --out."),
    exporter: str | None = typer.Option(None, help="torchscript or dynamo (overrides the recipe)."),
    calib: Path | None = typer.Option(None, help="Calibration shards (int8)."),
    keep_fp32: list[str] | None = typer.Option(
        None, "--keep-fp32", help="Branch to leave in floating point (repeatable)."
    ),
    isa: str | None = IsaOpt,
    option: list[str] | None = OptionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export the recipe's model for a target at a precision."""
    overrides = _quant_overrides(calib, None, None, None, keep_fp32, exporter)
    overrides |= _option_overrides(target, option)
    if isa is not None:
        overrides["quantization.isa"] = isa
    _build(recipe, target, precision.value, out, force, overrides, as_json)


@app.command(cls=_TargetOptionsCommand)
@_handled
def quantize(
    recipe: Path = RecipeArg,
    target: str = _target_option("Target to quantize for."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory \\[default: runs/RECIPE_NAME/TARGET-int8]"
    ),
    calib: Path | None = typer.Option(None, help="Calibration shards (overrides the recipe)."),
    samples: int | None = typer.Option(None, help="Use at most this many calibration samples."),
    method: Method | None = typer.Option(None, help="Activation range method."),
    mode: QuantMode | None = typer.Option(None, help="static (calibrated) or dynamic."),
    keep_fp32: list[str] | None = typer.Option(
        None, "--keep-fp32", help="Branch to leave in floating point (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a different artifact at --out."),
    auto: bool = typer.Option(
        False,
        "--auto",
        help="Search the fastest policy that meets quantization.accuracy (layers back to float).",
    ),
    isa: str | None = IsaOpt,
    option: list[str] | None = OptionOpt,
    as_json: bool = JsonOpt,
) -> None:
    """INT8 post-training quantization with the recipe's calibration set."""
    from mmedge.errors import RecipeError
    from mmedge.targets import target_spec

    spec = target_spec(target)
    if (method or mode) and not spec.calibration_methods:
        raise RecipeError(
            f"--method and --mode set ONNX Runtime's quantizer; {target} quantizes with its "
            f"own (its settings: targets.{target} in the recipe, or -O)"
        )
    if mode is QuantMode.dynamic and not spec.dynamic_int8:
        raise RecipeError(f"{target} takes static (calibrated) INT8 only; drop --mode dynamic")
    overrides = _quant_overrides(calib, samples, method, mode, keep_fp32, None)
    overrides |= _option_overrides(target, option)
    if isa is not None:
        overrides["quantization.isa"] = isa
    _build(recipe, target, "int8", out, force, overrides, as_json, auto)


@app.command()
@_handled
def compare(
    directory: Path = ArtifactArg,
    reference: Path | None = typer.Option(
        None, help="Another artifact directory to compare against \\[default: PyTorch FP32]."
    ),
    samples: int | None = typer.Option(None, min=1, help="Use at most this many samples."),
    device: str | None = DeviceOpt,
    eval_path: Path | None = typer.Option(
        None,
        "--eval",
        help="Compare on these shards instead of the recipe's eval set (no rebuild).",
    ),
    recipe_path: Path | None = typer.Option(
        None,
        "--recipe",
        help="Take the eval set and compare gate from this recipe (same model) instead of the "
        "one frozen in the artifact (no rebuild).",
    ),
    recorded: Path | None = typer.Option(
        None,
        help="Compare against reference outputs recorded in this .npz (inputs, labels, "
        "expected.OUTPUT), where the reference cannot run (what --on sends a device).",
    ),
    on: str | None = OnOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Compare an artifact with the FP32 model; exit 7 when the recipe's gate fails. A pruned
    model's artifact is also compared with the model before pruning."""
    from mmedge.artifacts import compare_artifact, enforce_gate

    if on is not None:
        from mmedge.errors import RecipeError
        from mmedge.fleet.cli import compare_on_devices

        given = {"--reference": reference, "--device": device, "--eval": eval_path,
                 "--recipe": recipe_path, "--recorded": recorded}  # fmt: skip
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise RecipeError(
                f"compare --on compares against the FP32 reference on the recipe's eval set; "
                f"{', '.join(clash)} cannot be combined with it"
            )

        compare_on_devices(directory, on, samples, as_json)
        return
    with console.status(not as_json) as progress:
        progress("comparing")
        report = compare_artifact(
            directory,
            reference,
            samples,
            device,
            eval_path=eval_path,
            recipe_path=recipe_path,
            recorded=recorded,
        )
    label = f"recorded ({recorded.name})" if recorded else "pytorch-fp32"
    data = {**report.to_json(), "reference": str(reference or label)}
    console.print_json(data) if as_json else console.compare(data)
    enforce_gate(report, directory)


@app.command()
@_handled
def bench(
    directory: Path = ArtifactArg,
    iterations: int | None = typer.Option(None, help="Timed iterations."),
    warmup: int | None = typer.Option(None, help="Untimed warm-up iterations."),
    duration: float | None = typer.Option(None, help="Time for this many seconds instead."),
    batch: int | None = typer.Option(None, help="Batch size."),
    threads: int | None = typer.Option(None, help="Intra-op threads."),
    shape: ShapePoint | None = typer.Option(None, help="Dynamic axes at min, opt or max."),
    mode: BenchMode | None = typer.Option(
        None, help="latency: one request at a time; throughput: several in flight (openvino)."
    ),
    profile: bool | None = typer.Option(
        None, "--profile/--no-profile", help="Also time every layer and report time per branch."
    ),
    device: str | None = DeviceOpt,
    on: str | None = OnOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Latency percentiles, throughput and peak memory of an artifact on this machine (or on
    your devices: --on)."""
    from mmedge.artifacts import bench_artifact

    overrides = {
        "iterations": iterations,
        "warmup": warmup,
        "duration_s": duration,
        "batch": batch,
        "threads": threads,
        "shape": shape.value if shape else None,
        "mode": mode.value if mode else None,
        "profile": profile,
    }
    if on is not None:
        from mmedge.fleet.cli import bench_on_devices

        bench_on_devices(directory, on, {**overrides, "device": device}, as_json)
        return
    with console.status(not as_json) as progress:
        progress("benchmarking")
        result = bench_artifact(directory, overrides, device).to_json()
    console.print_json(result) if as_json else console.bench(result)


def _branch_ratios(values: list[str] | None) -> dict[str, float]:
    """--branch image=0.5 --branch text=0.3 → {"image": 0.5, "text": 0.3}."""
    from mmedge.errors import RecipeError

    found: dict[str, float] = {}
    for item in values or []:
        name, sep, ratio = item.partition("=")
        try:
            found[name.strip()] = float(ratio)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise RecipeError(f"--branch takes NAME=RATIO (e.g. image=0.5), got {item!r}")
    return found


@app.command()
@_handled
def prune(
    recipe: Path = RecipeArg,
    ratio: float | None = typer.Option(None, help="Ratio for every branch not given by --branch."),
    branch: list[str] | None = typer.Option(
        None, "--branch", help="NAME=RATIO for one branch (repeatable), e.g. --branch text=0.3."
    ),
    importance: str | None = typer.Option(None, help="magnitude or taylor."),
    sparsity: str | None = typer.Option(None, help="none, unstructured or 2:4."),
    recover: str | None = typer.Option(None, help="distill, finetune or none."),
    epochs: int | None = typer.Option(None, help="Recovery epochs."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output directory \\[default: runs/RECIPE_NAME/pruned]"
    ),
    force: bool = typer.Option(False, "--force", help="Replace a different result at --out."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Fail when a layer cannot be pruned safely (default: leave it whole).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Structured pruning per branch, optional sparsity, and accuracy recovery by distillation."""
    from mmedge.prune.artifact import prune_artifact

    overrides: dict[str, Any] = {}
    for key, value in (
        ("ratio", ratio),
        ("importance", importance),
        ("sparsity.mode", sparsity),
        ("recover.mode", recover),
        ("recover.epochs", epochs),
    ):
        if value is not None:
            overrides[f"prune.{key}"] = value
    if strict:
        overrides["prune.strict"] = True
    ratios = _branch_ratios(branch)
    if ratios:
        overrides["prune.branches"] = ratios
    loaded = _load(recipe, overrides)
    if loaded.prune is None:
        loaded = _load(recipe, {**overrides, "prune": {}})
    out = out or Path("runs") / loaded.name / "pruned"
    with console.training(not as_json) as (progress, on_step):
        manifest = prune_artifact(loaded, out, force, progress, on_step)
    report = manifest["steps"]["prune"]
    console.print_json({"directory": str(out), **manifest}) if as_json else console.prune(
        report, str(out)
    )


@app.command()
@_handled
def check(
    directory: Path = ArtifactArg,
    as_json: bool = JsonOpt,
) -> None:
    """Check an artifact against its target's rules (TensorRT: parser and quantization rules);
    exit 12 on errors."""
    from mmedge.artifacts import check_artifact
    from mmedge.errors import RuleViolation
    from mmedge.findings import summary

    findings = check_artifact(directory)
    data = summary(findings)
    console.print_json(data) if as_json else console.findings(data)
    if data["errors"]:
        raise RuleViolation(
            f"{data['errors']} rule violation(s) in {directory}",
            hint="the build refuses them unless --allow-violations",
        )


@app.command()
@_handled
def build(
    directory: Path = ArtifactArg,
    trtexec: bool = typer.Option(
        False,
        "--trtexec",
        help="Build with trtexec even when the TensorRT Python package is there.",
    ),
    weak_fp16: bool = typer.Option(
        False,
        "--weak-fp16",
        help="TensorRT 10 only: let TensorRT pick FP16 layers in an FP32 bundle.",
    ),
    allow_violations: bool = typer.Option(
        False, "--allow-violations", help="Build even if the rule check finds errors."
    ),
    on: str | None = OnOpt,
    mirror: Path | None = typer.Option(
        None, help="With --on: copy the engine and its metadata here \\[default: BUNDLE@DEVICE]."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Build a TensorRT bundle's engine on this device (where it will run), or on your
    devices (--on: the engine stays there for bench/compare --on, and is mirrored back)."""
    from mmedge.targets.tensorrt.commands import build_engine_in_bundle

    if on is not None:
        from mmedge.fleet.cli import build_on_devices

        flags = [f for f, v in (("--trtexec", trtexec), ("--weak-fp16", weak_fp16),
                                ("--allow-violations", allow_violations)) if v]  # fmt: skip
        build_on_devices(directory, on, flags, mirror, as_json)
        return

    with console.status(not as_json) as progress:
        progress("building the TensorRT engine")
        manifest = build_engine_in_bundle(directory, weak_fp16, trtexec, allow_violations)
    console.print_json(manifest) if as_json else console.manifest(manifest, str(directory))


@app.command("run")
@_handled
def run_command(
    recipe: Path = RecipeArg,
    targets: str | None = typer.Option(
        None,
        help="Comma-separated subset of the registered targets (mmedge doctor lists them) "
        "\\[default: the recipe's run.variants].",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory \\[default: runs/RECIPE_NAME/run]."
    ),
    force: list[str] | None = typer.Option(
        None,
        "--force",
        help="Redo a step (e.g. bench:openvino-int8), a kind of step (bench), or all "
        "(all also takes over a run directory made by another recipe). Repeatable.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail (exit 5) when a requested target is not installed."
    ),
    on: str | None = typer.Option(
        None,
        "--on",
        help="Also build (TensorRT), compare and bench every variant on these devices "
        "(NAME[,NAME...], in parallel): a column per device in the report.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Prune (if asked) → export → quantize/build every target → compare → bench → report;
    with --on, each variant measured on your devices too."""
    from mmedge.errors import MmedgeError
    from mmedge.fleet.inventory import parse_on
    from mmedge.run.engine import run_recipe

    devices = parse_on(on)
    loaded = _load(recipe, {})
    chosen = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    directory = out or Path("runs") / loaded.name / "run"
    with console.stepping(not as_json) as progress:
        report = run_recipe(
            loaded, recipe.resolve(), directory, chosen, force, strict, progress, devices
        )
    console.print_json(report) if as_json else console.run_summary(report)
    failed = [s for s in report["steps"] if s["status"] == "failed"]
    if failed:
        first = failed[0]
        error = MmedgeError(
            f"{len(failed)} step(s) failed, first {first['step']}: {first['note']}",
            hint=f"details in {directory}/run.json; fix and run again (finished steps are kept)",
        )
        error.exit_code = first["exit_code"] or 1  # type: ignore[misc]
        raise error


class SearchKind(str, Enum):
    grid = "grid"
    optuna = "optuna"


class Sampler(str, Enum):
    tpe = "tpe"
    nsga2 = "nsga2"


@app.command()
@_handled
def sweep(
    recipe: Path = RecipeArg,
    grid: list[str] | None = typer.Option(
        None,
        "--grid",
        help="FIELD=V1,V2,... (a recipe path: prune.branches.text, quantization.method, "
        "run.variants...) or FIELD=LOW..HIGH (Optuna). Repeatable; adds to the recipe's "
        "sweep.grid.",
    ),
    sets: list[str] | None = typer.Option(
        None, "--set", help="FIELD=VALUE for every trial (e.g. bench.iterations=100). Repeatable."
    ),
    search: SearchKind | None = typer.Option(
        None, "--search", help="grid (every combination) or optuna \\[default: sweep.search]."
    ),
    trials: int | None = typer.Option(
        None, "--trials", min=1, help="Optuna: trials to run; grid: a cap \\[default: 30 / all]."
    ),
    objective: str | None = typer.Option(
        None,
        "--objective",
        help="Comma-separated: accuracy, latency, size \\[default: all three].",
    ),
    sampler: Sampler | None = typer.Option(
        None, "--sampler", help="Optuna's sampler: tpe or nsga2."
    ),
    seed: int | None = typer.Option(None, "--seed", help="The sampler's seed \\[default: 0]."),
    on: str | None = typer.Option(
        None,
        "--on",
        help="Measure on these devices (NAME[,NAME...]; 'local' is this machine) "
        "\\[default: local]: a front per device.",
    ),
    address: str | None = typer.Option(
        None, "--address", help="Join this Ray cluster (host:port) \\[default: start one here]."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="CPUs of the cluster started here \\[default: all]."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Sweep directory \\[default: runs/RECIPE_NAME/sweep]."
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Finished stages, by content key; share one between sweeps \\[default: OUT/cache].",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Search recipe variations on Ray (a local cluster, or --address); the Pareto front of
    accuracy, latency and size per device, with a ready-to-run recipe per front point."""
    from mmedge.errors import SweepFailed
    from mmedge.sweep.command import run_sweep
    from mmedge.sweep.space import parse_grid, parse_sets

    flags: dict[str, Any] = {
        "grid": parse_grid(grid) if grid else None,
        "search": search.value if search else None,
        "trials": trials,
        "objectives": [o.strip() for o in objective.split(",") if o.strip()] if objective else None,
        "sampler": sampler.value if sampler else None,
        "seed": seed,
    }
    name = _load(recipe, {}).name
    directory = out or Path("runs") / name / "sweep"
    progress = (lambda *_: None) if as_json else console.sweep_trial
    data = run_sweep(recipe, parse_sets(sets or []), flags, on, address, workers, directory,
                     cache, progress)  # fmt: skip
    console.print_json(data) if as_json else console.sweep_summary(data)
    failed = data["summary"]["failed"]
    if failed:
        raise SweepFailed(
            f"{failed} of {data['summary']['trials']} trials failed; the fronts are of the rest",
            hint=f"each failure's error is in {directory}/sweep.json (and sweep.md)",
        )


@app.command("report")
@_handled
def report_command(
    directory: Path = typer.Argument(..., help="A run directory made by mmedge run."),
    as_json: bool = JsonOpt,
) -> None:
    """Re-render a run's report (JSON, Markdown, HTML) from its directory."""
    from mmedge.run.report import rerender

    report = rerender(directory)
    console.print_json(report) if as_json else console.run_summary(report)


@app.command()
@_handled
def doctor(as_json: bool = JsonOpt) -> None:
    """Backends and versions, CPU features, GPUs, TensorRT, and advice for this machine."""
    from mmedge.doctor import diagnose

    data = diagnose()
    console.print_json(data) if as_json else console.doctor(data)


calib_app = typer.Typer(
    help="Build calibration sets from raw image/text/audio files, and inspect any set.",
    no_args_is_help=True,
)
app.add_typer(calib_app, name="calib")
app.add_typer(device_app, name="device")


@calib_app.command("build")
@_handled
def calib_build(
    recipe: Path = RecipeArg,
    source: Path = typer.Option(
        ...,
        "--from",
        help="A folder with one sub-folder per preprocess field (files paired by name), "
        "or a .csv/.jsonl manifest.",
        show_default=False,
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output directory, e.g. calibration/NAME.", show_default=False
    ),
    samples: int | None = typer.Option(
        None, min=1, help="Samples to take (stratified by label, spread over length buckets)."
    ),
    seed: int = typer.Option(0, help="Seed for sampling and zeroed-modality choices."),
    shard_size: int = typer.Option(64, min=1, help="Samples per .npz shard (one shape each)."),
    min_per_bucket: int = typer.Option(8, min=1, help="Warn below this many samples per length."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out unreadable samples instead of failing (listed)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a different set at --out."),
    as_json: bool = JsonOpt,
) -> None:
    """Preprocess raw files into a sharded .npz calibration set with manifest and preprocess.json."""
    from mmedge.data.build import build_calibration

    loaded = _load(recipe, {})
    with console.counting(not as_json) as progress:
        manifest = build_calibration(
            loaded,
            source,
            out,
            samples,
            seed,
            shard_size,
            min_per_bucket,
            skip_bad,
            force,
            progress,
        )
    if as_json:
        console.print_json({"directory": str(out), **manifest})
        return
    data = {**manifest["calibration"]}
    console.calibration_set(data, str(out))
    src = manifest["source"]
    console.out.print(
        f"{data['samples']} of {src['usable']} usable samples ({src['available']} found) in "
        f"{data['shards']} shards, {manifest['seconds']} s → {out}"
        + (f"; {src['skipped_count']} left out (--skip-bad)" if src["skipped_count"] else "")
    )


@calib_app.command("inspect")
@_handled
def calib_inspect(
    path: Path = typer.Argument(..., help="A directory of .npz shards, or one .npz file."),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="Check names, dtypes, shapes, token ranges and axis coverage."
    ),
    label_key: str = typer.Option("label", help="Array holding labels (not a model input)."),
    min_per_bucket: int = typer.Option(8, min=1, help="Warn below this many samples per length."),
    strict: bool = typer.Option(False, "--strict", help="Exit 4 when there are warnings."),
    as_json: bool = JsonOpt,
) -> None:
    """Statistics of a calibration set and warnings (constant inputs, NaN, token ids, shapes)."""
    from mmedge.data.inspect import inspect_set
    from mmedge.errors import InputSpecError

    loaded = _load(recipe, {}) if recipe is not None else None
    data = inspect_set(path, loaded, label_key, min_per_bucket)
    console.print_json(data) if as_json else console.calibration_set(data, str(path))
    if strict and data["warnings"]:
        raise InputSpecError(f"{len(data['warnings'])} warning(s) in {path} (--strict)")


def main() -> None:
    app()


if __name__ == "__main__":  # python -m mmedge.cli (what a subprocess test starts)
    main()
