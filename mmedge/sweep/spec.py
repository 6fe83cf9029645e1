"""The recipe's ``sweep:`` section: the search space and how to search it.

Kept free of Ray and Optuna so any recipe validates without them; `mmedge sweep` flags
override these fields one by one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from mmedge.config import PosInt, StrictConfig

Objective = Literal["accuracy", "latency", "size"]
OBJECTIVES: tuple[Objective, ...] = ("accuracy", "latency", "size")


class Range(StrictConfig):
    """A continuous (or integer, when both ends are integers) range, for the Optuna search."""

    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None
    log: bool = False
    # Set from the field's type when the space is checked: an int field samples integers, a
    # float field floats (whatever the ends look like).
    as_int: bool | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either stepped or logarithmic, not both")
        return self

    @property
    def integer(self) -> bool:
        if self.as_int is not None:
            return self.as_int
        return (
            float(self.low).is_integer()
            and float(self.high).is_integer()
            and (self.step is None or float(self.step).is_integer())
        )


class Constraints(StrictConfig):
    """Points outside these are never on a front; a trial is stopped as soon as it is outside
    (size after the build, accuracy after the compare), before the measurements it would cost."""

    min_accuracy: Annotated[float, Field(ge=0, le=100)] | None = None  # percent
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    max_mb: Annotated[float, Field(gt=0)] | None = None


class Resources(StrictConfig):
    """What each build, prune or compare task asks of the Ray cluster."""

    cpus: Annotated[float, Field(gt=0)] = 1.0
    memory_gb: Annotated[float, Field(gt=0)] = 1.0


class SweepConfig(StrictConfig):
    # Recipe field path -> values (grid and Optuna) or a range (Optuna only).
    grid: dict[str, list[Any] | Range] = Field(default_factory=dict)
    search: Literal["grid", "optuna"] = "grid"
    trials: PosInt | None = None  # Optuna: how many trials; grid: a cap on them
    sampler: Literal["tpe", "nsga2"] = "tpe"
    seed: int = 0
    objectives: list[Objective] = Field(default_factory=lambda: list(OBJECTIVES), min_length=1)
    constraints: Constraints = Field(default_factory=Constraints)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _checked(self) -> SweepConfig:
        for field, values in self.grid.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"grid field {field!r} has no values")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError("objectives are listed twice")
        return self

    def merged(self, **flags: Any) -> SweepConfig:
        """This section with the command's flags (None: not given) put over it."""
        given = {k: v for k, v in flags.items() if v is not None}
        if "grid" in given:
            given["grid"] = {**self.grid, **given["grid"]}
        return SweepConfig.model_validate({**self.model_dump(), **given})
