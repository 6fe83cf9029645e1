"""The sweep's scheduler: trials become stages, stages become Ray tasks or measurements.

One loop, on the machine that runs `mmedge sweep`:

- a stage whose key the store holds is served from it (any earlier trial, any worker, any
  earlier sweep sharing the cache); one another trial is running already is waited for, not
  started twice; otherwise prune/build/compare go to Ray as tasks with resource requests;
- local latency is measured here, only while no task runs anywhere (a build on the machine
  would be in the figure): queued measurements hold back new tasks until the running ones end;
- a device's compare and bench run in that device's own thread (one measurement at a time per
  device, and the fleet's lock on the device itself), alongside the builds;
- a finished trial is told to the search and written to sweep.json (atomically).

A stage that fails fails its point(s), with the error and exit code; the sweep goes on. Ray
retries a task whose worker died. Ctrl-C cancels the running tasks, hangs up on the devices and
leaves sweep.json saying so; the next `mmedge sweep` finds every finished stage in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmedge.errors import ClusterError, MmedgeError
from mmedge.fleet.inventory import Device
from mmedge.recipe import Recipe
from mmedge.sweep import stages
from mmedge.sweep.search import FAILED, OK, STOPPED, Search
from mmedge.sweep.space import Trial, trial_recipe
from mmedge.sweep.spec import Constraints, SweepConfig
from mmedge.sweep.stages import LOCAL, LOCAL_CPU, StageSpec, SweepContext
from mmedge.sweep.store import Store

TASK_KINDS = ("prune", "build", "compare")  # Ray tasks; the rest are measurements


@dataclass
class TrialRun:
    number: int
    trial: Trial
    recipe: Recipe
    directory: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # finished stages
    keys: dict[str, str] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    stopped: dict[str, str] = field(default_factory=dict)  # variant -> why
    began: float = field(default_factory=time.perf_counter)

    def ok(self, name: str) -> bool:
        return self.records.get(name, {}).get("status") == OK


@dataclass
class Stage:
    run: TrialRun
    name: str
    device: str = LOCAL


class Driver:
    def __init__(
        self,
        search: Search,
        base: Recipe,
        recipe_path: Path,
        cfg: SweepConfig,
        directory: Path,
        store: Store,
        devices: list[Device],
        local: bool,
        on_trial: Callable[[dict[str, Any]], None],
        capacity: int,
        gpu: bool = False,
        carried: list[dict[str, Any]] | None = None,
    ) -> None:
        self.search, self.base, self.recipe_path, self.cfg = search, base, recipe_path, cfg
        self.directory, self.store, self.devices, self.local = directory, store, devices, local
        self.on_trial, self.capacity = on_trial, capacity
        self.active: list[TrialRun] = []
        self.parked: list[tuple[int, Trial]] = []
        # Trial id -> its result once closed (a resumed search's finished trials included).
        self.results = {t["id"]: t for t in carried or [] if not t.get("repeat")}
        self.asked = 0
        self.exhausted = False
        self.tasks: dict[Any, str] = {}  # Ray ref -> key
        self.waiting: dict[str, list[Stage]] = {}  # key -> stages it serves (first one runs it)
        self.measure: list[Stage] = []
        self.device_futures: dict[Future[dict[str, Any]], str] = {}
        self.pools = {d.name: ThreadPoolExecutor(1, f"sweep-{d.name}") for d in devices}
        self.counts = {"run": 0, "cached": 0, "shared": 0, "failed": 0}
        self.failed: dict[str, dict[str, Any]] = {}  # key -> its failure, for this sweep
        self.gpu = gpu
        self._remote: Any = None

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                self._admit()
                if self._dispatch():
                    continue  # a cache hit may have readied the next stage
                if self.measure and not self.tasks:
                    self._measure_local(self.measure.pop(0))
                    continue
                if not (self.tasks or self.device_futures or self.measure):
                    if self.active:  # nothing runs, nothing can start: a bug, not a hang
                        waiting = {
                            r.trial.id: sorted(r.started - set(r.records)) for r in self.active
                        }
                        raise RuntimeError(f"the sweep's scheduler stalled with {waiting}")
                    if self.exhausted:
                        return
                    continue
                self._wait()
        except BaseException:
            self._cancel()
            raise
        finally:
            for pool in self.pools.values():
                pool.shutdown(wait=True, cancel_futures=True)

    def _admit(self) -> None:
        for number, trial in list(self.parked):  # asked again while the first was running
            if trial.id in self.results:
                self.parked.remove((number, trial))
                self._repeat(number, trial)
        while not self.exhausted and len(self.active) < self.capacity and not self.parked:
            asked = self.search.ask()
            if asked is None:
                self.exhausted = True
                return
            trial, number = asked, self.search.start + self.asked
            self.asked += 1
            if trial.id in self.results:
                self.search.repeated()
                self._repeat(number, trial)
            elif any(r.trial.id == trial.id for r in self.active):
                self.search.repeated()
                self.parked.append((number, trial))
            else:
                try:
                    self.active.append(self._open(number, trial))
                except MmedgeError as err:  # values valid alone, not together (Optuna's mixes)
                    self._reject(number, trial, err)

    def _reject(self, number: int, trial: Trial, err: MmedgeError) -> None:
        """A trial whose recipe is invalid: failed, told, recorded; the sweep goes on."""
        result = {
            "number": number, "id": trial.id, "label": trial.label(),
            "overrides": trial.overrides, "state": FAILED, "seconds": 0.0, "stages": {},
            "points": [{"trial": trial.id, "variant": None, "device": LOCAL, "status": FAILED,
                        "error": err.message, "exit_code": err.exit_code, "step": "recipe"}],
        }  # fmt: skip
        self.results[trial.id] = result
        self.search.tell(number, None, FAILED)
        self.on_trial(result)

    def _repeat(self, number: int, trial: Trial) -> None:
        """A trial the search asked for twice (samplers do): the same figures, told again."""
        result = {**self.results[trial.id], "number": number, "repeat": True}
        self.search.tell(number, objective_values(result, self.cfg.objectives), result["state"])
        self.on_trial(result)

    def _open(self, number: int, trial: Trial) -> TrialRun:
        directory = self.directory / "trials" / trial.id
        directory.mkdir(parents=True, exist_ok=True)
        run = TrialRun(number, trial, trial_recipe(self.base, trial), directory)
        for device in self.devices:  # the probe made at the start, where the run steps look
            src = self.directory / "devices" / f"{device.name}.json"
            dst = directory / "devices" / f"{device.name}.json"
            dst.parent.mkdir(exist_ok=True)
            dst.write_bytes(src.read_bytes())
        return run

    # --- which stages, in what order ----------------------------------------------------
    def _plan(self, run: TrialRun) -> list[tuple[str, list[str], str]]:
        """(stage, the stages it needs, device) for the whole trial."""
        plan: list[tuple[str, list[str], str]] = []
        pruning = run.recipe.prune is not None
        if pruning:
            plan.append(("prune", [], LOCAL))
        latency = "latency" in self.cfg.objectives
        for v in run.recipe.run.variants:
            plan.append((f"build:{v}", ["prune"] if pruning else [], LOCAL))
            plan.append((f"compare:{v}", [f"build:{v}"], LOCAL))
            if self.local and latency:
                plan.append((f"bench:{v}", [f"compare:{v}"], LOCAL))
            for d in self.devices:
                plan.append((f"compare@{d.name}:{v}", [f"compare:{v}"], d.name))
                if latency:
                    plan.append((f"bench@{d.name}:{v}", [f"compare@{d.name}:{v}"], d.name))
        return plan

    def _dispatch(self) -> bool:
        progressed = False
        for run in list(self.active):
            for name, needs, device in self._plan(run):
                variant = name.split(":", 1)[1] if ":" in name else None
                if name in run.started or variant in run.stopped:
                    continue
                if any(n in run.records and not run.ok(n) for n in needs):
                    run.started.add(name)
                    run.records[name] = {"status": "blocked"}
                    progressed = True
                    continue
                if not all(run.ok(n) for n in needs):
                    continue
                if name.split(":")[0] in TASK_KINDS and self.measure:
                    continue  # a local measurement is queued: no new builds until it ran
                run.started.add(name)
                progressed |= self._start(Stage(run, name, device))
            if self._finished(run):
                self._close(run)
                progressed = True
        return progressed

    def _context(self, run: TrialRun, name: str) -> SweepContext:
        ctx = SweepContext(run.directory, run.recipe, self.recipe_path)
        if "prune" in run.keys:
            ctx.pruned = self.store.entry(run.keys["prune"]) / "pruned"
        kind, _, variant = name.partition(":")
        if kind == "compare" and f"build:{variant}" in run.keys:
            ctx.built[variant] = self.store.entry(run.keys[f"build:{variant}"]) / variant
        return ctx

    def _device(self, name: str) -> Device | None:
        return next((d for d in self.devices if d.name == name), None)

    def _start(self, stage: Stage) -> bool:
        """Serve the stage from the store, attach it to the same work in flight, or start it;
        True when it finished at once."""
        run, name = stage.run, stage.name
        try:
            key = stages.stage_key(name, self._context(run, name), self._device(stage.device))
        except Exception as err:  # its inputs are unreadable: the stage fails, not the sweep
            self.counts["failed"] += 1
            self._record(stage, stages.failure(err, name, time.perf_counter(), "-"), None)
            return True
        run.keys[name] = key
        if key in self.failed:  # failed for another trial: the same inputs fail the same way
            self._record(stage, self.failed[key], key)
            return True
        gpus = gpus_for(run.recipe) if name == "prune" else 0
        if gpus and not self.gpu:  # Ray would hold the task forever
            self._record(stage, stages.failure(ClusterError(
                "prune.recover.device is 'cuda', but no node of the Ray cluster has a GPU",
                hint="join a cluster with GPU nodes (--address), or distil on the CPU "
                "(prune.recover.device: cpu)"), name, time.perf_counter(), "-"), None)  # fmt: skip
            return True
        done = self.store.get(key)
        if done is not None:
            self.counts["cached"] += 1
            self._record(stage, {**done, "status": OK, "cached": True}, key)
            return True
        if key in self.waiting:  # another trial is making it right now
            self.counts["shared"] += 1
            self.waiting[key].append(stage)
            return False
        self.waiting[key] = [stage]
        kind = name.split(":")[0]
        if kind in TASK_KINDS:
            spec = StageSpec(
                name, stages.trial_recipe_json(run.recipe), str(self.recipe_path),
                str(self.store.root), run.keys.get("prune") if kind != "prune" else None,
                run.keys.get(f"build:{name.partition(':')[2]}") if kind == "compare" else None,
            )  # fmt: skip
            self.tasks[self._task(kind, gpus).remote(spec, key)] = key
        elif stage.device == LOCAL:
            self.measure.append(stage)
        else:
            pool = self.pools[stage.device]
            self.device_futures[pool.submit(self._on_device, stage, key)] = key
        return False

    def _task(self, kind: str, gpus: int = 0) -> Any:
        import ray

        if self._remote is None:
            self._remote = ray.remote(stages.run_stage)
        res = self.cfg.resources
        return self._remote.options(
            num_cpus=res.cpus,
            num_gpus=gpus,  # Ray gives the task its own CUDA_VISIBLE_DEVICES
            memory=int(res.memory_gb * 2**30),
            max_retries=2,  # a worker that died (killed, out of memory): Ray runs it again
            retry_exceptions=False,  # a user error fails the same way twice
            name=f"mmedge-{kind}",
        )

    # --- measurements ------------------------------------------------------------------
    def _measure_local(self, stage: Stage) -> None:
        key = stage.run.keys[stage.name]
        with LOCAL_CPU:
            record = self._execute(stage, key)
        self._finish(key, record)

    def _on_device(self, stage: Stage, key: str) -> dict[str, Any]:
        if not self.local:
            return self._execute(stage, key)
        with LOCAL_CPU:  # its pushes and reference recordings load this machine's CPU
            return self._execute(stage, key)

    def _execute(self, stage: Stage, key: str) -> dict[str, Any]:
        """A measurement stage, in the trial's directory (its artifact linked there)."""
        run, name = stage.run, stage.name
        started = time.perf_counter()
        try:
            ctx = self._context(run, name)
            step = stages.make_step(name, ctx, self._device(stage.device))
            summary = step.action()
            record = {"step": name, "summary": summary, "node": stage.device,
                      "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
            # A result the device could not save here (a full disk) is no result.
            self.store.put(key, run.directory, stages.units(name, stage.device), record)
        except Exception as err:
            return stages.failure(err, name, started, stage.device)
        return {**record, "status": OK, "cached": False}

    # --- results -------------------------------------------------------------------------
    def _wait(self) -> None:
        import ray

        if self.tasks:
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=0.2)
            for ref in ready:
                key = self.tasks.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as err:  # retries spent, or the task failed outside its body
                    name = self.waiting[key][0].name
                    record = stages.failure(_ray_error(err), name, time.perf_counter(), "-")
                self._finish(key, record)
        else:
            time.sleep(0.05)
        for future in [f for f in self.device_futures if f.done()]:
            key = self.device_futures.pop(future)
            error = future.exception()
            if error is not None:  # not a stage's error (those are records): Ctrl-C, a bug
                raise error
            self._finish(key, future.result())

    def _finish(self, key: str, record: dict[str, Any]) -> None:
        waiters = self.waiting.pop(key, [])
        if record.get("status") == OK and not record.get("cached"):
            self.counts["run"] += 1
        elif record.get("status") == OK:
            self.counts["cached"] += 1  # a retried task that found its stage published
        else:
            self.counts["failed"] += 1
            self.failed[key] = record
        for stage in waiters:
            self._record(stage, record, key)

    def _record(self, stage: Stage, record: dict[str, Any], key: str | None) -> None:
        run, name = stage.run, stage.name
        run.records[name] = record
        if record.get("status") != OK or key is None:
            return
        # Linked into the trial directory as they finish: later measurements here read the
        # artifact there, and a user finds every trial's artifacts under trials/ID/.
        try:
            self.store.materialize(key, run.directory)
        except OSError as err:  # a full disk, an entry deleted by hand: this stage fails
            run.records[name] = stages.failure(err, name, time.perf_counter(), "-")
            return
        summary = record.get("summary") or {}
        kind, _, variant = name.partition(":")
        limits = self.cfg.constraints
        size, accuracy = summary.get("bytes"), summary.get("accuracy")
        if (
            kind == "build"
            and limits.max_mb is not None
            and size is not None
            and size / 1e6 > limits.max_mb
        ):
            run.stopped[variant] = f"size {size / 1e6:.2f} MB > max_mb {limits.max_mb}"
        low = limits.min_accuracy
        if kind == "compare" and low is not None and accuracy is not None and accuracy < low:
            run.stopped[variant] = f"accuracy {accuracy:.2f}% < min_accuracy {limits.min_accuracy}"

    def _finished(self, run: TrialRun) -> bool:
        for name, _, _ in self._plan(run):
            variant = name.split(":", 1)[1] if ":" in name else None
            if variant in run.stopped and name not in run.started:
                continue
            if name not in run.records:
                return False
        return True

    def _close(self, run: TrialRun) -> None:
        self.active.remove(run)
        result = trial_result(run, self.devices, self.local, self.cfg.constraints)
        self.results[run.trial.id] = result
        self.search.tell(run.number, objective_values(result, self.cfg.objectives), result["state"])
        self.on_trial(result)

    def _cancel(self) -> None:
        """Ctrl-C (or a crash): stop the cluster's work on our stages, hang up on devices."""
        from mmedge.fleet.ssh import hang_up_all

        hang_up_all()
        try:
            import ray

            for ref in self.tasks:
                ray.cancel(ref, force=True)
        except Exception:  # the cluster may be gone already; nothing to stop then
            pass


