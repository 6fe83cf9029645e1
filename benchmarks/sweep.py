"""`mmedge sweep` on this machine's local Ray cluster.

1. Workers: a 12-trial grid on the reference recipe (prune 0.5 with distillation, the INT8
   accuracy gate, three variants x two calibration methods x per-channel on/off), each run in a
   fresh process with a fresh cache, with 1 and then 2 workers (the order alternates by round).
   Wall time, the paired ratio, and the share of stages served without running (from the cache,
   or shared with the trial that was running them). Then the same sweep again: a resume.
2. Search: the full grid of a larger space (27 per-branch pruning ratios x 3 variants = 81
   trials; 3 distillation epochs, no INT8 gate, so that the grid fits in minutes), then 30-trial
   Optuna searches (TPE and NSGA-II, three seeds each) over the same space and the same cache:
   how much of the grid's front (accuracy, p50, MB on this machine) each finds. Sharing the
   cache makes every search see the same measurement of the same artifact, so the fronts differ
   by what was searched only. Baseline: 30 trials drawn at random from the grid.

    python -m benchmarks.sweep [--parts workers,search] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    ROOT,
    fresh_process,
    median,
    paired_interval,
    table,
    write_results,
)

RECIPE = ROOT / "recipes" / "reference.yaml"
GRID12 = ["--grid", "run.variants=onnxruntime-fp32,onnxruntime-int8,openvino-int8",
          "--grid", "quantization.method=minmax,entropy",
          "--grid", "quantization.per_channel=true,false"]  # fmt: skip
RATIOS = "0.0,0.25,0.5"
SPACE81 = ["--grid", f"prune.branches.image={RATIOS}", "--grid", f"prune.branches.text={RATIOS}",
           "--grid", f"prune.branches.audio={RATIOS}",
           "--grid", "run.variants=onnxruntime-fp32,onnxruntime-int8,openvino-int8",
           "--set", "prune.recover.epochs=3", "--set", "quantization.accuracy=null"]  # fmt: skip
OBJECTIVES = ["accuracy", "latency", "size"]


def sweep(args: list[str]) -> dict[str, Any]:
    """One `mmedge sweep` in a fresh process: its wall time and its sweep.json."""
    out = Path(args[args.index("-o") + 1])
    ran = fresh_process([sys.executable, "-m", "mmedge", "sweep", str(RECIPE), *args])
    if ran["rc"] not in (0, 18):  # 18: some trials failed (recorded), the sweep finished
        raise SystemExit(f"sweep failed ({ran['rc']}): {ran['stderr']}")
    data = json.loads((out / "sweep.json").read_text())
    return {"wall_s": round(ran["wall_s"], 1), "rc": ran["rc"], "data": data}


def _served(counts: dict[str, int]) -> float:
    total = counts["run"] + counts["cached"] + counts["shared"]
    return (counts["cached"] + counts["shared"]) / total if total else 0.0


def workers(rounds: int, root: Path) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    last = None
    for r in range(rounds):
        for w in (1, 2) if r % 2 == 0 else (2, 1):
            out = root / f"w{w}-r{r}"
            done = sweep([*GRID12, "--workers", str(w), "-o", str(out)])
            runs[w].append({"wall_s": done["wall_s"], "counts": done["data"]["counts"],
                            "trials": len(done["data"]["trials"])})  # fmt: skip
            last = out
            print(f"workers={w} round {r}: {done['wall_s']} s {done['data']['counts']}", flush=True)
    assert last is not None
    again = sweep([*GRID12, "--workers", "2", "-o", str(last)])
    ratio = paired_interval([x["wall_s"] for x in runs[1]], [x["wall_s"] for x in runs[2]])
    return {"rounds": runs, "again": {"wall_s": again["wall_s"],
                                      "counts": again["data"]["counts"]},
            "ratio": vars(ratio), "served_share": _served(runs[2][0]["counts"])}  # fmt: skip


def render_workers(data: dict[str, Any]) -> str:
    runs = {int(w): r for w, r in data["rounds"].items()}
    again, ratio = data["again"], data["ratio"]
    rows = [
        [f"{w} worker{'s' if w > 1 else ''}", f"{median([x['wall_s'] for x in runs[w]]):.1f}",
         ", ".join(f"{x['wall_s']:.1f}" for x in runs[w]),
         f"{x['counts']['run']} / {x['counts']['cached'] + x['counts']['shared']}",
         f"{_served(x['counts']):.0%}"]
        for w in (1, 2) for x in runs[w][:1]
    ]  # fmt: skip
    rows.append(["2 workers, again (resume)", f"{again['wall_s']:.1f}", "-",
                 f"{again['counts']['run']} / {again['counts']['cached']}",
                 f"{_served(again['counts']):.0%}"])  # fmt: skip
    return (
        "### A 12-trial grid on the reference recipe: 1 vs 2 workers\n\n"
        "`mmedge sweep recipes/reference.yaml` with run.variants (ORT FP32, ORT INT8, OpenVINO "
        "INT8) x quantization.method (minmax, entropy) x per_channel (on, off); the recipe "
        "prunes (0.5, distillation) and gates INT8 (the policy search). Fresh process and cache "
        f"per run, {ratio['rounds']} rounds, the order alternating; measured "
        f"{data.get('measured', '2026-11-30 17:15 UTC')}. Stages run / served: the "
        "first run's (a stage is served from the cache, or shared with the trial running it).\n\n"
        + table(["run", "median wall s", "each run s", "stages run / served", "served"], rows)
        + f"\n1 worker / 2 workers: **{ratio['median']:.2f}x** [{ratio['low']:.2f}, "
        f"{ratio['high']:.2f}] (median of per-round ratios, bootstrap 95% interval).\n"
    )


def _front_values(data: dict[str, Any]) -> set[tuple[float, ...]]:
    from mmedge.sweep.front import values

    front = data["fronts"].get("local", [])
    return {tuple(v) for p in front if (v := values(p, OBJECTIVES)) is not None}


def search(trials: int, root: Path) -> dict[str, Any]:
    from mmedge.sweep.front import pareto, values

    cache = root / "cache"
    grid = sweep([*SPACE81, "--workers", "2", "--cache", str(cache), "-o", str(root / "grid")])
    target = _front_values(grid["data"])
    print(f"grid: {grid['wall_s']} s, front {len(target)}", flush=True)
    found: list[dict[str, Any]] = []
    for sampler in ("tpe", "nsga2"):
        for seed in (0, 1, 2):
            out = root / f"{sampler}-{seed}"
            done = sweep([*SPACE81, "--search", "optuna", "--trials", str(trials), "--sampler",
                          sampler, "--seed", str(seed), "--workers", "2", "--cache", str(cache),
                          "-o", str(out)])  # fmt: skip
            got = _front_values(done["data"])
            found.append({"sampler": sampler, "seed": seed, "recovered": len(got & target),
                          "front": len(got), "asks": len(done["data"]["trials"]),
                          "distinct_trials": len({t["id"] for t in done["data"]["trials"]}),
                          "stages_run": done["data"]["counts"]["run"],
                          "wall_s": done["wall_s"]})  # fmt: skip
            print(found[-1], flush=True)
    points = [p for t in grid["data"]["trials"] for p in t["points"] if p["status"] == "ok"]
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        by_trial.setdefault(p["trial"], []).append(p)
    rng = random.Random(0)
    ids = sorted({t["id"] for t in grid["data"]["trials"]})
    draws: list[float] = []
    for _ in range(1000):
        chosen = rng.sample(ids, trials)
        sub = [p for i in chosen for p in by_trial.get(i, [])]
        got = {tuple(v) for p in pareto(sub, OBJECTIVES) if (v := values(p, OBJECTIVES))}
        draws.append(float(len(got & target)))
    draws.sort()
    return {"trials": trials,
            "grid": {"wall_s": grid["wall_s"], "front": sorted(target), "trials": len(ids),
                     "counts": grid["data"]["counts"], "failed": grid["data"]["summary"]["failed"]},
            "searches": found,
            "random": {"median": median(draws), "p5": draws[50], "p95": draws[949]}}  # fmt: skip


def render_search(data: dict[str, Any]) -> str:
    grid, found, rnd, trials = data["grid"], data["searches"], data["random"], data["trials"]
    size = len(grid["front"])
    rows = [[f["sampler"], str(f["seed"]), f"{f['recovered']} / {size}",
             f"{f['recovered'] / size:.0%}", f"{f['distinct_trials']} ({f.get('asks', '-')})",
             f"{f['wall_s']:.0f}"] for f in found]  # fmt: skip
    rows.append(["random (1000 draws)", "-", f"median {rnd['median']:.0f} / {size} "
                 f"[{rnd['p5']:.0f}, {rnd['p95']:.0f}]", f"{rnd['median'] / size:.0%}",
                 str(trials), "-"])  # fmt: skip
    failed = f", {grid['failed']} of them failed" if grid["failed"] else ""
    return (
        f"### {trials}-trial Optuna vs the full {grid['trials']}-trial grid\n\n"
        f"Space: prune.branches.image/text/audio in {{{RATIOS}}} x run.variants (ORT FP32, ORT "
        "INT8, OpenVINO INT8); the fusion head at the recipe's ratio 0.5, 3 distillation "
        f"epochs, no INT8 gate. The grid took {grid['wall_s']:.0f} s with 2 workers{failed}; "
        f"its front (accuracy, p50, MB) on this machine has {size} points. Each search ran "
        f"{trials} distinct trials (a trial the sampler asked again is served from the cache and "
        "not counted; asks in brackets) on the grid's cache, so every figure is the same "
        f"measurement of the same artifact. Measured {data.get('measured')}.\n\n"
        + table(["search", "seed", "grid front found", "share", "trials (asks)", "wall s"], rows)
        + f"\nRandom: {trials} of the {grid['trials']} trials drawn uniformly, 1000 times; "
        "median and 5-95% range.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="workers,search")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    # A part run alone keeps the other's recorded figures (the Markdown is rendered from them).
    recorded = RESULTS / "sweep.json"
    results: dict[str, Any] = {}
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        results = {k: v for k, v in old.items() if k in ("workers", "search")}
    with tempfile.TemporaryDirectory(prefix="mmedge-bench-sweep-") as tmp:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if "workers" in args.parts:
            results["workers"] = {**workers(args.rounds, Path(tmp) / "workers"), "measured": when}
        if "search" in args.parts:
            results["search"] = {**search(args.trials, Path(tmp) / "search"), "measured": when}
    parts = []
    if "workers" in results:
        parts.append(render_workers(results["workers"]))
    if "search" in results:
        parts.append(render_search(results["search"]))
    write_results("sweep", results, "\n".join(parts))


if __name__ == "__main__":
    main()
