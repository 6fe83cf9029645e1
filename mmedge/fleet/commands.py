"""bench / compare / build on devices: push the artifact, run the device's mmedge, keep what
it measured beside the artifact (``bench-on-NAME.json``, ``compare-on-NAME.json``).

compare needs the FP32 reference, which a device without torch cannot compute: the
workstation records it (the recipe's eval inputs, their labels and the reference's outputs,
the same file a TensorRT bundle carries) and pushes it with the artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mmedge.fleet.inventory import Device
from mmedge.fleet.remote import Remote

T = TypeVar("T")


def on_each(devices: list[Device], work: Callable[[Remote], T]) -> dict[str, T | BaseException]:
    """``work`` on every device at once (one thread each: the waiting is on the network);
    a device's failure is its result, not the others' loss."""
    results: dict[str, T | BaseException] = {}

    def one(device: Device) -> None:
        try:
            results[device.name] = work(Remote(device))
        except Exception as err:
            results[device.name] = err

    from mmedge.fleet.ssh import hang_up_all, reset_cancel

    reset_cancel()
    pool = ThreadPoolExecutor(max_workers=max(1, len(devices)))
    try:
        list(pool.map(one, devices))
    except BaseException:  # Ctrl-C, SIGTERM: stop the commands running on the devices
        hang_up_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {d.name: results[d.name] for d in devices}


def _on_device_result(
    remote: Remote, data: dict[str, Any], ran: Any, pushed: Any
) -> dict[str, Any]:
    return {
        **data,
        "device": remote.name,
        "hygiene": ran.hygiene,
        "lock_wait_s": ran.lock_wait_s,
        "warnings": [*data.get("warnings", []), *ran.warnings],
        "pushed": {"files": pushed.files, "sent_files": pushed.sent_files,
                   "sent_bytes": pushed.sent_bytes, "seconds": pushed.seconds},
    }  # fmt: skip


def bench_on(
    remote: Remote, directory: Path, flags: list[str], save: bool = True
) -> dict[str, Any]:
    from mmedge.artifacts import save_beside
    from mmedge.rundir import read_manifest

    read_manifest(directory)  # a finished artifact, checked before anything is sent
    pushed = remote.push(directory)
    ran = remote.mmedge(["bench", pushed.path, *flags])
    result = _on_device_result(remote, ran.data or {}, ran, pushed)
    if save:
        result["warnings"] += save_beside(directory, f"bench-on-{remote.name}.json", result)
    return result


def reference_pack(directory: Path, samples: int | None, out: Path) -> dict[str, Any] | None:
    """The FP32 reference for ``directory``'s recipe on its eval data, recorded in ``out``;
    None for targets whose artifact carries its own (TensorRT bundles)."""
    from mmedge.artifacts import open_artifact, reference_runner
    from mmedge.data.datasets import open_compare_data
    from mmedge.data.recorded import write_recorded
    from mmedge.targets import SessionConfig, target_spec

    manifest, recipe, _ = open_artifact(directory)
    if target_spec(manifest["target"]).on_device:
        return None
    data = open_compare_data(recipe, samples)
    reference = reference_runner(recipe, None, SessionConfig(threads=recipe.bench.threads))
    out.mkdir(parents=True, exist_ok=True)
    return write_recorded(out / "reference.npz", data, reference, recipe.outputs)


def compare_on(
    remote: Remote, directory: Path, samples: int | None, pack: Path | None, save: bool = True
) -> dict[str, Any]:
    """Compare on the device against the recorded reference in ``pack`` (a directory made by
    reference_pack), or the bundle's own; the gate is the device mmedge's (exit 7 relayed)."""
    from mmedge.artifacts import save_beside

    pushed = remote.push(directory)
    argv = ["compare", pushed.path]
    if pack is not None:
        ref = remote.push(pack, kind="references")
        argv += ["--recorded", f"{ref.path}/reference.npz"]
    if samples is not None:
        argv += ["--samples", str(samples)]
    ran = remote.mmedge(argv, check=False)  # it loads the device: not while another measures
    if ran.rc not in (0, 7) or ran.data is None:
        raise remote.failure(ran, "compare")
    result = _on_device_result(remote, ran.data, ran, pushed)
    result["exit_code"] = ran.rc
    if pack is not None:
        result["reference"] = "pytorch-fp32, recorded here"
    if save:
        result["warnings"] += save_beside(directory, f"compare-on-{remote.name}.json", result)
    return result


def build_on(remote: Remote, bundle: Path, flags: list[str], mirror: Path) -> dict[str, Any]:
    """Build a bundle's engine on the device; the engine and its metadata stay there (later
    bench/compare --on use them) and are mirrored into ``mirror``."""
    from mmedge.rundir import read_manifest
    from mmedge.targets import target_spec

    manifest = read_manifest(bundle)
    if not target_spec(manifest["target"]).on_device:
        from mmedge.errors import ArtifactError

        raise ArtifactError(
            f"{bundle} is a {manifest['target']} artifact; build --on is for targets built on "
            "the device (TensorRT bundles)",
            hint=f"bench or compare it directly: mmedge bench {bundle} --on {remote.name}",
        )
    pushed = remote.push(bundle)
    ran = remote.mmedge(["build", pushed.path, *flags])
    from mmedge.rundir import MANIFEST
    from mmedge.targets.tensorrt.bundle import ENGINE, ENGINE_META, TIMING_CACHE

    copied = remote.pull(pushed.path, mirror, [ENGINE, ENGINE_META, TIMING_CACHE, MANIFEST])
    return {**(ran.data or {}), "device": remote.name, "mirror": str(mirror), "mirrored": copied,
            "warnings": ran.warnings}  # fmt: skip
