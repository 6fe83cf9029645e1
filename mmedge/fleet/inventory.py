"""The devices file: which devices the user has, and how to reach each one.

Where it is: ``$MMEDGE_DEVICES`` when set; else ``mmedge-devices.yaml`` in the current
directory when there is one (a project's own fleet, committed with it); else the user's config
directory (``~/.config/mmedge/devices.yaml`` on Linux). It holds no secrets: the SSH client
finds keys through the user's ssh config and agent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic import Field, ValidationError, field_validator

from mmedge.config import PosInt, StrictConfig
from mmedge.errors import DeviceError, RecipeError
from mmedge.fleet.ssh import Endpoint

PROJECT_FILE = "mmedge-devices.yaml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # no commas: --on takes a list


class Device(StrictConfig):
    name: str
    ssh: str = Field(description="ssh destination: an alias of your ssh config, or user@host")
    python: str = Field("python3", description="Python on the device (a venv's, after setup)")
    workdir: str = Field("~/.mmedge", description="where mmedge keeps artifacts on the device")
    ssh_config: Path | None = Field(None, description="ssh -F FILE instead of ~/.ssh/config")
    connect_timeout: PosInt = 10
    cooldown_s: float = Field(0.0, ge=0, description="idle seconds before each measurement")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"{value!r} is not allowed; expected letters, digits, '.', '_' or '-' (up to "
                "63, starting with a letter or digit)"
            )
        return value

    @field_validator("ssh")
    @classmethod
    def _destination(cls, value: str) -> str:
        if not value or value.startswith("-") or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not an ssh destination (an alias or user@host)")
        return value

    def endpoint(self, accept_new_host_key: bool = False) -> Endpoint:
        return Endpoint(
            self.name, self.ssh, self.ssh_config, self.connect_timeout, accept_new_host_key
        )


def devices_path() -> Path:
    env = os.environ.get("MMEDGE_DEVICES")
    if env:
        return Path(env)
    local = Path.cwd() / PROJECT_FILE
    if local.is_file():
        return local
    return Path(typer.get_app_dir("mmedge")) / "devices.yaml"


def load_devices(path: Path | None = None) -> dict[str, Device]:
    from mmedge.recipe import format_validation_error
    from mmedge.yamlfile import load_yaml

    path = path or devices_path()
    if not path.is_file():
        return {}
    try:
        data = load_yaml(path) or {}
    except (yaml.YAMLError, ValueError) as err:
        raise RecipeError(f"devices file {path} is not valid YAML: {err}") from None
    entries = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise RecipeError(f"devices file {path}: expected a mapping under 'devices:'")
    found: dict[str, Device] = {}
    for name, entry in entries.items():
        if entry is not None and not isinstance(entry, dict):
            raise RecipeError(f"devices file {path}, device {name!r}: expected a mapping")
        try:
            found[str(name)] = Device.model_validate({**(entry or {}), "name": str(name)})
        except ValidationError as err:
            raise RecipeError(
                f"devices file {path}, device {name!r}: {format_validation_error(err)}"
            ) from None
    return found


def save_devices(devices: dict[str, Device], path: Path | None = None) -> Path:
    from mmedge.rundir import atomic_write_text

    path = path or devices_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "devices": {
            name: d.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
            for name, d in sorted(devices.items())
        }
    }
    atomic_write_text(path, "# mmedge devices (mmedge device add/remove)\n" + yaml.safe_dump(body))
    return path


def get_device(name: str) -> Device:
    devices = load_devices()
    if name not in devices:
        known = ", ".join(sorted(devices)) or "none yet"
        raise DeviceError(
            f"unknown device {name!r} (devices in {devices_path()}: {known})",
            hint=f"add it: mmedge device add {name} --ssh HOST",
        )
    return devices[name]


def parse_on(value: str | None) -> list[Device]:
    """--on NAME[,NAME...] → devices, each checked to exist before anything runs."""
    if value is None:
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise DeviceError(f"--on {value!r} names no device; expected NAME[,NAME...]")
    return [get_device(n) for n in dict.fromkeys(names)]


def new_device(**fields: Any) -> Device:
    """A device from the command line: a bad field is an error naming it, not a traceback."""
    from mmedge.recipe import format_validation_error

    try:
        return Device(**fields)
    except ValidationError as err:
        raise DeviceError(
            f"device {fields.get('name')!r}: {format_validation_error(err)}"
        ) from None
