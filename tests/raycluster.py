"""A real two-node Ray cluster on this machine, for `mmedge sweep --address`.

Two `ray start --block` processes (a head and a worker node, one CPU each), each in its own
session so the whole process tree can be killed at the end; token authentication (Ray's
default) with the token Ray keeps in ~/.ray. Tests skip where Ray is not installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive_nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


@contextmanager
def two_node_cluster(logs: Path) -> Iterator[str]:
    """The head's address; both nodes' process trees killed on exit."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    procs: list[subprocess.Popen[bytes]] = []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        procs.append(subprocess.Popen(
            [str(RAY), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
            env=ENV, stdout=(logs / "head.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        ))  # fmt: skip
        _wait(lambda: _alive_nodes(address) >= 1, 90, logs / "head.log")
        procs.append(subprocess.Popen(
            [str(RAY), "start", f"--address={address}", *common],
            env=ENV, stdout=(logs / "worker.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        ))  # fmt: skip
        _wait(lambda: _alive_nodes(address) >= 2, 90, logs / "worker.log")
        yield address
    finally:
        for proc in reversed(procs):  # SIGTERM leaves raylets behind: the whole group goes
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _wait(ready: object, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray node did not start: {log.read_text()[-2000:]}")
