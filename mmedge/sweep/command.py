"""`mmedge sweep`: check everything, start (or join) the cluster, drive it, write the results.

The sweep directory holds ``sweep.json`` (rewritten atomically as trials finish), the report
(``sweep.md``, ``sweep.html``), ``front/DEVICE/*.yaml`` (a recipe per front point),
``trials/ID/`` (each trial's artifacts and results, linked from the cache) and, unless
``--cache`` names a shared one, ``cache/`` (every finished stage under its key).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmedge.errors import ClusterError, DeviceError, OutputExistsError, RecipeError
from mmedge.fleet.inventory import Device, get_device
from mmedge.hashing import sha256_json
from mmedge.recipe import Recipe, load_raw, load_recipe, with_overrides
from mmedge.rundir import atomic_write_json, host, versions
from mmedge.sweep.search import FAILED, GridSearch, OptunaSearch, Search
from mmedge.sweep.space import Space, grid_trials, normalized, normalized_sets, trial_recipe
from mmedge.sweep.spec import Range, SweepConfig
from mmedge.sweep.stages import LOCAL
from mmedge.workspace import dir_lock

SWEEP = "sweep.json"
FORMAT = "mmedge-sweep/1"


def prepare(
    recipe_path: Path, sets: dict[str, Any], flags: dict[str, Any]
) -> tuple[Recipe, SweepConfig, Space]:
    """The recipe (with --set), the sweep settings (recipe section, then flags) and the
    checked space: every error here comes before a cluster starts."""
    from mmedge.quantize.isa import profile_name

    sets = normalized_sets(sets, load_recipe(recipe_path))
    base = load_recipe(recipe_path, sets)
    try:
        cfg = base.sweep.merged(**flags)
    except ValueError as err:
        raise RecipeError(f"sweep settings are invalid: {err}") from None
    if not cfg.grid:
        raise RecipeError(
            "nothing to sweep: the recipe has no sweep.grid and no --grid was given",
            hint="e.g. --grid quantization.method=minmax,entropy --grid run.variants="
            "onnxruntime-int8,openvino-int8",
        )
    if base.quantization.isa == "auto" and profile_name("auto") != "unknown":
        # Every worker builds for the CPU class measured here, whatever CPU it has itself.
        base = with_overrides(base, {"quantization.isa": profile_name("auto")})
    space = normalized(cfg.grid, base)
    base = _without_on_device(base, space)
    if cfg.search == "grid":
        for trial in grid_trials(space, cfg.trials):  # a combination can be invalid alone
            trial_recipe(base, trial)
    elif "run.variants" not in space and len(base.run.variants) != 1:
        raise RecipeError(
            f"--search optuna scores one variant per trial; the recipe lists "
            f"{len(base.run.variants)} ({', '.join(base.run.variants)})",
            hint="put run.variants in the space (--grid run.variants=A,B) or set one "
            "(--set run.variants=onnxruntime-int8)",
        )
    return base, cfg, space


def _without_on_device(base: Recipe, space: Space) -> Recipe:
    """Targets built on the device (TensorRT engines) are not swept yet: their compare and
    bench need the engine built there first, which `run --on` does and a sweep does not. Named
    in the space, they are refused; among the recipe's own variants, left out."""
    from mmedge.targets import target_spec

    def there(variant: str) -> bool:
        return target_spec(variant.split("-")[0]).on_device

    hint = "build and measure a TensorRT point with `mmedge run FRONT_RECIPE --on DEVICE`"
    swept = space.get("run.variants")
    if isinstance(swept, list):
        named = sorted({v for value in swept for v in value if there(v)})
        if named:
            raise RecipeError(
                f"mmedge sweep cannot sweep {', '.join(named)} yet: its engine is built on the "
                "device, which a sweep does not do",
                hint=hint,
            )
        return base
    kept = [v for v in base.run.variants if not there(v)]
    if not kept:
        raise RecipeError(
            f"the recipe's variants ({', '.join(base.run.variants)}) are all built on the "
            "device, which a sweep does not do",
            hint=hint,
        )
    return with_overrides(base, {"run.variants": kept}) if kept != base.run.variants else base


