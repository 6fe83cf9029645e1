"""Run the plan: skip what is fresh, record every outcome, keep going past failures.

A failed step is recorded with its error and exit code; steps that need it are 'blocked',
independent ones still run. Ctrl-C records the step as interrupted and re-raises; the next
run resumes (finished steps are fresh). The report is rendered at the end of every run.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from mmedge.errors import MmedgeError, OutputExistsError, RecipeError
from mmedge.failures import classify
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
        steps = plan(ctx, targets, probes)
        step_names = {s.name for s in steps}
        bad = [f for f in force if f != "all" and f not in step_names and f not in _KINDS]
        if bad:
            raise RecipeError(
                f"--force {bad[0]!r} is not a step of this run",
                hint="steps: all, "
                + ", ".join(sorted(step_names))
                + " (or a kind: build, compare...)",
            )
        state.save()
        for done, step in enumerate(steps):
            progress(step.name, done, len(steps))
            _run_step(step, state, _forced(step.name, force))
        progress("report", len(steps), len(steps))
        return write_report(state)


_KINDS = ("prune", "build", "check", "compare", "parity", "bench", "latency")


def _forced(name: str, force: list[str]) -> bool:
    return "all" in force or name in force or name.split(":")[0] in force


def _run_step(step: Step, state: RunState, forced: bool) -> None:
    blockers = [n for n in step.needs if state.steps.get(n, {}).get("status") not in (OK, CACHED)]
    if step.unavailable is not None:
        state.record(step.name, status=SKIPPED, reason=step.unavailable, error=None)
        return
    if blockers:
        why = ", ".join(f"{n} {state.steps.get(n, {}).get('status', 'missing')}" for n in blockers)
        state.record(step.name, status=BLOCKED, reason=f"needs {why}", error=None)
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
