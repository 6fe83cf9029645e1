"""The sweep's report: per device, the front's table and its plots (accuracy against latency,
accuracy against size; every measured point grey, the front red), and every trial's outcome.
Markdown for reading anywhere, one self-contained HTML with inline SVG plots."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mmedge.run.html import _STYLE, _svg, _table
from mmedge.rundir import atomic_write_text

FRONT_HEADERS = ["trial", "variant", "accuracy %", "p50 ms", "MB", "settings", "recipe"]
TRIAL_HEADERS = ["#", "trial", "settings", "state", "points", "stages run / cached", "note"]


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def front_rows(data: dict[str, Any], device: str) -> list[list[str]]:
    labels = {t["id"]: t["label"] for t in data["trials"]}
    recipes = {Path(p).name: p for p in (data.get("front_recipes") or {}).get(device, [])}
    rows = []
    for p in data["fronts"].get(device, []):
        name = f"{p['trial']}-{p['variant']}.yaml"
        rows.append([p["trial"], p["variant"], _f(p.get("accuracy")), _f(p.get("p50_ms"), 3),
                     _f(p.get("mb"), 3), labels.get(p["trial"], ""),
                     f"front/{device}/{name}" if name in recipes else "-"])  # fmt: skip
    return rows


def trial_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in data["trials"]:
        stages = t.get("stages") or {}
        ran = sum(1 for s in stages.values() if s["status"] == "ok" and not s["cached"])
        cached = sum(1 for s in stages.values() if s["status"] == "ok" and s["cached"])
        bad = [p for p in t["points"] if p["status"] != "ok"]
        note = (bad[0].get("error") or bad[0].get("reason") or "") if bad else ""
        if t.get("repeat"):
            note = "asked again: the figures of its first run"
        rows.append([str(t["number"]), t["id"], t["label"], t["state"],
                     str(sum(p["status"] == "ok" for p in t["points"])), f"{ran} / {cached}",
                     note[:160]])  # fmt: skip
    return rows


def markdown(data: dict[str, Any]) -> str:
    def table(headers: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        return "\n".join(lines)

    counts = data.get("counts") or {}
    parts = [
        f"# mmedge sweep: {data['recipe']['name']}",
        "",
        f"{data['search']['kind']} search, {data['summary']['trials']} trials "
        f"({data['summary']['failed']} failed, {data['summary']['stopped']} stopped); "
        f"objectives: {', '.join(data['objectives'])}; status: {data.get('status')}. "
        f"Stages run: {counts.get('run', 0)}, served from the cache: {counts.get('cached', 0)}, "
        f"shared with a running trial: {counts.get('shared', 0)}.",
    ]
    for device in data["fronts"]:
        parts += ["", f"## Front on {device}", "", table(FRONT_HEADERS, front_rows(data, device))]
    parts += ["", "## Trials", "", table(TRIAL_HEADERS, trial_rows(data)), ""]
    return "\n".join(parts)


def plots(data: dict[str, Any], device: str) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        p for t in data["trials"] if not t.get("repeat") for p in t["points"]
        if p["device"] == device and p["status"] == "ok" and p.get("accuracy") is not None
    ]  # fmt: skip
    front = data["fronts"].get(device, [])
    out = []
    for column, label in (("p50_ms", "p50 latency ms"), ("mb", "size MB")):
        shown = [p for p in points if p.get(column) is not None]
        if not shown:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.scatter([p[column] for p in shown], [p["accuracy"] for p in shown], c="0.6", s=18,
                   label="trials")  # fmt: skip
        edge = sorted((p for p in front if p.get(column) is not None), key=lambda p: p[column])
        ax.scatter([p[column] for p in edge], [p["accuracy"] for p in edge], c="r", s=30,
                   label="front (all objectives)")  # fmt: skip
        for p in edge:
            ax.annotate(f"{p['trial'][:6]} {p['variant']}", (p[column], p["accuracy"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy %")
        ax.legend(fontsize=7)
        out.append((f"{device}: accuracy against {label}", _svg(fig)))
    return out


def render_html(data: dict[str, Any]) -> str:
    name = html.escape(data["recipe"]["name"])
    body = [f"<h1>mmedge sweep: {name}</h1>",
            f"<p>{html.escape(markdown(data).splitlines()[2])}</p>"]  # fmt: skip
    for device in data["fronts"]:
        body.append(f"<h2>Front on {html.escape(device)}</h2>")
        body.append(_table(FRONT_HEADERS, front_rows(data, device)))
        try:
            body += [f"<h3>{html.escape(t)}</h3>{svg}" for t, svg in plots(data, device)]
        except ImportError:
            body.append("<p class='warn'>Plots need matplotlib: pip install \"mmedge[report]\"</p>")
    body += ["<h2>Trials</h2>", _table(TRIAL_HEADERS, trial_rows(data), mark="failed")]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mmedge sweep: {name}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(directory: Path, data: dict[str, Any]) -> None:
    atomic_write_text(directory / "sweep.md", markdown(data))
    atomic_write_text(directory / "sweep.html", render_html(data))