def gpus_for(recipe: Recipe) -> int:
    """A GPU for a prune that distils on CUDA (prune.recover.device), none otherwise."""
    cfg = recipe.prune
    return int(cfg is not None and cfg.recover.mode != "none" and cfg.recover.device == "cuda")


def _ray_error(err: Exception) -> Exception:
    """What Ray raised for a task, as the error it is: the task's own exception (a full disk
    while it set up), or a task lost with its node or worker after Ray's retries."""
    from mmedge.errors import ClusterError

    cause = getattr(err, "cause", None)  # a RayTaskError carries the task's exception
    if isinstance(cause, Exception):
        return cause
    text = str(err).strip().splitlines()
    return ClusterError(
        f"a task was lost on the cluster after its retries: {text[0] if text else err!r}",
        hint="a node died or ran out of memory; run the sweep again (finished stages are kept)",
    )


def outside(point: dict[str, Any], limits: Constraints) -> str | None:
    """Why a measured point is outside the constraints (a device's own accuracy and latency:
    the early stop only saw this machine's accuracy)."""
    p50, acc = point.get("p50_ms"), point.get("accuracy")
    if limits.max_latency_ms is not None and p50 is not None and p50 > limits.max_latency_ms:
        return f"p50 {p50:.3f} ms > max_latency_ms {limits.max_latency_ms}"
    if limits.min_accuracy is not None and acc is not None and acc < limits.min_accuracy:
        return f"accuracy {acc:.2f}% < min_accuracy {limits.min_accuracy}"
    return None


