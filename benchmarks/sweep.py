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
from pathlib import Path
from typing import Any

from benchmarks.common import (
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


def workers(rounds: int, root: Path) -> tuple[dict[str, Any], str]:
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
    counts = runs[2][0]["counts"]
    rows = [
        [f"{w} worker{'s' if w > 1 else ''}", f"{median([x['wall_s'] for x in runs[w]]):.1f}",
         ", ".join(f"{x['wall_s']:.1f}" for x in runs[w]),
         f"{x['counts']['run']} / {x['counts']['cached'] + x['counts']['shared']}",
         f"{_served(x['counts']):.0%}"]
        for w in (1, 2) for x in runs[w][:1]
    ]  # fmt: skip
    rows.append(["2 workers, again (resume)", f"{again['wall_s']:.1f}", "-",
                 f"{again['data']['counts']['run']} / {again['data']['counts']['cached']}",
                 f"{_served(again['data']['counts']):.0%}"])  # fmt: skip
    md = (
        "### A 12-trial grid on the reference recipe: 1 vs 2 workers\n\n"
        "`mmedge sweep recipes/reference.yaml` with run.variants (ORT FP32, ORT INT8, OpenVINO "
        "INT8) x quantization.method (minmax, entropy) x per_channel (on, off); the recipe "
        "prunes (0.5, distillation) and gates INT8 (the policy search). Fresh process and cache "
        f"per run, {rounds} rounds, the order alternating.\n\n"
        + table(["run", "median wall s", "each run s", "stages run / served", "served"], rows)
        + f"\n1 worker / 2 workers: **{ratio.median:.2f}x** [{ratio.low:.2f}, {ratio.high:.2f}] "
        "(median of per-round ratios, bootstrap 95% interval). Stages served: from the cache, "
        "or shared with the trial running them (the one prune serves all 12 trials; the FP32 "
        "build serves 4).\n"
    )
    return {"rounds": runs, "again": {"wall_s": again["wall_s"],
                                      "counts": again["data"]["counts"]},
            "ratio": vars(ratio), "served_share": _served(counts)}, md  # fmt: skip


def _front_values(data: dict[str, Any]) -> set[tuple[float, ...]]:
    from mmedge.sweep.front import values

    front = data["fronts"].get("local", [])
    return {tuple(v) for p in front if (v := values(p, OBJECTIVES)) is not None}


def search(trials: int, root: Path) -> tuple[dict[str, Any], str]:
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
            distinct = len({t["id"] for t in done["data"]["trials"]})
            found.append({"sampler": sampler, "seed": seed, "recovered": len(got & target),
                          "front": len(got), "distinct_trials": distinct,
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
    rows = [[f["sampler"], str(f["seed"]), f"{f['recovered']} / {len(target)}",
             f"{f['recovered'] / len(target):.0%}", str(f["distinct_trials"]),
             f"{f['wall_s']:.0f}"] for f in found]  # fmt: skip
    rows.append(["random (1000 draws)", "-", f"median {median(draws):.0f} / {len(target)} "
                 f"[{draws[50]:.0f}, {draws[949]:.0f}]", f"{median(draws) / len(target):.0%}",
                 str(trials), "-"])  # fmt: skip
    failed = grid["data"]["summary"]["failed"]
    md = (
        "### 30-trial Optuna vs the full 81-trial grid\n\n"
        f"Space: prune.branches.image/text/audio in {{{RATIOS}}} x run.variants (ORT FP32, ORT "
        "INT8, OpenVINO INT8); 3 distillation epochs, no INT8 gate. The grid took "
        f"{grid['wall_s']:.0f} s with 2 workers ({failed} trials failed: ratios all 0 leave "
        f"nothing to distil); its front on this machine has {len(target)} points. Each search "
        f"ran {trials} trials (fewer distinct ones when the sampler asked for a trial twice) "
        "on the grid's cache, so every figure is the same measurement.\n\n"
        + table(["search", "seed", "grid front found", "share", "distinct trials", "wall s"], rows)
        + "\nRandom: 30 of the 81 trials drawn uniformly, 1000 times; median and 5-95% range.\n"
    )
    data = {"grid": {"wall_s": grid["wall_s"], "front": sorted(target),
                     "counts": grid["data"]["counts"], "failed": failed},
            "searches": found, "random": {"median": median(draws), "p5": draws[50],
                                          "p95": draws[949]}}  # fmt: skip
    return data, md


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="workers,search")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    parts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mmedge-bench-sweep-") as tmp:
        if "workers" in args.parts:
            data, md = workers(args.rounds, Path(tmp) / "workers")
            results["workers"] = data
            parts.append(md)
        if "search" in args.parts:
            data, md = search(args.trials, Path(tmp) / "search")
            results["search"] = data
            parts.append(md)
    write_results("sweep", results, "\n".join(parts))


if __name__ == "__main__":
    main()
