"""`mmedge device ...`: the inventory, probing and set-up of the user's own devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from mmedge import console
from mmedge.clikit import JsonOpt, handled

device_app = typer.Typer(
    help="Your own devices, reached over SSH: add, list, remove, probe, setup. Then "
    "bench/compare/build/run --on NAME measure there.",
    no_args_is_help=True,
)
NameArg = typer.Argument(..., help="The device's name in mmedge (mmedge device list).")
AcceptOpt = typer.Option(
    False,
    "--accept-new-host-key",
    help="Accept and record the host key of a device never connected to (a changed key is "
    "always refused).",
)


@device_app.command("add")
@handled
def add(
    name: str = NameArg,
    ssh: str = typer.Option(
        ...,
        "--ssh",
        help="ssh destination: an alias of your ssh config, or user@host.",
        show_default=False,
    ),
    python: str = typer.Option("python3", help="Python on the device (setup replaces it)."),
    workdir: str = typer.Option("~/.mmedge", help="Where mmedge keeps artifacts there."),
    ssh_config: Path | None = typer.Option(None, help="ssh -F FILE instead of ~/.ssh/config."),
    cooldown: float = typer.Option(0.0, min=0, help="Idle seconds before each measurement."),
    replace: bool = typer.Option(False, "--replace", help="Replace a device of that name."),
    as_json: bool = JsonOpt,
) -> None:
    """Add a device to the inventory (no connection is made: mmedge device probe NAME)."""
    from mmedge.errors import DeviceError
    from mmedge.fleet.inventory import load_devices, new_device, save_devices

    devices = load_devices()
    if name in devices and not replace:
        raise DeviceError(f"device {name!r} exists ({devices[name].ssh})", hint="--replace")
    devices[name] = new_device(
        name=name,
        ssh=ssh,
        python=python,
        workdir=workdir,
        ssh_config=ssh_config.resolve() if ssh_config else None,
        cooldown_s=cooldown,
    )
    path = save_devices(devices)
    if as_json:
        console.print_json({"device": devices[name].model_dump(mode="json"), "file": str(path)})
    else:
        console.out.print(f"added {escape(name)} → {escape(ssh)} in {path}; next: "
                          f"mmedge device probe {escape(name)}")  # fmt: skip


@device_app.command("list")
@handled
def list_(as_json: bool = JsonOpt) -> None:
    """The devices and how each is reached."""
    from mmedge.fleet.inventory import devices_path, load_devices

    devices = load_devices()
    if as_json:
        console.print_json({
            "file": str(devices_path()),
            "devices": {n: d.model_dump(mode="json") for n, d in devices.items()},
        })  # fmt: skip
        return
    table = Table(title=f"devices ({devices_path()})")
    for col in ("name", "ssh", "python", "workdir"):
        table.add_column(col)
    for name, d in sorted(devices.items()):
        table.add_row(escape(name), escape(d.ssh), escape(d.python), escape(d.workdir))
    console.out.print(table)


@device_app.command("remove")
@handled
def remove(name: str = NameArg) -> None:
    """Remove a device from the inventory (nothing on the device is touched)."""
    from mmedge.fleet.inventory import get_device, load_devices, save_devices

    get_device(name)
    devices = load_devices()
    del devices[name]
    save_devices(devices)
    console.out.print(f"removed {escape(name)}")


@device_app.command("probe")
@handled
def probe(name: str = NameArg, accept_new_host_key: bool = AcceptOpt,
          as_json: bool = JsonOpt) -> None:  # fmt: skip
    """The device's fingerprint: CPU and ISA, memory, OS, Python, mmedge and runtimes, GPU,
    Jetson model and power mode, governor and temperature."""
    from mmedge.fleet.inventory import get_device
    from mmedge.fleet.remote import Remote

    with console.status(not as_json) as progress:
        progress(f"probing {name}")
        data = Remote(get_device(name), accept_new_host_key).probe()
    console.print_json({"device": name, **data}) if as_json else fingerprint(name, data)


@device_app.command("setup")
@handled
def setup(
    name: str = NameArg,
    extras: str = typer.Option(
        "onnxruntime", help="Comma-separated targets' extras to install (no torch is)."
    ),
    wheelhouse: Path | None = typer.Option(
        None, help="Install offline from this directory of wheels (pip download ...)."
    ),
    wheel: Path | None = typer.Option(None, help="This mmedge wheel \\[default: built or index]."),
    system_site_packages: bool | None = typer.Option(
        None,
        "--system-site-packages/--isolated",
        help="Let the venv see the system's packages (JetPack's TensorRT) \\[default: on a "
        "Jetson only].",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Make a virtual environment on the device with mmedge's runtime side and the extras."""
    from mmedge.fleet.inventory import get_device
    from mmedge.fleet.setup import setup_device

    chosen = [e.strip() for e in extras.split(",") if e.strip()]
    with console.status(not as_json) as progress:
        progress(f"setting up {name}")
        data = setup_device(get_device(name), chosen, wheelhouse, wheel, system_site_packages)
    if as_json:
        console.print_json(data)
        return
    pushed = data["pushed"]
    console.out.print(
        f"{escape(name)}: {escape(data['requirement'])} installed in {escape(data['python'])} "
        f"({pushed['sent_files']} of {pushed['files']} wheels sent, "
        f"{pushed['sent_bytes'] / 1e6:.1f} MB)"
    )
    fingerprint(name, data["fingerprint"])


