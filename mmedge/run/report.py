"""The run's report: one JSON, one Markdown, one self-contained HTML file.

Everything is read back from the run directory (the run manifest and each artifact's
manifest, compare.json, parity.json, bench-run.json), so `mmedge report RUN_DIR` re-renders
the same report without running anything. Markdown tables are rendered from report.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mmedge.errors import ArtifactError, OutputExistsError
from mmedge.markdown import table
from mmedge.run.state import MANIFEST, RunState
from mmedge.run.steps import LATENCY
from mmedge.rundir import atomic_write_json, atomic_write_text


def write_report(state: RunState) -> dict[str, Any]:
    from mmedge.run.html import render_html

    try:
        report = collect(state.directory)
        markdown, html = render_markdown(report), render_html(report)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as err:
        # The step records are checked when read; the result files they point to (compare,
        # parity, bench, search, latency) are the steps' own, and only an edit damages them.
        raise ArtifactError(
            f"a result file in {state.directory} is damaged (edited?): the report cannot read "
            f"it ({type(err).__name__}: {str(err)[:200]})",
            hint="redo the steps whose files were edited: mmedge run RECIPE -o "
            f"{state.directory} --force STEP (or --force all)",
        ) from None
    atomic_write_json(state.directory / "report.json", report)
    atomic_write_text(state.directory / "report.md", markdown)
    atomic_write_text(state.directory / "report.html", html)
    return report


def rerender(directory: Path) -> dict[str, Any]:
    """`mmedge report RUN_DIR`: the report again, from what the run directory holds."""
    try:
        data = RunState.read(directory)
    except OutputExistsError as err:  # (what `run` says when it cannot resume)
        raise ArtifactError(err.message) from None
    state = RunState(directory, data["recipe"]["name"], data["recipe"]["path"], data["steps"])
    return write_report(state)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def collect(directory: Path) -> dict[str, Any]:
    run = _read(directory / MANIFEST) or {}
    raw_steps = run.get("steps")
    steps: dict[str, dict[str, Any]] = {  # a hand-edited record must not break the report
        str(k): v
        for k, v in (raw_steps if isinstance(raw_steps, dict) else {}).items()
        if isinstance(v, dict)
    }
    names = []
    for step in steps:
        kind, _, variant = step.partition(":")
        if kind == "build" and variant not in names:
            names.append(variant)
    variants = [_variant(directory, name, steps) for name in names]
    rounds = _read(directory / LATENCY) if _ok(steps, "latency") else None
    base = (rounds or {}).get("baseline")
    for v in variants:  # one measurement per row: the latency step's interleaved rounds
        v["p50_rounds_ms"] = (rounds or {}).get("p50_ms", {}).get(v["name"])
        v["p99_rounds_ms"] = (rounds or {}).get("p99_ms", {}).get(v["name"])
        v["samples_per_s"] = (rounds or {}).get("samples_per_s", {}).get(v["name"])
        v["speedup"] = (rounds or {}).get("speedup", {}).get(v["name"])
        v["speedup_interval"] = (rounds or {}).get("speedup_interval", {}).get(v["name"])
    return {
        "recipe": run.get("recipe"),
        "directory": str(directory),
        "baseline": base,
        "latency_rounds": (rounds or {}).get("rounds"),
        "variants": variants,
        "pareto": _pareto(variants),
        "devices": _devices(directory, steps, [v["name"] for v in variants]),
        "steps": [
            {
                "step": name,
                "status": _text(rec.get("status")),
                "seconds": _number(rec.get("seconds")),
                "note": _text(rec.get("error") or rec.get("reason")),
                "exit_code": rec.get("exit_code")
                if isinstance(rec.get("exit_code"), int)
                else None,
            }
            for name, rec in steps.items()
        ],
        "host": _host(run.get("host")),
        "versions": run.get("versions"),
        "advice": _advice(_host(run.get("host"))),
    }


def _host(value: Any) -> dict[str, Any]:
    """run.json's host record, in the shape the report reads (it may be hand-edited)."""
    host: dict[str, Any] = value if isinstance(value, dict) else {}
    cpu: dict[str, Any] = host["cpu"] if isinstance(host.get("cpu"), dict) else {}
    features: list[Any] = cpu["features"] if isinstance(cpu.get("features"), list) else []
    return {**host, "cpu": {**cpu, "features": [str(f) for f in features]}}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _variant(directory: Path, name: str, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    where = directory / name
    manifest = _read(where / "manifest.json") or {}
    compare = _read(where / "compare.json") if _ok(steps, f"compare:{name}", True) else None
    parity = _read(where / "parity.json") if _ok(steps, f"parity:{name}") else None
    bench = _read(where / "bench-run.json") if _ok(steps, f"bench:{name}") else None
    target, _, precision = name.partition("-")
    main = None
    if compare:
        main = next(iter(compare.get("outputs", {}).values()), None)
    accuracy = (compare or {}).get("accuracy") or {}
    return {
        "name": name,
        "target": target,
        "precision": precision.removesuffix("-unpruned"),
        "status": steps.get(f"build:{name}", {}).get("status"),
        "missing": {
            kind: steps[f"{kind}:{name}"].get("error") or steps[f"{kind}:{name}"].get("reason")
            for kind in ("build", "compare", "parity", "bench")
            if steps.get(f"{kind}:{name}", {}).get("status") in ("skipped", "failed", "blocked")
        },
        "bytes": (manifest.get("artifact") or {}).get("bytes"),
        "accuracy": accuracy.get("candidate"),
        "reference_accuracy": accuracy.get("reference"),
        "top1_agreement": (compare or {}).get("top1_agreement"),
        "cosine": (main or {}).get("cosine"),
        "sqnr_db": (main or {}).get("sqnr_db"),
        "gate_passed": (compare or {}).get("passed"),
        "gate_failures": (compare or {}).get("failures"),
        "branches": (parity or {}).get("branches"),
        "most_affected": (parity or {}).get("most_affected"),
        "parity_runs_in": (parity or {}).get("runs_in"),
        "latency_ms": (bench or {}).get("latency_ms"),
        "throughput_per_s": (bench or {}).get("throughput_per_s"),
        "branch_ms": (bench or {}).get("branch_ms"),
        "dominant_branch": _dominant((bench or {}).get("branch_ms")),
        "bench_settings": (bench or {}).get("settings"),
        "search": _search(_read(where / "search.json")),
    }


def _devices(
    directory: Path, steps: dict[str, dict[str, Any]], variants: list[str]
) -> dict[str, Any]:
    """Per device (`run --on`): its fingerprint and, per variant, what it measured there."""
    from mmedge.run.devices import DEVICES

    found: dict[str, Any] = {}
    names = [s.split("@", 1)[1] for s in steps if s.startswith("probe@")]
    for device in names:
        print_ = _read(directory / DEVICES / f"{device}.json") or {}
        cpu = print_.get("cpu") if isinstance(print_.get("cpu"), dict) else {}
        mm = print_.get("mmedge") if isinstance(print_.get("mmedge"), dict) else {}
        rows = {}
        for name in variants:
            where = directory / name
            bench = (
                _read(where / f"bench-on-{device}.json")
                if _ok(steps, f"bench@{device}:{name}")
                else None
            )
            compare = (
                _read(where / f"compare-on-{device}.json")
                if _ok(steps, f"compare@{device}:{name}", True)
                else None
            )
            missing = {
                kind: steps[f"{kind}@{device}:{name}"].get("error")
                or steps[f"{kind}@{device}:{name}"].get("reason")
                for kind in ("build", "compare", "bench")
                if steps.get(f"{kind}@{device}:{name}", {}).get("status")
                in ("skipped", "failed", "blocked", "interrupted")
            }
            accuracy = (compare or {}).get("accuracy") or {}
            rows[name] = {
                "latency_ms": (bench or {}).get("latency_ms"),
                "throughput_per_s": (bench or {}).get("throughput_per_s"),
                "branch_ms": (bench or {}).get("branch_ms"),
                "dominant_branch": _dominant((bench or {}).get("branch_ms")),
                "top1_agreement": (compare or {}).get("top1_agreement"),
                "accuracy": accuracy.get("candidate"),
                "gate_passed": (compare or {}).get("passed"),
                "warnings": [*(bench or {}).get("warnings", []),
                             *(compare or {}).get("warnings", [])],
                "missing": missing,
            }  # fmt: skip
        found[device] = {
            "fingerprint": {
                "cpu": (cpu or {}).get("model"),
                "isa_flags": (cpu or {}).get("isa_flags"),
                "cores": print_.get("cores"),
                "os": print_.get("os"),
                "arch": print_.get("arch"),
                "mmedge": (mm or {}).get("version"),
                "gpu": print_.get("nvidia"),
                "jetson": print_.get("jetson"),
            },
            "variants": rows,
        }
    return found


def device_headers(report: dict[str, Any]) -> list[str]:
    cols = ["variant"]
    for device in report.get("devices") or {}:
        cols += [f"{device} p50 ms", f"{device} agreement", f"{device} slowest branch"]
    return cols


def device_rows(report: dict[str, Any]) -> list[list[str]]:
    devices = report.get("devices") or {}
    rows = []
    for v in report["variants"]:
        row = [v["name"]]
        for info in devices.values():
            m = info["variants"].get(v["name"]) or {}
            lat = m.get("latency_ms") or {}
            agree = m.get("top1_agreement")
            gate = {True: "", False: " (gate failed)", None: ""}[m.get("gate_passed")]
            row += [
                _f(lat.get("p50")),
                "-" if agree is None else f"{agree * 100:.2f}%{gate}",
                m.get("dominant_branch") or "-",
            ]
        rows.append(row)
    return rows


def device_notes(report: dict[str, Any]) -> list[str]:
    """One line per device (its fingerprint), then its warnings and missing results."""
    notes = []
    for device, info in (report.get("devices") or {}).items():
        fp = info["fingerprint"]
        gpu = fp.get("jetson") or fp.get("gpu")
        notes.append(
            f"{device}: {fp.get('cpu')} ({fp.get('arch')}, {fp.get('cores')} cores; "
            f"{' '.join(fp.get('isa_flags') or []) or 'no ISA flags read'}), {fp.get('os')}, "
            f"mmedge {fp.get('mmedge')}" + (f", GPU {gpu}" if gpu else "")
        )
        for name, m in info["variants"].items():
            notes += [f"{device} {name}: {w}" for w in dict.fromkeys(m["warnings"])]
            notes += [f"{device} {name} {k}: {why}" for k, why in m["missing"].items()]
    return notes


def _search(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What `quantize --auto` tried for this variant: real builds and their measurements."""
    if not record:
        return None
    try:
        return _search_summary(record)
    except (KeyError, TypeError, AttributeError):  # a damaged search.json: no search table
        return None


def _search_summary(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "metric": record["gate"]["metric"],
        "target": record["gate"]["target"],
        "chosen": record["chosen"]["name"],
        "steps": [
            {k: s.get(k) for k in ("name", "built", "metric", "passed", "p50_ms", "bytes")}
            for s in record["steps"]
        ],
    }


def search_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for v in report["variants"]:
        found = v.get("search") or {}
        for s in found.get("steps", []):
            rows.append(
                [
                    v["name"],
                    s["name"] + (" (chosen)" if s["name"] == found["chosen"] else ""),
                    "build" if s["built"] else "estimate",
                    _f(s["metric"], "{:.4f}"),
                    "yes" if s["passed"] else "no",
                    _f(s["p50_ms"]),
                    _f(None if s["bytes"] is None else s["bytes"] / 1e6, "{:.2f}"),
                ]
            )
    return rows


SEARCH_HEADERS = ["variant", "policy", "kind", "metric", "passes", "p50 ms", "MB"]


def _ok(steps: dict[str, dict[str, Any]], name: str, failed_too: bool = False) -> bool:
    # A failed compare (its gate) still wrote compare.json: the numbers belong in the report.
    allowed = ("ok", "cached", "failed") if failed_too else ("ok", "cached")
    return steps.get(name, {}).get("status") in allowed


def _dominant(branch_ms: dict[str, float] | None) -> str | None:
    if not branch_ms:
        return None
    return max(branch_ms, key=lambda b: branch_ms[b])


def _pareto(variants: list[dict[str, Any]]) -> list[str]:
    """Variants no other beats on both latency (lower) and accuracy (higher)."""
    points = [
        (v["name"], v["p50_rounds_ms"], v["accuracy"])
        for v in variants
        # A variant that fails its gate is never a trade-off worth offering.
        if v.get("p50_rounds_ms") is not None
        and v.get("accuracy") is not None
        and v.get("gate_passed") is not False
    ]
    front = []
    for name, lat, acc in points:
        dominated = any(
            (ol <= lat and oa >= acc) and (ol < lat or oa > acc) for _, ol, oa in points
        )
        if not dominated:
            front.append(name)
    return front


def _advice(host: dict[str, Any]) -> list[str]:
    from mmedge.doctor import cpu_advice

    return cpu_advice(host.get("cpu") or {})


# -- Markdown ---------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.3f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def variant_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for v in report["variants"]:
        interval = v.get("speedup_interval") or {}
        speedup = _f(v["speedup"], "{:.2f}x")
        if interval and v["name"] != report.get("baseline"):
            speedup += f" [{interval['low']:.2f}, {interval['high']:.2f}]"
        rows.append(
            [
                v["name"],
                _f(v["bytes"] / 1e6 if v["bytes"] else None, "{:.2f}"),
                _f(v["accuracy"], "{:.2f}%"),
                _f(
                    v["top1_agreement"] * 100 if v["top1_agreement"] is not None else None,
                    "{:.2f}%",
                ),
                _f(v["cosine"], "{:.5f}"),
                _f(v["p50_rounds_ms"]),
                _f(v.get("p99_rounds_ms")),
                _f(v.get("samples_per_s"), "{:.0f}"),
                speedup,
                "yes" if v["name"] in report["pareto"] else "",
            ]
        )
    return rows


VARIANT_HEADERS = [
    "variant",
    "MB",
    "accuracy",
    "top-1 agreement",
    "cosine",
    "p50 ms",
    "p99 ms",
    "samples/s",
    "speed-up",
    "Pareto",
]


def branch_names(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for v in report["variants"]:
        for b in list(v.get("branches") or {}) + list(v.get("branch_ms") or {}):
            if b not in names:
                names.append(b)
    return names


def parity_branches(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for v in report["variants"]:
        names += [b for b in v.get("branches") or {} if b not in names]
    return names


def parity_rows(report: dict[str, Any]) -> list[list[str]]:
    branches = parity_branches(report)
    rows = []
    for v in report["variants"]:
        metrics = v.get("branches")
        if not metrics:
            continue
        cells = [
            f"{m['cosine']:.5f} / {_f(m['sqnr_db'], '{:.1f}')} dB" if (m := metrics.get(b)) else "-"
            for b in branches
        ]
        rows.append([v["name"], *cells, v.get("most_affected") or "-"])
    return rows


def latency_rows(report: dict[str, Any]) -> list[list[str]]:
    branches = branch_names(report)
    rows = []
    for v in report["variants"]:
        ms = v.get("branch_ms")
        if not ms:
            continue
        total = sum(ms.values()) or 1.0
        cells = [f"{ms.get(b, 0.0):.3f} ({100 * ms.get(b, 0.0) / total:.0f}%)" for b in branches]
        rows.append([v["name"], *cells, v.get("dominant_branch") or "-"])
    return rows


def step_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [
            s["step"],
            s["status"] or "-",
            _f(s["seconds"], "{:.1f}"),
            (s["note"] or "").replace("|", "/"),
        ]
        for s in report["steps"]
    ]


def render_markdown(report: dict[str, Any]) -> str:
    branches = branch_names(report)
    recipe = (report.get("recipe") or {}).get("name")
    cpu = (report.get("host") or {}).get("cpu") or {}
    parts = [
        f"# mmedge run: {recipe}",
        "",
        f"Host: {cpu.get('name', '?')} ({cpu.get('logical_cpus', '?')} logical CPUs; "
        f"{', '.join(cpu.get('features') or []) or 'no SIMD features read'}).",
        "",
        "## Variants",
        "",
        "Accuracy on the recipe's eval split; agreement and cosine against PyTorch FP32 "
        "(of the model each variant was built from). p50, p99 and samples/s: the samples of "
        f"{report.get('latency_rounds') or '-'} rounds that time every variant in turn at the "
        "recipe's bench settings; speed-up: median of the per-round p50 ratios against "
        f"{report.get('baseline') or '-'}, with its 95% bootstrap interval. "
        "Pareto: no other variant is both faster and more accurate.",
        "",
        table(VARIANT_HEADERS, variant_rows(report)),
        "",
        "## Per-branch parity",
        "",
        "Cosine / SQNR of each branch's output embedding against the FP32 ONNX export "
        "(itself checked against PyTorch at export). The most affected branch has the lowest "
        "SQNR, named when below 40 dB (error power above 0.01% of the signal's, i.e. error "
        "RMS above 1% of the signal's RMS).",
        "",
        table(["variant", *parity_branches(report), "most affected"], parity_rows(report)),
        "",
        "## Latency per branch",
        "",
        "Per-layer profiler times (ONNX Runtime profiling, OpenVINO PERF_COUNT) summed per "
        "branch, batch 1 at opt shapes; 'other' holds top-level ops.",
        "",
        table(["variant", *branches, "dominant"], latency_rows(report)),
        "",
    ]
    if report.get("devices"):
        parts += [
            "## On devices",
            "",
            "Measured by each device's own mmedge (`run --on`): p50 of `mmedge bench` at the "
            "recipe's bench settings, top-1 agreement against PyTorch FP32 recorded on this "
            "machine, and the branch with the most profiled time.",
            "",
            table(device_headers(report), device_rows(report)),
            "",
            *[f"- {n}" for n in device_notes(report)],
            "",
        ]
    missing = [(v["name"], k, why) for v in report["variants"] for k, why in v["missing"].items()]
    if missing:
        parts += ["## Missing results", ""]
        parts += [f"- {name} {kind}: {why}" for name, kind, why in missing]
        parts.append("")
    searched = search_rows(report)
    if searched:
        parts += [
            "## INT8 policy searches",
            "",
            "Each INT8 variant built with `quantization.accuracy`: the policies tried, their gate "
            "metric on the validation set, and (real builds) p50 from interleaved rounds.",
            "",
            table(SEARCH_HEADERS, searched),
            "",
        ]
    if report.get("advice"):
        parts += ["## Advice for this machine", ""] + [f"- {a}" for a in report["advice"]] + [""]
    parts += ["## Steps", "", table(["step", "status", "seconds", "note"], step_rows(report)), ""]
    return "\n".join(parts)
