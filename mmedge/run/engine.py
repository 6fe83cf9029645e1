"""Run the plan: skip what is fresh, record every outcome, keep going past failures.

A failed step is recorded with its error and exit code; steps that need it are 'blocked',
independent ones still run. Ctrl-C records the step as interrupted and re-raises; the next
run resumes (finished steps are fresh). The report is rendered at the end of every run.
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any

from mmedge.errors import MmedgeError, OutputExistsError, RecipeError
from mmedge.failures import classify
from mmedge.fleet.inventory import Device
from mmedge.logs import write_log
from mmedge.progress import Count, quiet
from mmedge.recipe import Recipe
from mmedge.run.state import BLOCKED, CACHED, FAILED, OK, SKIPPED, RunState, key_of
from mmedge.run.steps import RunContext, Step, plan, require_all
from mmedge.workspace import dir_lock


def run_recipe(
    recipe: Recipe,
    recipe_path: Path,
    directory: Path,
    targets: list[str] | None = None,
    force: list[str] | None = None,
    strict: bool = False,
    progress: Count = quiet,
    devices: list[Device] | None = None,
) -> dict[str, Any]:
    from mmedge.run.report import write_report
    from mmedge.targets import get_target, target_names

    force = force or []
    chosen = targets or sorted({v.split("-")[0] for v in recipe.run.variants})
    names = target_names()
    unknown = [t for t in chosen if t not in names]
    if unknown:
        raise RecipeError(f"--targets names {unknown}; expected some of {', '.join(names)}")
    probes = {name: get_target(name).probe() for name in names}
    if strict:
        require_all(probes, chosen)
    if directory.exists() and not directory.is_dir():
        raise OutputExistsError(f"run directory {directory} exists and is not a directory")
    with dir_lock(directory):  # a second run on this directory is refused, not interleaved
        state = RunState.open(directory, recipe.name, recipe_path, take_over="all" in force)
        ctx = RunContext(directory, recipe, recipe_path)
        steps = plan(ctx, targets, probes, devices)
        step_names = {s.name for s in steps}
        kinds = {*_KINDS, *(s.name.split(":")[0] for s in steps)}  # and kind@device
        bad = [f for f in force if f != "all" and f not in step_names and f not in kinds]
        if bad:
            raise RecipeError(
                f"--force {bad[0]!r} is not a step of this run",
                hint="steps: all, "
                + ", ".join(sorted(step_names))
                + " (or a kind: build, compare...)",
            )
        state.save()
        done = 0
        for step in [s for s in steps if s.lane is None]:
            progress(step.name, done, len(steps))
            _run_step(step, state, _forced(step.name, force))
            done += 1
        lanes: dict[str, list[Step]] = {}
        for step in steps:
            if step.lane is not None:
                lanes.setdefault(step.lane, []).append(step)
        if lanes:
            _run_lanes(lanes, state, force, progress, done, len(steps))
        progress("report", len(steps), len(steps))
        return write_report(state)


_KINDS = ("prune", "build", "check", "compare", "parity", "bench", "latency", "probe")


def _forced(name: str, force: list[str]) -> bool:
    kind = name.split(":")[0]  # bench, or bench@DEVICE
    return "all" in force or name in force or kind in force or kind.split("@")[0] in force


def _run_lanes(
    lanes: dict[str, list[Step]],
    state: RunState,
    force: list[str],
    progress: Count,
    done: int,
    total: int,
) -> None:
    """Each device's steps in order, the devices at once; Ctrl-C hangs up on every device
    (their agents stop what they were running) and is recorded as an interruption."""
    from concurrent.futures import ThreadPoolExecutor, wait

    from mmedge.fleet.ssh import hang_up_all, reset_cancel

    reset_cancel()
    counter = [done]
    lock = threading.Lock()

    def lane(steps: list[Step]) -> None:
        for step in steps:
            with lock:
                progress(step.name, counter[0], total)
            _run_step(step, state, _forced(step.name, force))
            with lock:
                counter[0] += 1

    pool = ThreadPoolExecutor(max_workers=len(lanes))
    futures = [pool.submit(lane, steps) for steps in lanes.values()]
    try:
        wait(futures)
    except BaseException:  # Ctrl-C, SIGTERM: nothing may keep measuring on a device
        hang_up_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, KeyboardInterrupt):
            raise error


def _run_step(step: Step, state: RunState, forced: bool) -> None:
    blockers = [n for n in step.needs if state.steps.get(n, {}).get("status") not in (OK, CACHED)]
    if step.unavailable is not None:
        state.record(step.name, status=SKIPPED, reason=step.unavailable, error=None)
        return
    if blockers:
        why = ", ".join(f"{n} {state.steps.get(n, {}).get('status', 'missing')}" for n in blockers)
        state.record(step.name, status=BLOCKED, reason=f"needs {why}", error=None)
        return
    later = step.unavailable_now() if step.unavailable_now else None
    if later is not None:
        state.record(step.name, status=SKIPPED, reason=later, error=None)
        return
    key = key_of(step.key())
    if not forced and state.fresh(step.name, key, step.outputs()):
        state.record(step.name, status=CACHED)
        return
    state.record(step.name, status="running", key=key, error=None, reason=None)
    started = time.perf_counter()
    try:
        summary = step.action()
    except KeyboardInterrupt:
        state.record(step.name, status="interrupted", seconds=time.perf_counter() - started)
        raise
    except Exception as err:  # a failed step must not cost the others their results
        # User errors and the system's refusals (no space...) carry their own code; anything
        # else is a bug, logged with its traceback.
        found = classify(err)
        if found is None:
            log = write_log("run-step", traceback.format_exc())
            found = MmedgeError(f"{type(err).__name__}: {err}"[:600], f"traceback: {log}")
        state.record(
            step.name,
            status=FAILED,
            error=found.message,
            hint=found.hint,
            exit_code=found.exit_code,
            seconds=round(time.perf_counter() - started, 2),
        )
        return
    state.record(
        step.name,
        status=OK,
        seconds=round(time.perf_counter() - started, 2),
        summary=summary,
        hint=None,
        exit_code=None,
    )
