"""The report as one self-contained HTML file: the Markdown's tables plus inline SVG plots.

Plots (matplotlib, rendered to SVG text, no files or scripts fetched): latency distribution per
variant, accuracy against latency with the Pareto front, and per-branch latency bars. Without
matplotlib the HTML has the tables and says why the plots are missing.
"""

from __future__ import annotations

import html
import io
from typing import Any

from mmedge.run.report import (
    SEARCH_HEADERS,
    VARIANT_HEADERS,
    branch_names,
    device_headers,
    device_notes,
    device_rows,
    latency_rows,
    parity_branches,
    parity_rows,
    search_rows,
    step_rows,
    variant_rows,
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2} .warn{color:#a33} svg{max-width:100%;height:auto}
"""


def _table(headers: list[str], rows: list[list[str]], mark: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f"<td class='warn'>{html.escape(c)}</td>"
            if mark and c == mark
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.find("<svg") :]


def plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    timed = [v for v in report["variants"] if v.get("latency_ms")]
    if timed:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(timed)))
        stats = []
        for v in timed:
            q = v["latency_ms"].get("quantiles") or []
            lat = v["latency_ms"]
            if len(q) == 21:
                stats.append({"label": v["name"], "med": q[10], "q1": q[5], "q3": q[15],
                              "whislo": q[1], "whishi": q[19], "fliers": []})  # fmt: skip
            else:
                stats.append({"label": v["name"], "med": lat["p50"], "q1": lat["p50"],
                              "q3": lat["p90"], "whislo": lat["min"], "whishi": lat["p99"],
                              "fliers": []})  # fmt: skip
        ax.bxp(stats, vert=False, showfliers=False)
        ax.set_xlabel("latency ms (box: p25-p75, whiskers: p5-p95)")
        out.append(("Latency distribution per artifact", _svg(fig)))
    points = [v for v in timed if v.get("accuracy") is not None and v.get("p50_rounds_ms")]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4))
        front = [v for v in points if v["name"] in report["pareto"]]
        ax.scatter([v["p50_rounds_ms"] for v in points], [v["accuracy"] for v in points])
        for v in points:
            ax.annotate(v["name"], (v["p50_rounds_ms"], v["accuracy"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        front.sort(key=lambda v: v["p50_rounds_ms"])
        ax.plot([v["p50_rounds_ms"] for v in front], [v["accuracy"] for v in front],
                "r--", label="Pareto front")  # fmt: skip
        ax.set_xlabel("p50 latency ms")
        ax.set_ylabel("eval accuracy %")
        ax.legend()
        out.append(("Accuracy against latency", _svg(fig)))
    searched = [v for v in report["variants"] if v.get("search")]
    if searched:
        fig, ax = plt.subplots(figsize=(7, 4))
        for v in searched:
            built = [s for s in v["search"]["steps"] if s["built"] and s["p50_ms"] is not None]
            ax.plot([s["p50_ms"] for s in built], [s["metric"] for s in built], "o-",
                    label=f"{v['name']} ({v['search']['metric']})")  # fmt: skip
            chosen = [s for s in built if s["name"] == v["search"]["chosen"]]
            ax.scatter([s["p50_ms"] for s in chosen], [s["metric"] for s in chosen], s=120,
                       facecolors="none", edgecolors="r")  # fmt: skip
            ax.axhline(v["search"]["target"], ls=":", color="gray")
        ax.set_xlabel("p50 latency ms (interleaved rounds)")
        ax.set_ylabel("gate metric")
        ax.legend(fontsize=7)
        out.append(("INT8 policy search: gate metric against latency (circled: chosen)", _svg(fig)))
    profiled = [v for v in timed if v.get("branch_ms")]
    if profiled:
        branches = branch_names(report)
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(profiled)))
        left = [0.0] * len(profiled)
        for branch in branches:
            values = [v["branch_ms"].get(branch, 0.0) for v in profiled]
            ax.barh([v["name"] for v in profiled], values, left=left, label=branch)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.set_xlabel("profiled ms per branch (batch 1)")
        ax.legend(fontsize=7, ncol=len(branches))
        out.append(("Latency per branch", _svg(fig)))
    return out


def render_html(report: dict[str, Any]) -> str:
    branches = branch_names(report)
    recipe = html.escape(str((report.get("recipe") or {}).get("name")))
    try:
        figures = plots(report)
        plot_html = "".join(f"<h2>{html.escape(t)}</h2>{svg}" for t, svg in figures)
    except ImportError:
        plot_html = "<p class='warn'>Plots need matplotlib: pip install \"mmedge[report]\"</p>"
    worst = {v["name"]: v.get("most_affected") for v in report["variants"]}
    parity = "".join(
        f"<li>{html.escape(n)}: most affected branch <b>{html.escape(b)}</b></li>"
        for n, b in worst.items()
        if b
    )
    missing = "".join(
        f"<li>{html.escape(v['name'])} {html.escape(k)}: {html.escape(str(w))}</li>"
        for v in report["variants"]
        for k, w in v["missing"].items()
    )
    advice = "".join(f"<li>{html.escape(a)}</li>" for a in report.get("advice") or [])
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mmedge run: {recipe}</title>"
        f"<style>{_STYLE}</style></head><body><h1>mmedge run: {recipe}</h1>"
        "<h2>Variants</h2>"
        + _table(VARIANT_HEADERS, variant_rows(report))
        + "<h2>Per-branch parity (cosine / SQNR vs the FP32 export)</h2>"
        + _table(["variant", *parity_branches(report), "most affected"], parity_rows(report))
        + (f"<ul>{parity}</ul>" if parity else "")
        + "<h2>Latency per branch (profiled ms)</h2>"
        + _table(["variant", *branches, "dominant"], latency_rows(report))
        + (
            "<h2>INT8 policy searches</h2>" + _table(SEARCH_HEADERS, search_rows(report))
            if search_rows(report)
            else ""
        )
        + (
            "<h2>On devices</h2>"
            + _table(device_headers(report), device_rows(report))
            + "<ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in device_notes(report))
            + "</ul>"
            if report.get("devices")
            else ""
        )
        + plot_html
        + (f"<h2>Missing results</h2><ul>{missing}</ul>" if missing else "")
        + (f"<h2>Advice for this machine</h2><ul>{advice}</ul>" if advice else "")
        + "<h2>Steps</h2>"
        + _table(["step", "status", "seconds", "note"], step_rows(report), mark="failed")
        + "</body></html>\n"
    )
