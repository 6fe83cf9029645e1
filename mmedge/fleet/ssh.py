"""SSH through the system OpenSSH client, run as a subprocess.

Why the system client rather than a Python SSH library (paramiko, asyncssh): it is the program
the user's ``~/.ssh/config`` was written for. Aliases, ``Match`` blocks, ProxyJump and
ProxyCommand, IdentityFile, the agent, certificates, FIDO keys and ControlMaster behave exactly
as in their shell, host keys are checked against their own known_hosts, and it is on every
machine that reaches a device. Libraries implement a subset of ssh_config, and each gap is a
device that works with ``ssh`` but not with mmedge.

mmedge never sees a secret: ``BatchMode=yes`` makes a password or passphrase prompt a failure
(keys and agents only), and host keys are checked strictly whatever the config says. Accepting
a new host key is an explicit flag (``StrictHostKeyChecking=accept-new``); a changed key is
always refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

from mmedge.errors import DeviceError, HostKeyError
from mmedge.fleet import agent

# ssh exits 255 for its own failures; anything else is the remote command's status.
SSH_FAILED = 255
# Failures worth another try (a device rebooting, a flaky link); never auth or host keys.
_TRANSIENT = re.compile(
    r"Connection (refused|timed out|reset)|Operation timed out|No route to host|"
    r"Network is unreachable|Connection closed by|kex_exchange_identification|"
    r"Temporary failure in name resolution",
    re.IGNORECASE,
)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/=]+")
# Every ssh running for this process, so Ctrl-C in the main thread can hang up on the calls
# that worker threads (devices in parallel) are waiting on.
_LIVE: set[subprocess.Popen[bytes]] = set()
_LIVE_LOCK = threading.Lock()
_CANCELLED = threading.Event()


def hang_up_all() -> None:
    """Stop every call in flight: their agents see stdin close and stop their commands. New
    calls are refused until `reset_cancel`."""
    _CANCELLED.set()
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:  # every device hears it at once, then each gets the same grace
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()
    deadline = time.monotonic() + 10
    for proc in live:
        _hang_up(proc, max(0.1, deadline - time.monotonic()))


def reset_cancel() -> None:
    """A new command of this process may call devices again (after an earlier Ctrl-C)."""
    _CANCELLED.clear()


@dataclass(frozen=True)
class Endpoint:
    """Where a device is: an ssh destination (an alias of ~/.ssh/config, user@host...)."""

    name: str
    host: str
    config: Path | None = None  # -F; default: the user's ~/.ssh/config
    connect_timeout: int = 10
    accept_new_host_key: bool = False

    def argv(self, *remote: str) -> list[str]:
        config = self.config or _env_config()
        return [
            "ssh",
            *(["-F", str(config)] if config else []),
            "-T",
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            # A silent link is declared lost after ~15 s instead of TCP's minutes.
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "LogLevel=ERROR",
            "--",  # a destination starting with "-" is not an option
            self.host,
            *remote,
        ]  # fmt: skip


def _env_config() -> Path | None:
    value = os.environ.get("MMEDGE_SSH_CONFIG")
    return Path(value) if value else None


@cache
def _boot() -> str:
    """The agent's source as one shell-safe ``python -c`` program."""
    source = Path(agent.__file__).read_bytes()
    packed = base64.b64encode(zlib.compress(source, 9)).decode()
    return (
        "import base64,zlib;"
        f"exec(compile(zlib.decompress(base64.b64decode('{packed}')),'mmedge-agent','exec'))"
    )


def _quote(arg: str) -> str:
    """Single quotes for the remote shell; a leading ``~/`` stays outside them, so a Python
    given as ``~/venv/bin/python`` is the device user's."""
    home = "~/" if arg.startswith("~/") else ""
    arg = arg[len(home) :]
    return home + "'" + arg.replace("'", "'\"'\"'") + "'"


@dataclass
class Reply:
    rc: int
    results: list[dict[str, Any]]
    stderr: str
    started: bool
    timed_out: bool = False

    @property
    def result(self) -> dict[str, Any]:
        return self.results[-1] if self.results else {}

    def require(self, name: str, what: str) -> dict[str, Any]:
        """The agent's result; an error that says why there is none."""
        if self.results:
            return self.result
        why = "timed out" if self.timed_out else f"ended without a result (exit {self.rc})"
        raise DeviceError(f"{what} on {name} {why}{detail(self.stderr)}")


