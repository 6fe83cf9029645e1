"""The one place that renders for people: Rich tables, status lines and errors.

Human-readable results go to stdout; status, progress and errors go to stderr, so ``--json``
output on stdout stays clean for other tools.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmedge.errors import MmedgeError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    # Plain print: Rich would wrap long lines and add markup handling.
    print(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False))


def strict_json(data: Any) -> Any:
    """JSON has no Infinity or NaN (`json.loads` in other languages rejects them): such values
    become null, and a top-level ``"non_finite"`` maps each one's path to what it was (e.g. the
    SQNR of two identical outputs is +inf)."""
    found: dict[str, str] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found[path or "."] = "nan" if value != value else ("+inf" if value > 0 else "-inf")
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    clean = walk(data, "")
    if found and isinstance(clean, dict):
        clean["non_finite"] = {
            **found,
            "why": "JSON has no Infinity/NaN: these values are null here",
        }
    return clean


def error(exc: MmedgeError) -> None:
    # soft_wrap: no newlines inserted into messages, so they stay whole in logs and greps.
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)


@contextlib.contextmanager
def status(enabled: bool = True) -> Iterator[Any]:
    """A spinner whose message a long step updates; a no-op when disabled (e.g. --json)."""
    if not enabled:
        yield lambda _msg: None
        return
    with err.status("starting") as spinner:
        yield lambda msg: spinner.update(escape(msg))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def manifest(data: Mapping[str, Any], directory: str) -> None:
    art = data["artifact"]
    table = Table(title=f"{data['target']} {data['precision']} artifact", show_header=False)
    table.add_row("directory", directory)
    table.add_row("artifact", f"{art['path']} ({_mb(art['bytes'])})")
    table.add_row("sha256", art["sha256"][:16] + "…")
    steps = data.get("steps", {})
    export = steps.get("export", {})
    if "exporter" in export:
        fallback = export.get("fallback_reason")
        note = f" (fell back: {fallback})" if fallback else ""
        table.add_row("exporter", f"{export['exporter']}, {export['seconds']} s{note}")
    parity = steps.get("parity") or []
    if parity:
        worst = max(parity, key=lambda p: p["max_abs"] / max(p["tolerance"], 1e-30))
        table.add_row(
            "ONNX vs PyTorch",
            f"max abs error {worst['max_abs']:.3g} ≤ {worst['tolerance']:.3g} "
            f"({len(parity)} checks, worst at {worst['case']})",
        )
    build = steps.get("build", {})
    for key in ("mode", "method", "calibration_samples", "excluded_nodes", "seconds"):
        if build.get(key) is not None:
            table.add_row(f"quantize {key}", _fmt(build[key]))
    if build.get("method_note"):  # e.g. entropy thresholds that equal the min/max range
        table.add_row("quantize note", build["method_note"])
    if build.get("kept_fp32_branches"):
        table.add_row("kept in FP32", ", ".join(build["kept_fp32_branches"]))
    if steps.get("calibration"):
        table.add_row("calibration", steps["calibration"])
    rules = build.get("rules")
    if rules:
        table.add_row("TensorRT rules", f"{rules['errors']} errors, {rules['warnings']} warnings")
    engine = data.get("engine") or build.get("engine")
    if engine:
        built = engine.get("built", True)
        table.add_row(
            "engine",
            f"built with TensorRT {engine.get('tensorrt_version')} for {engine.get('gpu')}"
            if built
            else str(engine.get("reason")),
        )
    out.print(table)
    for note in build.get("notes") or []:  # a target's advice about this build
        out.print(f"[yellow]note:[/] {escape(str(note))}", soft_wrap=True)
    if rules and rules["findings"]:
        findings(rules)
    if engine and not engine.get("built", True):
        out.print(
            f"next, on the device: [bold]mmedge build {escape(directory)}[/] "
            f"(or {escape(directory)}/build_engine.sh), then mmedge compare / bench there"
        )


def compare(report: Mapping[str, Any]) -> None:
    table = Table(title=f"compare vs {report['reference']} ({report['samples']} samples)")
    for col in (
        "output",
        "cosine (mean)",
        "cosine (min)",
        "max abs",
        "mean abs",
        "SQNR dB",
        "NaN/Inf",
    ):
        table.add_column(col, justify="right" if col != "output" else "left")
    for name, m in report["outputs"].items():
        table.add_row(
            name,
            _fmt(m["cosine"], 5),
            _fmt(m["cosine_min"], 5),
            _fmt(m["max_abs"]),
            _fmt(m["mean_abs"]),
            _fmt(m["sqnr_db"], 2),
            str(m["nonfinite"]),
        )
    out.print(table)
    if report["top1_agreement"] is not None:
        out.print(f"top-1 agreement: {100 * report['top1_agreement']:.2f}%")
    acc = report.get("accuracy")
    if acc:
        drop = acc["reference"] - acc["candidate"]
        out.print(
            f"accuracy: reference {acc['reference']:.2f}%, candidate {acc['candidate']:.2f}% "
            f"(drop {drop:+.2f} points)"
        )
    original = report.get("original")
    if original and "error" not in original:
        agreement = original.get("top1_agreement")
        out.print(
            f"against the model before pruning ({escape(str(original['model']))}): top-1 "
            f"agreement {_fmt(agreement)}, cosine {_fmt(original.get('cosine'))}, SQNR "
            f"{_fmt(original.get('sqnr_db'), 3)} dB"
        )
    elif original:
        out.print(
            f"[yellow]not compared with the model before pruning:[/] {escape(original['error'])}"
        )
    parity = report.get("parity")
    if parity:
        branches = Table(title="per-branch parity vs the FP32 export")
        for col in ("branch", "cosine", "SQNR dB"):
            branches.add_column(col, justify="left" if col == "branch" else "right")
        for name, m in parity["branches"].items():
            mark = " [red](most affected)[/]" if name == parity.get("most_affected") else ""
            branches.add_row(name + mark, _fmt(m["cosine"], 5), _fmt(m["sqnr_db"], 2))
        out.print(branches)
    notes(report.get("warnings", []))
    if report["passed"]:
        out.print("[bold green]gate passed[/]")
    else:
        out.print("[bold red]gate failed:[/]")
        for failure in report["failures"]:
            out.print(f"  - {escape(failure)}")
        for step in report.get("next_steps", []):
            out.print(f"[bold]next:[/] {escape(step)}")


def bench(result: Mapping[str, Any]) -> None:
    lat = result["latency_ms"]
    table = Table(
        title=f"{result['target']} {result['precision']}, {result['mode']} mode: batch "
        f"{result['batch']}, {result['threads']} threads, {result['iterations']} requests"
    )
    for col in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "throughput /s", "peak RSS MB"):
        table.add_column(col, justify="right")
    rss = result["peak_rss_mb"]
    table.add_row(
        f"{lat['p50']:.3f}",
        f"{lat['p90']:.3f}",
        f"{lat['p99']:.3f}",
        f"{lat['mean']:.3f}",
        f"{result['throughput_per_s']:.1f}",
        "-" if rss is None else f"{rss:.0f}",
    )
    out.print(table)
    own = result.get("runtime_latency_ms")
    timer = f"latency timer: {result['latency_timer']}"
    if own and result["latency_timer"] != "runtime":
        timer += f"; the runtime's own timer: p50 {own['p50']:.3f} ms, p99 {own['p99']:.3f} ms"
    out.print(timer)
    shapes = ", ".join(f"{k} {v}" for k, v in result["shapes"].items())
    out.print(f"inputs: {shapes}")
    out.print("ran with: " + ", ".join(f"{k} {v}" for k, v in result["settings"].items()))
    if result.get("branch_ms"):
        _branch_times(result["branch_ms"])
    notes(result.get("warnings", []))
    cpu = result["host"]
    out.print(f"cpu: {cpu['name']} ({', '.join(cpu['features']) or 'no SIMD features found'})")
    if result["precision"] == "int8" and cpu["int8_dot_product"] is False:
        out.print(
            "[yellow]note:[/] this CPU has no INT8 dot-product instructions (VNNI/AMX/NEON dot): "
            "INT8 shrinks the model here but often does not speed it up"
        )


def notes(warnings: list[str]) -> None:
    for warning in warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")


def _branch_times(branch_ms: Mapping[str, float]) -> None:
    total = sum(branch_ms.values()) or 1.0
    table = Table(title="time per branch (sum of per-layer medians, profiled separately)")
    for col in ("branch", "ms", "share"):
        table.add_column(col, justify="left" if col == "branch" else "right")
    for name, ms in sorted(branch_ms.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{ms:.3f}", f"{100 * ms / total:.1f}%")
    out.print(table)


def inspect(data: Mapping[str, Any]) -> None:
    inputs = Table(title=f"recipe {data['name']}: inputs")
    for col in ("input", "shape", "dtype", "modality", "opt shape"):
        inputs.add_column(col)
    for name, spec in data["inputs"].items():
        inputs.add_row(
            name, str(spec["shape"]), spec["dtype"], spec["modality"], str(spec["opt_shape"])
        )
    out.print(inputs)
    axes = ", ".join(f"{n} [{a['min']}, {a['opt']}, {a['max']}]" for n, a in data["axes"].items())
    out.print(f"dynamic axes (min, opt, max): {axes}")
    branches = Table(title="branches (MACs at opt shapes, batch 1)")
    for col in ("branch", "module prefixes", "parameters", "MMACs", "share of MACs"):
        branches.add_column(
            col, justify="left" if col in ("branch", "module prefixes") else "right"
        )
    total = data["stats"]["total"]["macs"]
    for name, s in data["stats"].items():
        prefixes = ", ".join(data["branches"].get(name, [])) or ("-" if name != "total" else "")
        if name == "other" and not s["params"] and not s["macs"]:
            continue
        known = s["macs"] is not None and total
        branches.add_row(
            name,
            prefixes,
            f"{s['params']:,}",
            f"{s['macs'] / 1e6:.2f}" if known else "-",
            f"{100 * s['macs'] / total:.1f}%" if known else "-",
        )
    out.print(branches)
    if total is None:
        out.print("MACs need the PyTorch model; this recipe starts from an ONNX file.")


def findings(data: Mapping[str, Any]) -> None:
    if not data["findings"]:
        out.print("[bold green]no rule violations[/]")
        return
    table = Table(title=f"TensorRT rules: {data['errors']} errors, {data['warnings']} warnings")
    for col in ("severity", "rule", "branch", "node", "message"):
        table.add_column(col, overflow="fold")
    for f in data["findings"]:
        style = "red" if f["severity"] == "error" else "yellow"
        table.add_row(
            f"[{style}]{f['severity']}[/]",
            f["rule"],
            f["branch"],
            escape(f["node"]),
            escape(f["message"]),
        )
    out.print(table)


def _bar() -> Any:
    """A transient progress bar on stderr: description, bar, n/total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@contextlib.contextmanager