def parse_devices(on: str | None) -> tuple[bool, list[Device]]:
    """``--on local,NAME``: 'local' is this machine; default: this machine alone."""
    if on is None:
        return True, []
    names = list(dict.fromkeys(n.strip() for n in on.split(",") if n.strip()))
    if not names:
        raise DeviceError(f"--on {on!r} names no device; expected NAME[,NAME...] or local")
    return LOCAL in names, [get_device(n) for n in names if n != LOCAL]


def run_sweep(
    recipe_path: Path,
    sets: dict[str, Any],
    flags: dict[str, Any],
    on: str | None,
    address: str | None,
    workers: int | None,
    directory: Path,
    cache: Path | None,
    progress: Callable[[dict[str, Any], int, int], None],
) -> dict[str, Any]:
    from mmedge.sweep import cluster as ray_cluster
    from mmedge.sweep.driver import Driver
    from mmedge.sweep.store import Store

    base, cfg, space = prepare(recipe_path, sets, flags)
    local, devices = parse_devices(on)
    if address is not None and workers is not None:
        raise ClusterError(
            "--workers sizes a cluster this sweep starts; with --address the cluster's nodes "
            "decide (start them with ray start --num-cpus N)"
        )
    ray_cluster.import_ray()  # the install hint before any work
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"sweep directory {directory} exists and is not a directory")
    with dir_lock(directory):
        old = _previous(directory, base.name)
        store = Store((cache or directory / "cache").resolve())
        store.root.mkdir(parents=True, exist_ok=True)
        if cache is None:
            store.clean_tmp()  # our own cache, held under the directory's lock
        state = _state(base, recipe_path, directory, cfg, space, devices, local, store, old)
        _probe(devices, directory)
        started = ray_cluster.start(address, workers)
        try:
            ray_cluster.check_nodes(started, _paths(base, recipe_path, store.root))
            gpu = ray_cluster.check_fits(started, cfg.resources.cpus, cfg.resources.memory_gb)
            state["cluster"] = started.describe()
            search, carried = _search(space, cfg, old, state)
            slots = max(1, int(started.cpus // cfg.resources.cpus))
            capacity = 2 * slots if cfg.search == "grid" else slots
            results: dict[int, dict[str, Any]] = {t["number"]: t for t in carried}

            def on_trial(result: dict[str, Any]) -> None:
                results[result["number"]] = result
                _save(directory, state, results)
                distinct = sum(1 for r in results.values() if not r.get("repeat"))
                progress(result, distinct, search.total)

            driver = Driver(search, base, recipe_path.resolve(), cfg, directory, store,
                            devices, local, on_trial, capacity, gpu, carried)  # fmt: skip
            state["status"] = "running"
            _save(directory, state, results)
            try:
                driver.run()
                state["status"] = "done"
            except BaseException:
                state["status"] = "interrupted"
                raise
            finally:
                state["counts"] = driver.counts
                _save(directory, state, results, final=True, base=load_raw(recipe_path), sets=sets)
        finally:
            ray_cluster.stop()
    return _read(directory)


def _previous(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / SWEEP
    if not path.is_file():
        # What a sweep stopped before its first trial leaves: its cache, device probes, lock.
        mine = {"cache", "devices"}
        others = [
            p for p in directory.iterdir() if p.name not in mine and not p.name.startswith(".")
        ]
        if others:
            raise OutputExistsError(
                f"{directory} is not empty and holds no {SWEEP}; choose another -o"
            )
        return None
    old = _read(directory)
    if old.get("recipe", {}).get("name") != name:
        raise OutputExistsError(
            f"{directory} holds a sweep of recipe {old.get('recipe', {}).get('name')!r}, "
            f"not {name!r}",
            hint="choose another -o (a shared --cache keeps the finished stages)",
        )
    return old


def _read(directory: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((directory / SWEEP).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OutputExistsError(f"{directory / SWEEP} is not readable ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OutputExistsError(f"{directory / SWEEP} is not an mmedge sweep ({FORMAT})")
    return data


def _space_json(space: Space) -> dict[str, Any]:
    return {f: v.model_dump() if isinstance(v, Range) else v for f, v in space.items()}


def _state(
    base: Recipe,
    recipe_path: Path,
    directory: Path,
    cfg: SweepConfig,
    space: Space,
    devices: list[Device],
    local: bool,
    store: Any,
    old: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "recipe": {"name": base.name, "path": str(recipe_path.resolve())},
        "space": _space_json(space),
        "search": {
            "kind": cfg.search,
            "trials": cfg.trials,
            "sampler": cfg.sampler,
            "seed": cfg.seed,
        },
        "objectives": cfg.objectives,
        "constraints": cfg.constraints.model_dump(),
        "resources": cfg.resources.model_dump(),
        "isa": base.quantization.isa,
        # What decides the figures besides the space: a resumed Optuna search is told its old
        # trials only when these are unchanged.
        "recipe_sha256": sha256_json(base.model_dump(mode="json", exclude={"sweep"})),
        "devices": ([LOCAL] if local else []) + [d.name for d in devices],
        "directory": str(directory.resolve()),
        "cache": str(store.root),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from": old.get("started") if old else None,
        "versions": versions(),
        "host": host(),
    }


def _search(
    space: Space, cfg: SweepConfig, old: dict[str, Any] | None, state: dict[str, Any]
) -> tuple[Search, list[dict[str, Any]]]:
    """The search, and the trials it carries over: a grid redoes every trial (from the
    cache); Optuna is told the finished ones of the same search again and goes on."""
    if cfg.search == "grid":
        return GridSearch(space, cfg.trials), []
    from mmedge.sweep.driver import objective_values

    keys = ("space", "objectives", "constraints", "recipe_sha256")
    same = old is not None and all(old.get(k) == state[k] for k in keys)
    if old is not None and same:
        same = all(old["search"].get(k) == state["search"][k] for k in ("kind", "sampler", "seed"))
    finished = [
        t for t in sorted((old or {}).get("trials", []), key=lambda t: t["number"])
        if same and t.get("state") in ("ok", "stopped", FAILED)
    ]  # fmt: skip
    carried = [dict(t, number=i) for i, t in enumerate(finished)]  # numbered without gaps
    if old is not None and not same and old.get("trials"):
        state["discarded"] = (
            f"{len(old['trials'])} trials of the sweep started {old.get('started')}: its recipe, "
            "space, objectives, constraints or sampler differ (their stages stay in the cache)"
        )
    history = []
    for trial in carried:
        values = objective_values(trial, cfg.objectives)
        told = trial["state"] if values is not None or trial["state"] != "ok" else FAILED
        history.append({"overrides": trial["overrides"], "values": values, "state": told,
                        "repeat": bool(trial.get("repeat"))})  # fmt: skip
    return OptunaSearch(space, cfg, history), carried


def _paths(base: Recipe, recipe_path: Path, store: Path) -> list[Path]:
    """What every worker must see: the cache, the recipe, its model and data files."""
    found = [store, recipe_path.resolve()]
    found += [p for p in (base.model.weights, base.model.path) if p is not None]
    if base.calibration is not None and base.calibration.path is not None:
        found.append(base.calibration.path)
    if base.eval is not None:
        found.append(base.eval.path)
    return found


def _probe(devices: list[Device], directory: Path) -> None:
    """Each device's fingerprint, read once: the keys of its measurements hold it."""
    from mmedge.fleet.remote import Remote

    for device in devices:
        data = Remote(device).probe()
        (directory / "devices").mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / "devices" / f"{device.name}.json", data)


def _save(
    directory: Path,
    state: dict[str, Any],
    results: dict[int, dict[str, Any]],
    final: bool = False,
    base: dict[str, Any] | None = None,
    sets: dict[str, Any] | None = None,
) -> None:
    """sweep.json (atomically), with the fronts so far; at the end also the front's recipes
    and the report."""
    from mmedge.sweep.front import fronts, write_front_recipes
    from mmedge.sweep.report import write_report

    trials = [results[n] for n in sorted(results)]
    points = [p for t in trials if not t.get("repeat") for p in t["points"]]
    found = fronts(points, state["objectives"])
    data = {
        **state,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": trials,
        "fronts": found,
        "summary": {
            "trials": len(trials),
            "failed": sum(t["state"] == FAILED for t in trials),
            "stopped": sum(t["state"] == "stopped" for t in trials),
        },
    }
    if final and base is not None:
        from mmedge.recipe import apply_overrides

        apply_overrides(base, sets or {})
        by_id = {t["id"]: t for t in trials}
        isa = state["isa"] if state["isa"] != "auto" else None
        data["front_recipes"] = write_front_recipes(directory / "front", found, base, by_id, isa)
    atomic_write_json(directory / SWEEP, data)
    if final:
        write_report(directory, data)