@dataclass
class Call:
    """One agent call over one SSH connection."""

    endpoint: Endpoint
    python: str
    verb: str
    args: dict[str, Any]
    timeout: float | None = None
    sink: IO[bytes] | None = None  # pull: stdout after the start line is a tar stream, here

    def argv(self) -> list[str]:
        payload = base64.b64encode(json.dumps(self.args).encode()).decode()
        return self.endpoint.argv(_quote(self.python), "-c", _quote(_boot()), self.verb, payload)

    def run(
        self,
        feed: Callable[[IO[bytes], Callable[[], dict[str, Any]]], None] | None = None,
    ) -> Reply:
        """Run it; ``feed(stdin, next_result)`` talks to the agent while it runs. stdin stays
        open until the agent is done: closing it is how the agent learns we went away."""
        proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches us, not ssh: we stop the remote side
        )
        assert proc.stdin and proc.stdout and proc.stderr
        with _LIVE_LOCK:
            _LIVE.add(proc)
            cancelled = _CANCELLED.is_set()
        if cancelled:  # hang_up_all ran between our check and the start: it missed this one
            _hang_up(proc, 5)
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            raise KeyboardInterrupt
        err_chunks: list[bytes] = []
        err_thread = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))  # type: ignore[union-attr]
        err_thread.start()
        reader = _Lines(proc.stdout)
        try:
            started = reader.started()
            if feed is not None and started:
                # BrokenPipe: the agent stopped reading, and its result says why.
                with contextlib.suppress(BrokenPipeError):
                    feed(proc.stdin, reader.next_result)
            if self.sink is not None and started:
                reader.copy(self.sink)
            elif self.sink is None:
                reader.drain(self.timeout, proc)
            with contextlib.suppress(BrokenPipeError):  # flushing what the agent won't read
                proc.stdin.close()
            rc = proc.wait(timeout=30)
        except BaseException:
            _hang_up(proc)
            if _CANCELLED.is_set():  # the pipe was closed under us by hang_up_all
                raise KeyboardInterrupt from None
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
            err_thread.join(timeout=10)
        if _CANCELLED.is_set():
            raise KeyboardInterrupt  # hung up by hang_up_all: not the device's failure
        stderr = b"".join(err_chunks).decode(errors="replace")
        return Reply(rc, reader.results, stderr, started, reader.timed_out)