def training(enabled: bool = True) -> Iterator[tuple[Any, Any]]:
    """A status line for steps and a progress bar for recovery: (progress, on_step) callbacks."""
    if not enabled:
        yield (lambda _msg: None), None
        return
    bar = _bar()
    with bar:
        status = bar.add_task("starting", total=None)
        recovery: list[Any] = []

        def progress(msg: str) -> None:
            bar.update(status, description=escape(msg))

        def on_step(epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
            if not recovery:
                recovery.append(bar.add_task("recovery", total=epochs * steps))
            done = (epoch - 1) * steps + step
            bar.update(
                recovery[0],
                completed=done,
                description=f"recovery epoch {epoch}/{epochs}, loss {loss:.4f}",
            )

        yield progress, on_step


def prune(report: Mapping[str, Any], directory: str) -> None:
    before, after = report["before"], report["after"]
    table = Table(title="pruning: before → after (ONNX Runtime FP32 at opt shapes, batch 1)")
    for col in ("branch", "ratio", "parameters", "MMACs", "ORT ms (profiled)"):
        table.add_column(col, justify="left" if col == "branch" else "right")
    ratios = report["structured"]["ratios"]
    for name, b in before["stats"].items():
        a = after["stats"][name]
        if name == "other" and not b["params"]:
            continue
        ms_b = before["onnxruntime_fp32"]["branch_ms"].get(name)
        ms_a = after["onnxruntime_fp32"]["branch_ms"].get(name)
        table.add_row(
            name,
            "" if name == "total" else f"{ratios.get(name, 0.0):g}",
            f"{b['params']:,} → {a['params']:,}",
            f"{b['macs'] / 1e6:.2f} → {a['macs'] / 1e6:.2f}",
            "" if ms_b is None else f"{ms_b:.3f} → {ms_a:.3f}",
        )
    out.print(table)
    p50_b, p50_a = before["onnxruntime_fp32"]["p50_ms"], after["onnxruntime_fp32"]["p50_ms"]
    out.print(f"end-to-end p50: {p50_b:.3f} ms → {p50_a:.3f} ms ({p50_b / p50_a:.2f}x)")
    for name, (h0, h1) in report["structured"]["heads"].items():
        if h0 != h1:
            out.print(f"attention heads in {name}: {h0} → {h1}")
    for name, why in report["structured"].get("left_whole", {}).items():
        out.print(f"[yellow]left whole:[/] {escape(name)}: {escape(why)}")
    accs = (before.get("accuracy"), report.get("after_pruning_accuracy"), after.get("accuracy"))
    recovery = report.get("recovery") or {}
    if accs[0] is not None:
        out.print(
            f"accuracy: {accs[0]:.2f}% unpruned → {accs[1]:.2f}% pruned → "
            f"{accs[2]:.2f}% after recovery" + (" (undone)" if recovery.get("rejected") else "")
        )
    if recovery.get("rejected"):
        out.print(f"[yellow]warning:[/] recovery undone: {escape(recovery['rejected'])}")
    if recovery.get("frozen_branches"):
        out.print(
            f"recovery left untouched branches frozen: {', '.join(recovery['frozen_branches'])}"
        )
    if "sparsity" in report:
        out.print(f"[yellow]note:[/] {escape(report['sparsity']['note'])}")
    out.print(f"next: mmedge export {escape(directory)}/recipe.yaml --target ...")


@contextlib.contextmanager
def counting(enabled: bool = True) -> Iterator[Any]:
    """A progress bar per stage for ``progress(stage, done, total)`` callbacks; only on a
    terminal (a bar in a log file is noise)."""
    if not enabled or not err.is_terminal:
        yield lambda *_: None
        return
    bar = _bar()
    tasks: dict[str, Any] = {}
    with bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


def calibration_set(data: Mapping[str, Any], title: str) -> None:
    """Per-input statistics of a calibration set, then its warnings."""
    table = Table(title=f"{escape(title)}: {data['samples']} samples")
    for col in ("input", "dtype", "shape", "min", "max", "mean", "std"):
        table.add_column(col, justify="left" if col in ("input", "dtype", "shape") else "right")
    for name, s in data["inputs"].items():
        shape = "[" + ", ".join(str(d) for d in s["shape"]) + "]"
        table.add_row(
            escape(name),
            s["dtype"],
            escape(shape),
            _fmt(s["min"]),
            _fmt(s["max"]),
            _fmt(s["mean"]),
            _fmt(s["std"]),
        )
    out.print(table)
    for name, s in data["inputs"].items():
        for position, sizes in enumerate(s["sizes"], 1):
            if len(sizes) > 1:
                counts = ", ".join(f"{k}: {v}" for k, v in sizes.items())
                out.print(f"{escape(name)} dim {position} (samples per size): {counts}")
    if data.get("labels"):
        out.print("labels: " + ", ".join(f"{k}: {v}" for k, v in data["labels"].items()))
    warnings = data.get("warnings") or []
    for w in warnings:
        out.print(f"[yellow]warning:[/] {escape(w['message'])}", soft_wrap=True)
    if not warnings:
        out.print("[green]no warnings[/]")


@contextlib.contextmanager
def stepping(enabled: bool = True) -> Iterator[Any]:
    """One bar over a run's steps, its description the step in progress (terminal only)."""
    if not enabled or not err.is_terminal:
        yield lambda *_: None
        return
    bar = _bar()
    with bar:
        task = bar.add_task("starting", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=escape(step), completed=done, total=total)

        yield progress


def run_summary(report: dict[str, Any]) -> None:
    """The final table of `mmedge run` (the report has every column), what is missing, where."""
    title = f"mmedge run: {escape(str((report.get('recipe') or {}).get('name')))}"
    table = Table(title=title)
    cols = ("variant", "MB", "accuracy", "p50 ms", "speed-up", "worst branch", "slowest branch")
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for v in report["variants"]:
        lat = v.get("p50_rounds_ms")
        table.add_row(
            escape(v["name"]),
            _fmt(v["bytes"] / 1e6 if v["bytes"] else None, 2),
            "-" if v["accuracy"] is None else f"{v['accuracy']:.2f}%",
            _fmt(lat, 3),
            "-" if v["speedup"] is None else f"{v['speedup']:.2f}x",
            v.get("most_affected") or "-",
            v.get("dominant_branch") or "-",
        )
    out.print(table)
    if report.get("devices"):
        from mmedge.run.report import device_headers, device_rows

        on = Table(title="on devices")
        for col in device_headers(report):
            on.add_column(escape(col), justify="left" if col == "variant" else "right")
        for row in device_rows(report):
            on.add_row(*(escape(c) for c in row))
        out.print(on)
    for s in report["steps"]:
        if s["status"] in ("failed", "blocked", "skipped"):
            style = "red" if s["status"] == "failed" else "yellow"
            note = f"[{style}]{s['status']}[/] {escape(s['step'])}: {escape(str(s['note']))}"
            out.print(note, soft_wrap=True)
    out.print(f"report: {escape(report['directory'])}/report.html (and report.md, report.json)")


def doctor(data: Mapping[str, Any]) -> None:
    table = Table(title="mmedge doctor")
    for col in ("component", "status", "details"):
        table.add_column(col)
    for name, info in data["targets"].items():
        if not info["installed"]:
            status = "[red]missing[/]"
        elif info["runs_here"]:
            status = f"[green]{info['version'] or 'installed'}[/]"
        else:
            status = "[yellow]build only[/]"
        devices = ", ".join(info["devices"]) or "-"
        table.add_row(f"target {name}", status, escape(f"{info['summary']}; devices: {devices}"))
    for name, info in data["packages"].items():
        details = str(info.get("error", ""))
        status = f"[green]{info['version']}[/]" if info["installed"] else "[red]missing[/]"
        table.add_row(name, status, escape(details))
    cpu = data["cpu"]
    profile = f"INT8 profile: {cpu.get('isa_profile', 'unknown')}"
    features = ", ".join(cpu["features"]) or "-"
    table.add_row("cpu", escape(str(cpu["name"])), escape(f"{features}; {profile}"))
    for gpu in data["gpus"] or [{"name": "none found", "compute_capability": "-", "driver": "-"}]:
        table.add_row("gpu", escape(gpu["name"]), f"compute capability {gpu['compute_capability']}")
    out.print(table)
    for line in data["advice"]:
        out.print(f"[cyan]advice:[/] {escape(line)}", soft_wrap=True)


def sweep_trial(result: Mapping[str, Any], done: int, total: int) -> None:
    """One line per finished trial of `mmedge sweep`, on stderr (stdout stays for --json)."""
    figures = []
    for p in result["points"]:
        if p["status"] == "ok":
            acc = "-" if p.get("accuracy") is None else f"{p['accuracy']:.2f}%"
            figures.append(f"{p['variant']}@{p['device']} {acc} {_fmt(p.get('p50_ms'), 3)} ms "
                           f"{_fmt(p.get('mb'), 2)} MB")  # fmt: skip
        else:
            why = p.get("error") or p.get("reason") or ""
            figures.append(f"{p['variant']}@{p['device']} {p['status']}: {why[:200]}")
    stages = result.get("stages") or {}
    cached = sum(1 for s in stages.values() if s.get("cached"))
    style = {"ok": "green", "failed": "red"}.get(result["state"], "yellow")
    err.print(
        f"[{style}]{result['state']:>7}[/] {done}/{total} {escape(result['label'])}: "
        f"{escape('; '.join(figures))} ({cached}/{len(stages)} stages cached)",
        soft_wrap=True,
    )


def sweep_summary(data: Mapping[str, Any]) -> None:
    """The fronts of `mmedge sweep`, a table per device, and where everything is."""
    from mmedge.sweep.report import FRONT_HEADERS, front_rows

    for device in data["fronts"]:
        table = Table(title=f"front on {escape(device)} ({', '.join(data['objectives'])})")
        for col in FRONT_HEADERS[:-1]:  # the recipes' directory is printed below the table
            right = "%" in col or "ms" in col or col == "MB"
            table.add_column(col, justify="right" if right else "left")
        for row in front_rows(dict(data), device):
            table.add_row(*(escape(c) for c in row[:-1]))
        out.print(table)
        where = f"{data['directory']}/front/{device}/"
        out.print(f"front recipes: {escape(where)}", soft_wrap=True)
    s, c = data["summary"], data.get("counts") or {}
    out.print(
        f"{s['trials']} trials ({s['failed']} failed, {s['stopped']} stopped); stages run "
        f"{c.get('run', 0)}, from the cache {c.get('cached', 0)}, shared {c.get('shared', 0)}",
        soft_wrap=True,
    )
