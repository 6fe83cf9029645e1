"""The steps of `mmedge run --on DEVICE...`: each variant measured on each device.

Per device, in its own lane (devices run in parallel, a device's steps one after another):
probe (its fingerprint, read afresh every run) → for targets built on the device, build the
engine there → compare against the FP32 reference recorded here → bench with per-branch
profiling. Results land beside each artifact (``compare-on-NAME.json``,
``bench-on-NAME.json``) and the fingerprint in ``devices/NAME.json``; a step's key holds the
device's stable fingerprint, so another device (or a changed one) measures again and an
unchanged one resumes: a lost connection costs only the step it cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmedge.fleet.inventory import Device
from mmedge.run.steps import RunContext, Step, _artifact_sha, _data_sha

DEVICES = "devices"  # in the run directory: NAME.json fingerprints, NAME/VARIANT engine mirrors


def fingerprint_path(ctx: RunContext, device: Device) -> Path:
    return ctx.directory / DEVICES / f"{device.name}.json"


def stable_fingerprint(ctx: RunContext, device: Device) -> dict[str, Any]:
    """What decides a measurement on the device (hardware, OS, runtimes); not heat or time."""
    try:
        data = json.loads(fingerprint_path(ctx, device).read_text())
    except (OSError, ValueError):
        return {}
    mm = data.get("mmedge") or {}
    doctor = mm.get("doctor") or {}
    return {
        "ssh": device.ssh,
        "cpu": data.get("cpu"),
        "cores": data.get("cores"),
        "memory_gb": data.get("memory_gb"),
        "os": [data.get("os"), data.get("kernel"), data.get("arch")],
        "mmedge": [mm.get("version"), mm.get("format")],
        "runtimes": {n: t.get("version") for n, t in (doctor.get("targets") or {}).items()},
        "gpu": [data.get("nvidia"), data.get("jetson"), data.get("tensorrt")],
    }


def runtime_missing(ctx: RunContext, device: Device, target: str) -> str | None:
    """Why ``target`` cannot run on the device, from its fingerprint (None: it can, or the
    fingerprint does not say, and the device's mmedge will)."""
    try:
        data = json.loads(fingerprint_path(ctx, device).read_text())
    except (OSError, ValueError):
        return None
    doctor = (data.get("mmedge") or {}).get("doctor") or {}
    info = (doctor.get("targets") or {}).get(target)
    if info is None or info.get("runs_here", info.get("installed")):
        return None
    if target == "tensorrt" and (data.get("tensorrt") or {}).get("trtexec"):
        return None  # trtexec builds and benches engines without the Python package
    from mmedge.targets import target_spec

    why = "not installed" if not info.get("installed") else "its runtime is missing"
    return (
        f"{target} cannot run on {device.name}: {why} (mmedge device setup {device.name} "
        f"--extras {target_spec(target).extra})"
    )


def _missing(ctx: RunContext, device: Device, variant: str) -> Callable[[], str | None]:
    return lambda: runtime_missing(ctx, device, variant.split("-")[0])


def plan_devices(ctx: RunContext, variants: list[str], devices: list[Device]) -> list[Step]:
    from mmedge.targets import target_spec

    steps: list[Step] = []
    for device in devices:
        steps.append(_probe_step(ctx, device))
        for variant in variants:
            on_device = target_spec(variant.split("-")[0]).on_device
            needs = [f"build:{variant}", f"probe@{device.name}"]
            if on_device:
                steps.append(_remote_build_step(ctx, device, variant, needs))
                needs = [*needs, f"build@{device.name}:{variant}"]
            steps.append(_remote_compare_step(ctx, device, variant, needs))
            steps.append(_remote_bench_step(ctx, device, variant, needs))
    return steps


def _probe_step(ctx: RunContext, device: Device) -> Step:
    from mmedge.fleet.remote import Remote
    from mmedge.rundir import atomic_write_json

    out = fingerprint_path(ctx, device)

    def action() -> dict[str, Any]:
        data = Remote(device).probe()
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, data)
        return {"cpu": (data.get("cpu") or {}).get("model"), "mmedge": bool(data.get("mmedge"))}

    # Read afresh every run: the device may have been reinstalled, re-powered, re-moded.
    return Step(f"probe@{device.name}", [], lambda: [out],
                lambda: {"device": device.model_dump(mode="json"), "at": time.time()},
                action, lane=device.name)  # fmt: skip


def _remote_key(ctx: RunContext, device: Device, variant: str) -> dict[str, Any]:
    return {
        "artifact": _artifact_sha(ctx.artifact(variant)),
        "device": stable_fingerprint(ctx, device),
    }


def _remote_build_step(ctx: RunContext, device: Device, variant: str, needs: list[str]) -> Step:
    from mmedge.fleet.commands import build_on
    from mmedge.fleet.remote import Remote

    mirror = ctx.directory / DEVICES / device.name / variant

    def action() -> dict[str, Any]:
        result = build_on(Remote(device), ctx.artifact(variant), [], mirror)
        return {"mirrored": result["mirrored"]}

    return Step(f"build@{device.name}:{variant}", needs, lambda: [mirror],
                lambda: _remote_key(ctx, device, variant), action, variant=variant,
                lane=device.name, unavailable_now=_missing(ctx, device, variant))  # fmt: skip


def _remote_compare_step(ctx: RunContext, device: Device, variant: str, needs: list[str]) -> Step:
    from mmedge.errors import AccuracyError
    from mmedge.fleet.commands import compare_on, reference_pack
    from mmedge.fleet.remote import Remote
    from mmedge.workspace import scratch_dir

    directory = ctx.artifact(variant)
    samples = ctx.recipe.run.compare_samples

    def action() -> dict[str, Any]:
        with scratch_dir("reference") as tmp:
            pack = Path(tmp) if reference_pack(directory, samples, Path(tmp)) else None
            result = compare_on(Remote(device), directory, samples, pack)
        if result["exit_code"] == 7:
            raise AccuracyError(
                f"the compare gate failed on {device.name}: {'; '.join(result.get('failures') or [])}",
                hint=f"details in {directory}/compare-on-{device.name}.json",
            )
        return {"top1_agreement": result.get("top1_agreement")}

    def key() -> dict[str, Any]:
        return {
            **_remote_key(ctx, device, variant),
            **_data_sha(ctx.effective(), calibration=False),
            "gate": ctx.effective().compare.model_dump(mode="json"),
            "samples": samples,
        }

    return Step(f"compare@{device.name}:{variant}", needs,
                lambda: [directory / f"compare-on-{device.name}.json"], key, action,
                variant=variant, lane=device.name,
                unavailable_now=_missing(ctx, device, variant))  # fmt: skip


def _remote_bench_step(ctx: RunContext, device: Device, variant: str, needs: list[str]) -> Step:
    from mmedge.fleet.commands import bench_on
    from mmedge.fleet.remote import Remote

    directory = ctx.artifact(variant)

    def action() -> dict[str, Any]:
        result = bench_on(Remote(device), directory, ["--profile"])
        return {"p50_ms": result["latency_ms"]["p50"], "warnings": result["warnings"]}

    return Step(f"bench@{device.name}:{variant}", needs,
                lambda: [directory / f"bench-on-{device.name}.json"],
                lambda: {**_remote_key(ctx, device, variant),
                         "bench": ctx.recipe.bench.model_dump(mode="json")},
                action, variant=variant, lane=device.name,
                unavailable_now=_missing(ctx, device, variant))  # fmt: skip