def fingerprint(name: str, data: dict[str, Any]) -> None:
    table = Table(title=f"{name} ({data.get('hostname')})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    cpu = data.get("cpu") or {}
    mm = data.get("mmedge") or {}
    doctor = mm.get("doctor") or {}
    isa = (doctor.get("cpu") or {}).get("isa_profile")
    rows = [
        ("cpu", f"{cpu.get('model')} ({data.get('arch')}), {data.get('cores')} cores"),
        ("isa", f"{isa or '-'}; flags {' '.join(cpu.get('isa_flags') or []) or '-'}"),
        ("memory", f"{data.get('memory_gb')} GB; {data.get('disk_free_gb')} GB free in "
                   f"{data.get('workdir')}"),
        ("os", f"{data.get('os')}, kernel {data.get('kernel')}"),
        ("python", f"{(data.get('python') or {}).get('version')} "
                   f"({(data.get('python') or {}).get('path')})"),
        ("mmedge", f"{mm.get('version')} ({mm.get('format')})" if mm else
                   f"not installed: mmedge device setup {name}"),
    ]  # fmt: skip
    for target, info in (doctor.get("targets") or {}).items():
        if info.get("installed"):
            rows.append((target, f"{info.get('version')}; devices {info.get('devices') or '-'}"))
    nvidia, jetson, trt = data.get("nvidia"), data.get("jetson"), data.get("tensorrt") or {}
    if nvidia:
        rows.append(("gpu", f"{', '.join(nvidia.get('gpus') or [])}; CUDA {nvidia.get('cuda')}"))
    if jetson:
        rows.append(("jetson", f"{jetson.get('model')}; {jetson.get('l4t')}; power mode "
                               f"{jetson.get('power_mode')}"))  # fmt: skip
    if trt.get("version") or trt.get("trtexec"):
        rows.append(("tensorrt", f"{trt.get('version') or '-'}; trtexec {trt.get('trtexec')}"))
    hyg = data.get("hygiene") or {}
    rows.append(("governor", ", ".join(hyg.get("governors") or []) or "unknown"))
    rows.append(("temperature", f"{hyg.get('temperature_c')} °C ({hyg.get('hottest_zone')})"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    console.out.print(table)


_BENCH_FLAGS = {"iterations": "--iterations", "warmup": "--warmup", "duration_s": "--duration",
                "batch": "--batch", "threads": "--threads", "shape": "--shape", "mode": "--mode",
                "device": "--device"}  # fmt: skip


def bench_flags(overrides: dict[str, Any]) -> list[str]:
    """`mmedge bench` options given here, for the device's mmedge."""
    flags: list[str] = []
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "profile":
            flags.append("--profile" if value else "--no-profile")
        else:
            flags += [_BENCH_FLAGS[key], str(value)]
    return flags


def _finish(results: dict[str, Any], as_json: bool, render: Any) -> None:
    """Print every device's result or error; exit with the first failure's code."""
    from mmedge.failures import classify

    failures = {}
    for name, result in results.items():
        if isinstance(result, BaseException):
            found = classify(result)
            if found is None:
                raise result
            failures[name] = found
    if as_json:
        console.print_json({
            "devices": {
                n: ({"error": failures[n].message, "hint": failures[n].hint,
                     "exit_code": failures[n].exit_code} if n in failures else r)
                for n, r in results.items()
            }
        })  # fmt: skip
    else:
        for name, result in results.items():
            if name in failures:
                console.error(failures[name])
                continue
            console.out.print(f"[bold]on {escape(name)}[/]")
            render(result)
            for warning in result.get("warnings", []):
                console.err.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if failures:
        raise typer.Exit(next(iter(failures.values())).exit_code)


def bench_on_devices(directory: Path, on: str, overrides: dict[str, Any], as_json: bool) -> None:
    from mmedge.fleet.commands import bench_on, on_each
    from mmedge.fleet.inventory import parse_on

    devices = parse_on(on)
    flags = bench_flags(overrides)
    with console.status(not as_json) as progress:
        progress(f"benchmarking on {', '.join(d.name for d in devices)}")
        results = on_each(devices, lambda remote: bench_on(remote, directory, flags))
    _finish(results, as_json, console.bench)


def compare_on_devices(directory: Path, on: str, samples: int | None, as_json: bool) -> None:
    from mmedge.errors import AccuracyError
    from mmedge.fleet.commands import compare_on, on_each, reference_pack
    from mmedge.fleet.inventory import parse_on
    from mmedge.workspace import scratch_dir

    devices = parse_on(on)
    with console.status(not as_json) as progress, scratch_dir("reference") as tmp:
        progress("recording the FP32 reference")
        pack = Path(tmp) if reference_pack(directory, samples, Path(tmp)) else None
        progress(f"comparing on {', '.join(d.name for d in devices)}")
        results: dict[str, Any] = on_each(
            devices, lambda remote: compare_on(remote, directory, samples, pack)
        )
    failed = [n for n, r in results.items() if isinstance(r, dict) and r.get("exit_code") == 7]
    _finish(results, as_json, console.compare)
    if failed:
        raise AccuracyError(f"the compare gate failed on {', '.join(failed)}",
                            hint=f"details in {directory}/compare-on-NAME.json")  # fmt: skip


def build_on_devices(
    directory: Path, on: str, flags: list[str], mirror: Path | None, as_json: bool
) -> None:
    from mmedge.fleet.commands import build_on, on_each
    from mmedge.fleet.inventory import parse_on

    devices = parse_on(on)

    def one(remote: Any) -> dict[str, Any]:
        where = mirror / remote.name if mirror and len(devices) > 1 else mirror
        return build_on(remote, directory, flags, where or Path(f"{directory}@{remote.name}"))

    with console.status(not as_json) as progress:
        progress(f"building on {', '.join(d.name for d in devices)}")
        results = on_each(devices, one)
    _finish(results, as_json, lambda r: console.out.print(
        f"engine built on {r['device']}; mirrored to {r['mirror']}: {', '.join(r['mirrored'])}"))  # fmt: skip