def trial_result(
    run: TrialRun, devices: list[Device], local: bool, limits: Constraints
) -> dict[str, Any]:
    """The trial as sweep.json keeps it: its stages, and a point per variant and device."""
    names = ([LOCAL] if local else []) + [d.name for d in devices]
    points = []
    for v in run.recipe.run.variants:
        build = run.records.get(f"build:{v}", {})
        size = (build.get("summary") or {}).get("bytes")
        for device in names:
            at = "" if device == LOCAL else f"@{device}"
            compare = run.records.get(f"compare{at}:{v}", {})
            bench = run.records.get(f"bench{at}:{v}", {})
            point: dict[str, Any] = {
                "trial": run.trial.id, "variant": v, "device": device,
                "mb": None if size is None else round(size / 1e6, 4),
                "accuracy": (compare.get("summary") or {}).get("accuracy"),
                "metric": (compare.get("summary") or {}).get("metric"),
                "p50_ms": (bench.get("summary") or {}).get("p50_ms"),
                "artifact": str(run.directory / v),
            }  # fmt: skip
            failed = next(
                (run.records[n] for n in _chain(v, at, run) if run.records.get(n, {}).get("status") == FAILED),
                None,
            )  # fmt: skip
            if failed is not None:
                point.update(status=FAILED, error=failed.get("error"), step=failed.get("step"),
                             exit_code=failed.get("exit_code"))  # fmt: skip
            elif v in run.stopped:
                point.update(status=STOPPED, reason=run.stopped[v])
            elif (why := outside(point, limits)) is not None:
                point.update(status=STOPPED, reason=why)
            else:
                point["status"] = OK
            points.append(point)
    states = {p["status"] for p in points}
    state = FAILED if FAILED in states else STOPPED if states == {STOPPED} else OK
    stages_run = {n: {"status": r.get("status"), "cached": r.get("cached", False),
                      "seconds": r.get("seconds"), "node": r.get("node"), "key": run.keys.get(n),
                      **({"error": r.get("error"), "exit_code": r.get("exit_code")}
                         if r.get("status") == FAILED else {})}
                  for n, r in run.records.items()}  # fmt: skip
    return {
        "number": run.number,
        "id": run.trial.id,
        "label": run.trial.label(),
        "overrides": run.trial.overrides,
        "state": state,
        "seconds": round(time.perf_counter() - run.began, 2),
        "points": points,
        "stages": stages_run,
    }


def _chain(variant: str, at: str, run: TrialRun) -> list[str]:
    return ["prune", f"build:{variant}", f"compare:{variant}", f"bench:{variant}" if not at else
            f"compare{at}:{variant}", f"bench{at}:{variant}"]  # fmt: skip


def objective_values(result: dict[str, Any], objectives: Sequence[str]) -> list[float] | None:
    """The first point's objective values: what the search is told (Optuna searches one
    variant per trial, on the first device)."""
    from mmedge.sweep.front import values

    ok = [p for p in result["points"] if p["status"] == OK]
    return values(ok[0], objectives) if ok else None
