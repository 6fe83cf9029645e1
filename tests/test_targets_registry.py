"""The registry drives every list of targets: a target registered only here (tests/
loopback_target.py) is a CLI choice with its options in the help, a recipe section, a run
variant, a `run --targets` entry, a `doctor` row and a manifest's versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from mmedge import targets
from mmedge.cli import app
from mmedge.errors import RecipeError
from mmedge.recipe import load_recipe
from mmedge.targets import REGISTRY, specs
from tests.conftest import write_recipe
from tests.test_cli import assert_user_error

runner = CliRunner()
LOOPBACK = "tests.loopback_target:SPEC"


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_target_has_tests(name: str) -> None:
    module = Path(__file__).with_name(f"test_target_{name}.py")
    assert module.is_file(), f"target {name!r} is registered but {module.name} does not exist"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_spec_is_complete(name: str) -> None:
    spec = specs()[name]
    assert spec.name == name and spec.precisions and spec.summary
    assert all(v.split("-", 1)[0] == name for v in spec.default_variants)
    assert all(v.split("-", 1)[1] in spec.precisions for v in spec.default_variants)
    spec.config()  # every field has a default: a recipe need not name the target


def test_an_unregistered_target_is_refused_everywhere(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = run("export", recipe, "-t", "loopback")
    assert result.exit_code == 2 and "'loopback' is not a registered target" in result.stderr
    with pytest.raises(RecipeError, match="unknown target 'loopback'; registered targets: "):
        load_recipe(write_recipe(tmp_path / "a", {"targets": {"loopback": {"gain": 2}}}))
    with pytest.raises(RecipeError, match="unknown target 'loopback'"):
        load_recipe(write_recipe(tmp_path / "b", {"run.variants": ["loopback-fp32"]}))


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "loopback", LOOPBACK)


def test_a_registered_target_is_in_every_list(loopback: None, tmp_path: Path) -> None:
    # The CLI: a choice, with its own options in the help.
    assert "loopback (fp32): a test target" in run("export", "--help").stdout
    assert "gain: every output is multiplied by this" in run("quantize", "--help").stdout
    # The recipe: its section, validated by its own model; run.variants.
    recipe = load_recipe(
        write_recipe(
            tmp_path / "r",
            {"targets": {"loopback": {"gain": 3}}, "run.variants": ["loopback-fp32"]},
        )
    )
    assert recipe.targets.root["loopback"].gain == 3
    assert "loopback-fp32" in load_recipe(write_recipe(tmp_path / "d")).run.variants
    with pytest.raises(
        RecipeError, match=r"targets: loopback.gain: Input should be a valid number"
    ):
        load_recipe(write_recipe(tmp_path / "bad", {"targets": {"loopback": {"gain": "x"}}}))
    with pytest.raises(RecipeError, match="loopback has no precision 'int8'"):
        load_recipe(write_recipe(tmp_path / "p", {"run.variants": ["loopback-int8"]}))
    # doctor.
    doctor = json.loads(run("doctor", "--json").stdout)
    assert doctor["targets"]["loopback"]["runs_here"] is True
    assert "hypothesis" in doctor["packages"]


def test_a_registered_target_builds_compares_and_runs(loopback: None, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, {"run.latency_rounds": 2, "run.latency_seconds": 0.02})
    out = tmp_path / "flipped"
    result = run("export", recipe, "-t", "loopback", "-O", "gain=-1", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "loopback" and manifest["steps"]["build"] == {"gain": -1.0}
    assert manifest["recipe"]["targets"]["loopback"] == {"gain": -1.0}
    assert "hypothesis" in manifest["versions"]  # the target's packages, from its spec
    # A real build: gain -1 flips every score, so compare's gate fails (exit 7).
    assert run("compare", out).exit_code == 7
    assert run("export", recipe, "-t", "loopback", "-o", tmp_path / "gain1").exit_code == 0
    assert run("compare", tmp_path / "gain1").exit_code == 0
    bad = run("export", recipe, "-t", "loopback", "-O", "gain=[1]", "-o", tmp_path / "x")
    assert_user_error(bad, 3, "targets: loopback.gain")
    assert not (tmp_path / "x").exists()
    # run --targets: build, compare, bench and the latency rounds, from the registry alone.
    result = run("run", recipe, "--targets", "loopback", "-o", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.stderr
    steps = json.loads((tmp_path / "run" / "run.json").read_text())["steps"]
    for step in ("build:loopback-fp32", "compare:loopback-fp32", "bench:loopback-fp32"):
        assert steps[step]["status"] == "ok", (step, steps[step])


def test_a_target_from_an_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(targets, "_entry_points", lambda: {"loopback": LOOPBACK})
    assert "loopback" in specs() and list(specs())[: len(REGISTRY)] == list(REGISTRY)
    recipe = load_recipe(write_recipe(tmp_path, {"targets": {"loopback": {"gain": 2}}}))
    assert recipe.targets.root["loopback"].gain == 2
