"""The loopback sshd the device-fleet tests stand on (tests/sshd.py) works: a command runs with
its stdin, stdout and exit status carried, and a wrong host key is refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshServer, start_sshd


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with start_sshd(tmp_path_factory.mktemp("sshd"), ["dev-a", "dev-b"]) as running:
        yield running


def test_command_round_trip(server: SshServer) -> None:
    done = subprocess.run(
        server.ssh("dev-b", 'tr a-z A-Z; echo "$USER" >&2; exit 3'),
        input=b"hello\x00device\n",
        capture_output=True,
        env=server.env(),
        timeout=30,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"HELLO\x00DEVICE\n"
    assert done.stderr.decode().strip() == server.user
    assert server.remote_processes() == []


def test_wrong_host_key_is_refused(server: SshServer, tmp_path: Path) -> None:
    done = subprocess.run(
        server.ssh(server.wrong_host_key_alias(), "touch", tmp_path / "ran"),
        capture_output=True,
        text=True,
        env=server.env(),
        timeout=30,
    )
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr
    assert not (tmp_path / "ran").exists()
