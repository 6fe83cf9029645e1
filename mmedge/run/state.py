"""The run directory's manifest: which recipe made it, and every step's key, status and error.

Rewritten atomically after every step, so an interrupted run leaves a manifest that says
exactly what finished; the next run resumes from it. A step is skipped when its key (a hash
of everything it reads: recipe fields, artifact and data contents, settings) is unchanged and
its outputs still exist.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmedge import __version__
from mmedge.errors import ArtifactError, OutputExistsError
from mmedge.hashing import sha256_json
from mmedge.rundir import atomic_write_json, host, versions
from mmedge.workspace import LOCK

MANIFEST = "run.json"
FORMAT = "mmedge-run/1"
OK, CACHED, FAILED, SKIPPED, BLOCKED = "ok", "cached", "failed", "skipped", "blocked"
_RECORDING = threading.RLock()


def key_of(parts: dict[str, Any]) -> str:
    return sha256_json({**parts, "mmedge": __version__})


@dataclass
class RunState:
    directory: Path
    recipe_name: str
    recipe_path: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @classmethod
    def open(
        cls, directory: Path, recipe_name: str, recipe_path: Path, take_over: bool
    ) -> RunState:
        """The run's state; a directory made by another recipe is refused unless taken over."""
        path = directory / MANIFEST
        others = [p for p in directory.iterdir() if p.name != LOCK] if directory.exists() else []
        if others and not path.is_file():
            raise OutputExistsError(
                f"{directory} is not empty and is not an mmedge run directory; choose another -o"
            )
        if not path.is_file():
            return cls(directory, recipe_name, str(recipe_path))
        old = _read_manifest(path)
        if old["recipe"]["name"] != recipe_name and not take_over:
            raise OutputExistsError(
                f"{directory} holds a run of recipe {old['recipe']['name']!r}, not {recipe_name!r}",
                hint="choose another -o, or pass --force all to redo it for this recipe",
            )
        steps = {} if take_over else old["steps"]
        for record in steps.values():
            # The caller holds the directory's lock: a step still "running" belongs to a
            # process that was killed (SIGKILL, power cut) and will be redone.
            if record.get("status") == "running":
                record["status"] = "interrupted"
        return cls(directory, recipe_name, str(recipe_path), steps)

    @classmethod
    def read(cls, directory: Path) -> dict[str, Any]:
        """A run directory's manifest, checked (for `report`)."""
        path = directory / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{directory} is not an mmedge run directory (no {MANIFEST})")
        return _read_manifest(path)

    def fresh(self, name: str, key: str, outputs: list[Path]) -> bool:
        """True when the step ran OK with this key and its outputs are still there."""
        record = self.steps.get(name)
        return (
            record is not None
            and record.get("key") == key
            and record.get("status") in (OK, CACHED)
            and all(p.exists() for p in outputs)
        )

    def record(self, name: str, **fields: Any) -> None:
        with _RECORDING:  # device lanes record from their own threads
            self.steps[name] = {**self.steps.get(name, {}), **fields}
            self.save()

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.directory / MANIFEST,
            {
                "format": FORMAT,
                "recipe": {"name": self.recipe_name, "path": self.recipe_path},
                "started": self.started,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "steps": self.steps,
                "versions": versions(),
                "host": host(),
            },
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    """run.json, with its shape checked: whatever it holds, a user gets a message, not a
    traceback (a step record that is not an object is dropped: the step is redone)."""
    hint = "choose another -o, or remove the directory to start the run afresh"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:
        raise OutputExistsError(f"{path} is not a readable run manifest ({err})", hint) from None
    recipe = data.get("recipe") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(recipe, dict):
        raise OutputExistsError(
            f"{path} is not an mmedge run manifest (expected an object with format "
            f"{FORMAT!r} and a recipe object)",
            hint,
        )
    steps = data.get("steps")
    return {
        **data,
        "recipe": {"name": str(recipe.get("name")), "path": str(recipe.get("path"))},
        "steps": {
            str(k): dict(v)
            for k, v in (steps if isinstance(steps, dict) else {}).items()
            if isinstance(v, dict)
        },
    }
