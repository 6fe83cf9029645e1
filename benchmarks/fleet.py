"""The device fleet on loopback devices (a real sshd on 127.0.0.1, tests/sshd.py).

1. Remote bench vs local bench of the same artifact, interleaved rounds: what SSH, the agent
   and the device's own mmedge process cost a latency figure. Goal: p50 within 2%.
2. The second push of an unchanged 100 MB artifact: bytes sent (goal: none) and time (goal:
   at most 1 s), against the first push.
3. `mmedge run --on` three devices in parallel vs the same device steps one device after
   another. The three "devices" share this machine's cores, so parallel benches compete for
   them: the gain measured here is the overlap of waiting (SSH, process start, the recorded
   reference), a lower bound for devices that are separate machines.

    python -m benchmarks.fleet [--rounds 9] [--iterations 2000]

Needs openssh-server and the wheelhouse (scripts/setup.sh installs both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    ROOT,
    build,
    interleaved,
    median,
    paired_interval,
    table,
    write_results,
)
from tests.sshd import WHEELHOUSE, start_sshd

DEVICES = ("dev-a", "dev-b", "dev-c")


def _devices(root: Path) -> dict[str, Any]:
    """dev-a set up from the wheelhouse; dev-b and dev-c share its Python, own workdirs."""
    from mmedge.fleet.inventory import Device, load_devices, save_devices
    from mmedge.fleet.setup import setup_device

    save_devices({"dev-a": Device(name="dev-a", ssh="dev-a", workdir=str(root / "dev-a"))})
    python = setup_device(load_devices()["dev-a"], ["onnxruntime"], WHEELHOUSE)["python"]
    devices = load_devices()
    for name in DEVICES[1:]:
        devices[name] = Device(name=name, ssh=name, python=python, workdir=str(root / name))
    save_devices(devices)
    return devices


def remote_vs_local(directory: Path, device: Any, rounds: int, iterations: int) -> dict[str, Any]:
    from mmedge.fleet.commands import bench_on
    from mmedge.fleet.remote import Remote

    flags = ["--iterations", str(iterations), "--warmup", "50", "--threads", "2", "--batch", "1"]
    remote = Remote(device)
    bench_on(remote, directory, flags, save=False)  # the first push, outside the timing

    def local() -> float:
        # `mmedge bench` in a fresh process, as the device runs it: same code, same start.
        done = subprocess.run(
            [sys.executable, "-m", "mmedge", "bench", str(directory), *flags, "--json"],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        return float(json.loads(done.stdout)["latency_ms"]["p50"])

    found = interleaved(
        {
            "remote": lambda: bench_on(remote, directory, flags, save=False)["latency_ms"]["p50"],
            "local": local,
        },
        rounds,
    )
    interval = paired_interval(found["remote"], found["local"])
    return {
        "remote_p50_ms": median(found["remote"]),
        "local_p50_ms": median(found["local"]),
        "ratio": interval.median,
        "ratio_interval": interval.to_json(),
        "rounds": found,
    }


def second_push(device: Any, root: Path, repeats: int = 5) -> dict[str, Any]:
    from mmedge.fleet.remote import Remote

    artifact = root / "big"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(os.urandom(100 << 20))
    (artifact / "manifest.json").write_text("{}")
    remote = Remote(device)
    first = remote.push(artifact)
    again = [remote.push(artifact) for _ in range(repeats)]
    return {
        "bytes": sum(p.stat().st_size for p in artifact.iterdir()),
        "first": {"seconds": first.seconds, "sent_bytes": first.sent_bytes},
        "again_seconds": [p.seconds for p in again],
        "again_sent_bytes": max(p.sent_bytes for p in again),
        "again_median_s": median([p.seconds for p in again]),
    }


def parallel_vs_sequential(root: Path, devices: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The device steps of a run (probe, compare, bench per variant) on three devices."""
    from mmedge.recipe import load_recipe
    from mmedge.run.engine import run_recipe

    recipe_path = ROOT / "recipes" / "reference.yaml"
    recipe = load_recipe(recipe_path, {"run.variants": ["onnxruntime-fp32", "onnxruntime-int8"]})
    out = root / "run"
    chosen = [devices[n] for n in DEVICES]
    run_recipe(recipe, recipe_path, out, devices=chosen)  # local steps built, devices warm

    def timed(group: list[Any]) -> float:
        redo = [f"{kind}@{d.name}" for d in group for kind in ("compare", "bench")]
        start = time.perf_counter()
        report = run_recipe(recipe, recipe_path, out, force=redo, devices=group)
        failed = [s for s in report["steps"] if s["status"] == "failed"]
        assert not failed, failed
        return time.perf_counter() - start

    found = interleaved(
        {
            "parallel": lambda: timed(chosen),
            "sequential": lambda: sum(timed([d]) for d in chosen),
        },
        repeats,
    )
    interval = paired_interval(found["sequential"], found["parallel"])
    return {
        "parallel_s": median(found["parallel"]),
        "sequential_s": median(found["sequential"]),
        "speedup": interval.median,
        "speedup_interval": interval.to_json(),
        "rounds": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--run-rounds", type=int, default=3)
    parser.add_argument(
        "--parts", default="bench,push,run", help="Measure these; keep the others' last record."
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    last = (
        json.loads((RESULTS / "fleet.json").read_text())
        if (RESULTS / "fleet.json").is_file()
        else {}
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with start_sshd(root / "sshd", list(DEVICES)) as server:
            os.environ.update(MMEDGE_SSH_CONFIG=str(server.config),
                              MMEDGE_DEVICES=str(root / "devices.yaml"))  # fmt: skip
            os.environ.pop("SSH_AUTH_SOCK", None)
            devices = _devices(root / "devices")
            benches: dict[str, Any] = {}
            rows = []
            for recipe, precision in [] if "bench" not in parts else (("reference", "int8"), ("reference-large", "fp32"),
                                      ("reference-large", "int8")):  # fmt: skip
                out = root / f"{recipe}-{precision}"
                build(recipe, precision, out)
                iterations = args.iterations if recipe == "reference" else args.iterations // 10
                r = remote_vs_local(out, devices["dev-a"], args.rounds, iterations)
                benches[f"{recipe}/{precision}"] = r
                i = r["ratio_interval"]
                rows.append([
                    recipe, precision, f"{r['remote_p50_ms']:.3f}", f"{r['local_p50_ms']:.3f}",
                    f"{100 * (r['ratio'] - 1):+.1f}%",
                    f"[{100 * (i['low'] - 1):+.1f}%, {100 * (i['high'] - 1):+.1f}%]",
                    "met" if max(abs(i["low"] - 1), abs(i["high"] - 1)) <= 0.02 else "not met",
                ])  # fmt: skip
            push = second_push(devices["dev-a"], root) if "push" in parts else last["push"]
            fleet = (
                parallel_vs_sequential(root, devices, args.run_rounds)
                if "run" in parts
                else last["run"]
            )
            if "bench" not in parts:
                benches, rows = last["bench"], last["bench_rows"]
    markdown = (
        "Loopback devices: a real OpenSSH server on 127.0.0.1, each device a workdir with a "
        "torch-free venv installed by `mmedge device setup --wheelhouse`.\n\n"
        f"**Remote vs local bench** (batch 1, 2 threads, opt shapes), {len(next(iter(benches.values()))['rounds']['remote'])} rounds "
        "alternating `mmedge bench --on dev-a` with a local `mmedge bench` (both fresh processes, same options): the median "
        "per-round ratio of p50s with its 95% bootstrap interval. Goal: within 2%, met when "
        "the whole interval is.\n\n"
        + table(
            [
                "recipe",
                "precision",
                "remote p50 ms",
                "local p50 ms",
                "difference",
                "interval",
                "within 2%",
            ],
            rows,
        )
        + f"\n**Second push of an unchanged {push['bytes'] / 1e6:.0f} MB artifact**: "
        f"{push['again_sent_bytes']} bytes sent, median {push['again_median_s']:.3f} s over "
        f"{len(push['again_seconds'])} pushes (max {max(push['again_seconds']):.3f} s; goal: "
        f"no bytes, at most 1 s: {'met' if push['again_sent_bytes'] == 0 and max(push['again_seconds']) <= 1 else 'not met'}). "
        f"The first push sent {push['first']['sent_bytes'] / 1e6:.0f} MB in "
        f"{push['first']['seconds']:.2f} s.\n\n"
        f"**`run --on` three devices**: the device steps (compare and bench of "
        f"onnxruntime-fp32 and -int8 on `reference`, plus each device's probe) redone "
        f"{len(fleet['rounds']['parallel'])} times each way: in parallel {fleet['parallel_s']:.1f} s, one device "
        f"after another {fleet['sequential_s']:.1f} s; speed-up {fleet['speedup']:.2f}x "
        f"[{fleet['speedup_interval']['low']:.2f}, {fleet['speedup_interval']['high']:.2f}]. "
        "The three loopback devices share this machine's 2 cores.\n"
    )
    kept = [p for p in ("bench", "push", "run") if p not in parts]
    if kept:
        markdown += (
            f"\n({', '.join(kept)}: kept from the previous record, measured "
            f"{', '.join(str(last.get('measured', {}).get(p) or 'earlier') for p in kept)}; this invocation ran `--parts {args.parts}`.)\n"
        )
    measured = {p: last.get("measured", {}).get(p) for p in kept}
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    measured |= {p: now for p in ("bench", "push", "run") if p in parts}
    write_results(
        "fleet",
        {"bench": benches, "bench_rows": rows, "push": push, "run": fleet, "measured": measured},
        markdown,
    )


if __name__ == "__main__":
    main()
