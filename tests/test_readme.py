"""The README's promises: its commands run, its two set-up commands exist, CI calls the second."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmedge.cli import app
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.DOTALL)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    first = _sh_blocks()[0].splitlines()
    commands = [line.split("#")[0].strip() for line in first if line.strip()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    for script in commands:
        assert (REPO / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert "./scripts/test.sh" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_every_mmedge_command_in_the_readme_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workflows on the user's own devices need those devices: tests/test_fleet.py runs the
    # same commands against loopback devices (a real sshd on 127.0.0.1).
    blocks = [b for b in _sh_blocks() if " --on " not in b]
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    commands = [shlex.split(line)[1:] for line in lines if line.startswith("mmedge ")]
    # Data the later commands read (e.g. `python -m mmedge.reference.raw`), run in order first.
    scripts = [shlex.split(line) for line in lines if line.startswith("python -m mmedge.")]
    assert len(commands) >= 6
    if importlib.util.find_spec("openvino") is None:  # the extra is optional
        commands = [c for c in commands if not any("openvino" in a for a in c)]
    (tmp_path / "recipes").symlink_to(REPO / "recipes")  # outputs land under tmp_path/runs
    monkeypatch.chdir(tmp_path)
    for script in scripts:
        subprocess.run([sys.executable, *script[1:]], check=True, capture_output=True)
    runner = CliRunner()
    for args in commands:
        if args[0] == "prune" and "--recover" not in args:
            # `run` above already distilled for the full 12 epochs (and checks its gate); this
            # one only has to run: 1 epoch saves ~40 s of the suite's 10 minutes.
            args = [*args, "--epochs", "1"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.stdout[-2000:], result.stderr[-2000:])


def test_the_zoo_table_is_the_recorded_matrix() -> None:
    """The README's zoo matrix is the one `python -m benchmarks.zoo_matrix` recorded, and it
    lists every zoo entry (a new entry without a recorded row fails here)."""
    from tests.zoo import ZOO

    recorded = (REPO / "benchmarks" / "results" / "zoo_matrix.md").read_text()
    rows = [line for line in recorded.splitlines() if line.startswith("| ")]
    assert rows and all(row in README for row in rows)
    assert {row.split("|")[1].strip() for row in rows[1:]} == set(ZOO)
