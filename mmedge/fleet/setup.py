"""`mmedge device setup`: a virtual environment on the device with mmedge's runtime side.

The device gets mmedge (no torch: the core package reads artifacts, compares and benches) plus
the extras of the targets it runs. The mmedge wheel is this mmedge's: built from the source
checkout when mmedge runs from one (so the device runs exactly the workstation's code), else
the same version from the index. Its dependencies come from the package index, or from a
wheelhouse directory pushed with it (air-gapped devices: ``pip download`` on a connected
machine of the device's platform, e.g. ``pip download "mmedge[onnxruntime]" -d wheels
--platform manylinux2014_aarch64 --only-binary=:all:``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mmedge import __version__
from mmedge.errors import DeviceError, RecipeError
from mmedge.fleet import ssh
from mmedge.fleet.inventory import Device, load_devices, save_devices
from mmedge.fleet.remote import Remote
from mmedge.workspace import scratch_dir

VENV = "venv"  # under the device's workdir


def allowed_extras() -> list[str]:
    from mmedge.targets import specs

    return sorted({s.extra for s in specs().values()})


def check_extras(extras: list[str]) -> list[str]:
    allowed = allowed_extras()
    bad = [e for e in extras if e not in allowed]
    if bad:
        raise RecipeError(f"--extras {','.join(bad)} is not a target's extra; expected some of "
                          f"{', '.join(allowed)}")  # fmt: skip
    return extras


def source_root() -> Path | None:
    """The checkout this mmedge runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "mmedge").is_dir() else None


def build_wheel(out: Path) -> Path:
    """A wheel of the checkout, built offline from a copy of its sources (setuptools would
    otherwise reuse the checkout's build/, which keeps modules since deleted)."""
    root = source_root()
    assert root is not None
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    shutil.copytree(root / "mmedge", src / "mmedge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    # A fixed timestamp makes the wheel's bytes depend on the sources only: an unchanged
    # mmedge is not sent again.
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    wheels = sorted(out.glob("mmedge-*.whl"))
    if done.returncode != 0 or not wheels:
        raise DeviceError(f"building mmedge's wheel failed: {done.stderr.strip()[-500:]}")
    return wheels[0]


def setup_device(
    device: Device,
    extras: list[str],
    wheelhouse: Path | None = None,
    wheel: Path | None = None,
    system_site_packages: bool | None = None,
) -> dict[str, Any]:
    """Install mmedge[extras] in a venv on the device and point the inventory at it. The venv
    sees the system's packages on a Jetson (JetPack's TensorRT) unless told otherwise."""
    check_extras(extras)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise RecipeError(f"--wheelhouse {wheelhouse} is not a directory of wheels")
    remote = Remote(device)
    before = remote.probe()  # reachable, a Python there; and is it a Jetson?
    version = str((before.get("python") or {}).get("version", "0"))
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (3, 10):
        raise DeviceError(
            f"{device.name} has Python {version} at {device.python}; mmedge needs 3.10 or newer",
            hint=f"install a newer Python there (JetPack 5 ships 3.8: e.g. python3.10 from the "
            f"deadsnakes PPA), then: mmedge device add {device.name} --ssh {device.ssh} "
            "--python python3.10 --replace",
        )
    shared = (
        before.get("jetson") is not None if system_site_packages is None else system_site_packages
    )
    suffix = f"[{','.join(extras)}]" if extras else ""
    with scratch_dir("wheels") as tmp:
        folder, built = Path(tmp) / "tree", Path(tmp) / "built"
        folder.mkdir()
        if wheel is None and source_root() is not None:
            wheel = build_wheel(built)
        # Ours first: a wheelhouse's own mmedge wheel of the same name does not replace it.
        for source in [wheel, *(sorted(wheelhouse.glob("*.whl")) if wheelhouse else [])]:
            if source is not None and not (folder / source.name).exists():
                (folder / source.name).symlink_to(source.resolve())
        pushed = remote.push(folder, kind="wheels")
    requirement = (
        "{wheels}/" + wheel.name + suffix if wheel is not None else f"mmedge{suffix}=={__version__}"
    )
    python = "python3" if device.python.endswith(f"{VENV}/bin/python") else device.python
    reply = ssh.call(
        remote.endpoint,
        python,
        "setup",
        {"workdir": device.workdir, "venv": VENV, "wheels": pushed.path,
         "index": wheelhouse is None, "requirements": [requirement],
         "reinstall": ["{wheels}/" + wheel.name] if wheel is not None else [],
         "system_site_packages": shared},
        timeout=3600,
    )  # fmt: skip
    result = reply.require(device.name, "setup")
    if result.get("error"):
        last = (result.get("log") or [{}])[-1]
        raise DeviceError(
            f"setting up {device.name} failed: {result.get('detail')}\n"
            f"{str(last.get('output', ''))[-1500:]}",
            hint="the device needs python3 with venv (Debian/Ubuntu: apt install python3-venv)"
            + ("" if wheelhouse else "; offline devices: --wheelhouse DIR"),
        )
    updated = device.model_copy(update={"python": result["python"]})
    devices = load_devices()
    devices[device.name] = updated
    save_devices(devices)
    fingerprint = Remote(updated).probe()
    return {
        "device": device.name,
        "python": result["python"],
        "system_site_packages": shared,
        "requirement": requirement.replace("{wheels}", pushed.path),
        "pushed": {"files": pushed.files, "sent_files": pushed.sent_files,
                   "sent_bytes": pushed.sent_bytes},
        "fingerprint": fingerprint,
    }  # fmt: skip
