"""What a target's rule checker reports about an artifact (``mmedge check``, run's check step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    severity: Severity
    rule: str
    node: str
    branch: str
    message: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def summary(findings: list[Finding]) -> dict[str, Any]:
    errors = [f for f in findings if f.severity == "error"]
    return {
        "errors": len(errors),
        "warnings": len(findings) - len(errors),
        "findings": [f.to_json() for f in findings],
    }
