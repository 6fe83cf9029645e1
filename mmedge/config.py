"""The base of every recipe section, shared by the recipe and the targets' own sections."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PosInt = Annotated[int, Field(ge=1)]


class StrictConfig(BaseModel):
    """Unknown keys are errors and values are frozen: a typo must never become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