def _hang_up(proc: subprocess.Popen[bytes], grace: float = 5) -> None:
    """Close the agent's stdin (it stops the remote command), then end ssh itself."""
    with contextlib.suppress(OSError, ValueError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Lines:
    """The agent's stdout: a start line, then MARK-prefixed JSON results."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.results: list[dict[str, Any]] = []
        self.timed_out = False

    def _lines(self) -> Iterator[bytes]:
        while True:
            line = self.stream.readline()
            if not line:
                return
            yield line

    def started(self) -> bool:
        return any(line.decode(errors="replace").strip() == agent.STARTED for line in self._lines())

    def next_result(self) -> dict[str, Any]:
        for line in self._lines():
            text = line.decode(errors="replace")
            if text.startswith(agent.MARK):
                try:
                    result: dict[str, Any] = json.loads(text[len(agent.MARK) :])
                except ValueError:  # cut off by a lost link: as if it never came
                    return {}
                self.results.append(result)
                return result
        return {}

    def drain(self, timeout: float | None, proc: subprocess.Popen[bytes]) -> None:
        timer = None
        if timeout is not None:

            def expire() -> None:
                self.timed_out = True
                proc.kill()

            timer = threading.Timer(timeout, expire)
            timer.start()
        try:
            while self.next_result():
                pass
        finally:
            if timer is not None:
                timer.cancel()

    def copy(self, sink: IO[bytes]) -> None:
        while chunk := self.stream.read(1 << 20):
            sink.write(chunk)


def call(
    endpoint: Endpoint,
    python: str,
    verb: str,
    args: dict[str, Any],
    feed: Callable[[IO[bytes], Callable[[], dict[str, Any]]], None] | None = None,
    timeout: float | None = None,
    retries: int = 2,
    sink: IO[bytes] | None = None,
    what: str | None = None,
) -> Reply:
    """An agent call; connection failures before the agent started are retried when transient
    (never once it started: a measurement is not repeated behind the user's back)."""
    for attempt in range(retries + 1):
        if _CANCELLED.is_set():
            raise KeyboardInterrupt
        reply = Call(endpoint, python, verb, args, timeout, sink).run(feed)
        if reply.started:
            if reply.timed_out:
                raise DeviceError(f"{what or verb} on {endpoint.name} timed out after {timeout} s")
            if reply.rc == SSH_FAILED and not reply.results and sink is None:
                raise DeviceError(
                    f"the connection to {endpoint.name} was lost during {what or verb}"
                    f"{detail(reply.stderr)}",
                    hint="nothing finished was kept from it; run the command again",
                )
            return reply
        failure = classify(endpoint, reply, python)
        if attempt < retries and _TRANSIENT.search(reply.stderr):
            time.sleep(1.0 * (attempt + 1))
            continue
        raise failure
    raise AssertionError("unreachable")


def detail(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return f" ({lines[-1][:300]})" if lines else ""


def classify(endpoint: Endpoint, reply: Reply, python: str) -> DeviceError:
    """The documented error for a call whose agent never started."""
    err = reply.stderr
    name = endpoint.name
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        prints = _FINGERPRINT.findall(err)
        return HostKeyError(
            f"the host key of {name} ({endpoint.host}) has CHANGED"
            + (f": it now presents {prints[0]}" if prints else "")
            + "; refused (someone may be intercepting the connection, or the device was "
            "reinstalled)",
            hint="if the device was reinstalled, remove its old key (ssh-keygen -R HOST) and "
            f"accept the new one: mmedge device probe {name} --accept-new-host-key",
        )
    if "Host key verification failed" in err or "host key is known" in err:
        found = scan_fingerprint(endpoint)
        return HostKeyError(
            f"the host key of {name} ({endpoint.host}) is not in known_hosts"
            + (f"; it presents {found}" if found else ""),
            hint=f"check that fingerprint on the device, then: mmedge device probe {name} "
            "--accept-new-host-key (or ssh to it once by hand)",
        )
    if "Permission denied" in err or "Too many authentication failures" in err:
        return DeviceError(
            f"{name} ({endpoint.host}) refused authentication{detail(err)}",
            hint="mmedge uses keys and agents only, never passwords (BatchMode): check "
            f"`ssh {endpoint.host} true` works without a prompt (ssh-copy-id, IdentityFile)",
        )
    if reply.rc == SSH_FAILED:
        return DeviceError(
            f"cannot reach {name} ({endpoint.host}){detail(err)}",
            hint=f"check the device is up and `ssh {endpoint.host} true` works",
        )
    if reply.rc == 127 or "No such file or directory" in err or "not found" in err:
        return DeviceError(
            f"{name} has no Python at {python!r}{detail(err)}",
            hint=f"install python3 (>= 3.8) on the device, or: mmedge device add {name} "
            "--ssh HOST --python PATH",
        )
    return DeviceError(f"the mmedge agent on {name} failed (exit {reply.rc}){detail(err)}")


def scan_fingerprint(endpoint: Endpoint) -> str | None:
    """The SHA256 fingerprint(s) the host presents, read with ssh-keyscan at the address ssh
    would use (ssh -G resolves aliases); None where it cannot be read (ProxyJump...)."""
    config = endpoint.config or _env_config()
    try:
        resolved = subprocess.run(
            ["ssh", *(["-F", str(config)] if config else []), "-G", endpoint.host],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        opts = dict(line.split(" ", 1) for line in resolved.splitlines() if " " in line)
        if opts.get("proxyjump", "none") != "none" or "proxycommand" in opts:
            return None
        keys = subprocess.run(
            ["ssh-keyscan", "-T", "5", "-p", opts.get("port", "22"), opts["hostname"]],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
        prints = subprocess.run(
            ["ssh-keygen", "-lf", "-"], input=keys, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError, KeyError):
        return None
    found = [
        f"{p} ({line.split()[-1]})"
        for line in prints.splitlines()
        for p in _FINGERPRINT.findall(line)
    ]
    return ", ".join(found) or None
