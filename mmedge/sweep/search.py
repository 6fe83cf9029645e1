"""How the next trial is chosen: every grid point in order, or Optuna's multi-objective samplers.

Both answer ``ask()`` (the next trial, or None when there is none to ask now) and take
``tell()`` (a finished trial's objective values, or that it failed or was stopped). A resumed
Optuna search is given the trials already finished, so its sampler goes on from them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, Protocol

from mmedge.sweep.space import Space, Trial, _show, grid_trials
from mmedge.sweep.spec import Range, SweepConfig

MAXIMIZE = {"accuracy"}  # latency and size are minimized
OK, FAILED, STOPPED = "ok", "failed", "stopped"


class Search(Protocol):
    total: int
    start: int  # the number of the first trial asked (a resumed search: those told before)

    def ask(self) -> Trial | None: ...

    def tell(self, number: int, values: list[float] | None, state: str) -> None: ...

    def repeated(self) -> None: ...


class GridSearch:
    def __init__(self, space: Space, cap: int | None) -> None:
        self._queue = deque(grid_trials(space, cap))
        self.total = len(self._queue)
        self.start = 0

    def ask(self) -> Trial | None:
        return self._queue.popleft() if self._queue else None

    def tell(self, number: int, values: list[float] | None, state: str) -> None:
        pass  # a grid does not learn

    def repeated(self) -> None:
        pass  # a grid asks each trial once


class OptunaSearch:
    """Optuna's ask-and-tell over the space: lists are categorical, ranges continuous."""

    def __init__(self, space: Space, cfg: SweepConfig, history: list[dict[str, Any]]) -> None:
        from mmedge.sweep.cluster import INSTALL_HINT

        try:
            import optuna
        except ImportError:
            from mmedge.errors import DependencyMissing

            raise DependencyMissing(
                "--search optuna needs Optuna, which is not installed", hint=INSTALL_HINT
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.total = cfg.trials or 30
        self._decode: dict[str, dict[Any, Any]] = {}
        self._dists = {f: self._distribution(f, v) for f, v in space.items()}
        directions: list[Literal["minimize", "maximize"]] = [
            "maximize" if o in MAXIMIZE else "minimize" for o in cfg.objectives
        ]
        sampler: Any
        if cfg.sampler == "nsga2":
            # A population of a third of the budget: several generations, not one random batch.
            population = max(4, self.total // 3)
            sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=population)
        else:
            sampler = optuna.samplers.TPESampler(
                seed=cfg.seed, multivariate=True, n_startup_trials=min(10, max(2, self.total // 3))
            )
        self._study = optuna.create_study(directions=directions, sampler=sampler)
        self._asked: dict[int, Any] = {}
        for done in history:  # a resumed sweep: what was measured already
            self._study.add_trial(self._recorded(done))
        self.asked = self.start = len(history)
        # Asks allowed: the trials, plus those asked again (see `repeated`).
        self._budget = self.total + sum(1 for done in history if done.get("repeat"))

    def _distribution(self, field: str, values: list[Any] | Range) -> Any:
        d = self._optuna.distributions
        if isinstance(values, Range):
            if values.integer:
                step = int(values.step or 1)
                return d.IntDistribution(
                    int(values.low), int(values.high), log=values.log, step=step
                )
            return d.FloatDistribution(values.low, values.high, log=values.log, step=values.step)
        # Choices must be plain scalars: a list value (run.variants) is chosen by its label.
        labels = {_show(v) if isinstance(v, list) else v: v for v in values}
        self._decode[field] = labels
        return d.CategoricalDistribution(list(labels))

    def _overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        return {f: self._decode[f][v] if f in self._decode else v for f, v in params.items()}

    def _params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return {
            f: (_show(v) if isinstance(v, list) else v) if f in self._decode else v
            for f, v in overrides.items()
        }

    def _recorded(self, done: dict[str, Any]) -> Any:
        states = self._optuna.trial.TrialState
        state = {OK: states.COMPLETE, STOPPED: states.PRUNED}.get(done["state"], states.FAIL)
        return self._optuna.trial.create_trial(
            params=self._params(done["overrides"]),
            distributions=self._dists,
            values=done["values"] if state == states.COMPLETE else None,
            state=state,
        )

    def repeated(self) -> None:
        """The trial just asked had been measured already (samplers ask again, categorical
        spaces often): it costs nothing and does not count against --trials. At most three
        asks per trial in all: a sampler that only repeats itself has found what it can."""
        self._budget = min(self._budget + 1, 3 * self.total)

    def ask(self) -> Trial | None:
        if self.asked >= self._budget:
            return None
        trial = self._study.ask(self._dists)
        self._asked[self.asked] = trial
        self.asked += 1
        return Trial(self._overrides(trial.params))

    def tell(self, number: int, values: list[float] | None, state: str) -> None:
        trial = self._asked.pop(number, None)
        if trial is None:
            return
        states = self._optuna.trial.TrialState
        if state == OK and values is not None:
            self._study.tell(trial, values)
        else:
            self._study.tell(trial, state=states.PRUNED if state == STOPPED else states.FAIL)
