from __future__ import annotations

from pathlib import Path

import pytest

from mmedge.targets import REGISTRY


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_target_has_tests(name: str) -> None:
    module = Path(__file__).with_name(f"test_target_{name}.py")
    assert module.is_file(), f"target {name!r} is registered but {module.name} does not exist"
